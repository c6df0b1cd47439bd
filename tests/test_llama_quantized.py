"""A 4-bit base through the Llama configuration (QLoRA's idea, nn/quant.py's blocks): a small
random Llama whose linears are Q4_1 blocks and token table Q8_0 blocks (quantized with the
gguf package) gives the logits, the LM-loss gradient of LoRA and the greedy tokens of the
same model with those blocks dequantized to float32 arrays."""
import numpy as onp
import pytest

import minipeft as mp
from minipeft.generate import generate
from minipeft.methods.lora import LoRA
from minipeft.methods.prompt import PromptTuning
from minipeft.models import llama
from minipeft.nn import quant as Q
from minipeft.transformer.lm import lm_logits, lm_loss

quants = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType as T  # noqa: E402

CFG = llama.config(d=64, h=4, n_kv=2, N=2, d_ff=96, vocab=50, max_len=32)
IDS = onp.random.default_rng(0).integers(0, 50, size=(2, 7))


def _blocks(W, kind):
    return Q.FORMATS[kind].from_bytes(quants.quantize(onp.asarray(W, onp.float32), getattr(T, kind)), W.shape[1])


def models():
    """(quantized φ, the same φ dequantized to float32 arrays)."""
    dense = mp.init_params(CFG, 0, "float32")
    dense["embed"]["W_tok"] = dense["embed"]["W_tok"] * 20
    q = {"embed": {"W_tok": _blocks(dense["embed"]["W_tok"], "Q8_0")}, "ln_f": dense["ln_f"], "blocks": []}
    for blk in dense["blocks"]:
        q["blocks"].append({"ln1": blk["ln1"], "ln2": blk["ln2"],
                            "attn": {k: _blocks(v, "Q4_1") for k, v in blk["attn"].items()},
                            "mlp": {k: _blocks(v, "Q4_1") for k, v in blk["mlp"].items()}})
    deq = {"embed": {"W_tok": Q.dequantize(q["embed"]["W_tok"])}, "ln_f": dense["ln_f"],
           "blocks": [{"ln1": b["ln1"], "ln2": b["ln2"], "attn": {k: Q.dequantize(v) for k, v in b["attn"].items()},
                       "mlp": {k: Q.dequantize(v) for k, v in b["mlp"].items()}} for b in q["blocks"]]}
    return q, deq


def test_logits_loss_gradient_and_generation_equal_the_dequantized_model():
    q, deq = models()
    onp.testing.assert_allclose(lm_logits(q, IDS, CFG), lm_logits(deq, IDS, CFG), rtol=1e-5, atol=1e-5)
    methods = [LoRA(r=2, targets=("q", "v", "gate")), PromptTuning(p=2, init_from="vocab")]
    qa, da = mp.attach(q, methods, CFG, 0), mp.attach(deq, methods, CFG, 0)
    onp.testing.assert_array_equal(qa["prompt"]["P"], da["prompt"]["P"])  # rows read from the Q8_0 table
    for p in (qa, da):  # B ≠ 0, so the gradient reaches A through the frozen base's dX
        p["lora"] = mp.tree.map_leaves(lambda path, a: a + 0.1, p["lora"])
    grads = []
    for p in (qa, da):
        theta, phi = mp.split(p, mp.trainable(methods, train_head=False))
        v, g = mp.value_and_grad(lambda th: lm_loss(mp.combine(th, phi), IDS, CFG, methods), theta)
        grads.append((v, g))
    assert abs(float(grads[0][0]) - float(grads[1][0])) <= 1e-5
    for (_, a), (_, b) in zip(mp.tree.leaves_with_paths(grads[0][1]), mp.tree.leaves_with_paths(grads[1][1])):
        onp.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert generate(qa, [1, 2, 3], CFG, methods, max_new_tokens=5) == generate(da, [1, 2, 3], CFG, methods,
                                                                              max_new_tokens=5)


def test_fit_trains_lora_on_the_4bit_base_as_on_its_dequantized_twin():
    q, deq = models()
    m = [LoRA(r=2, targets=("q", "v"))]
    targets = onp.ones_like(IDS)
    runs = [mp.fit(mp.attach(p, m, CFG, 0), (IDS, targets), CFG, m, objective="lm", steps=4, lr=1e-2,
                   batch_size=2, seed=1)[1]["loss"] for p in (q, deq)]
    onp.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)
    assert runs[0][-1] < runs[0][0]
    bad = dict(q, ln_f={"gamma": q["ln_f"]["gamma"]})
    blk = bad["embed"]["W_tok"]
    bad["embed"] = {"W_tok": type(blk)(onp.where(onp.arange(blk.d.size).reshape(blk.d.shape) == 3, onp.inf,
                                                  blk.d).astype(blk.d.dtype), blk.qs)}
    with pytest.raises(ValueError, match="W_tok"):
        mp.fit(mp.attach(bad, m, CFG, 0), (IDS, targets), CFG, m, objective="lm", steps=1)

"""Llama as configuration of the one transformer (models.llama.config): the whole forward
against a naive loop written from the equations, the closed-form count, the config's
checks, the LM loss on target rows only, and every method on a random small Llama
(merged = unmerged in float64, step 0 = the backbone, BitFit's refusal)."""
import dataclasses
import math

import numpy as onp
import pytest
from autograd import grad

import minipeft as mp
from minipeft.backend import cast
from minipeft.merge import merge_methods
from minipeft.methods.adapter import AdaptFormer, SerialAdapter
from minipeft.methods.bitfit import BitFit
from minipeft.methods.ia3 import IA3
from minipeft.methods.lora import LoRA
from minipeft.methods.prefix import PrefixTuning
from minipeft.methods.prompt import PromptTuning
from minipeft.methods.ssf import SSF
from minipeft.models import llama
from minipeft.transformer.lm import lm_logits, lm_loss
from test_llama_primitives import naive_repeat, naive_rms, naive_rope, naive_swiglu

CFG = llama.config(d=24, h=6, n_kv=2, N=2, d_ff=40, vocab=61, max_len=40, rope_base=100000.0)
IDS = onp.random.default_rng(3).integers(0, CFG.vocab, size=(2, 9))


def random_llama(cfg=CFG, seed=0, dtype="float64"):
    """A random Llama whose norms are not at their init (ones would hide a misplaced gain)."""
    params = mp.init_params(cfg, seed, "float64")
    rng = onp.random.default_rng(seed + 100)
    for blk in params["blocks"]:
        for ln in ("ln1", "ln2"):
            blk[ln]["gamma"] = 1 + 0.3 * rng.standard_normal(cfg.d)
    params["ln_f"]["gamma"] = 1 + 0.3 * rng.standard_normal(cfg.d)
    params["embed"]["W_tok"] = params["embed"]["W_tok"] * 20  # std 0.4: rows of order 1
    return cast(params, onp.dtype(dtype))


def naive_llama(params, ids, cfg):
    """Logits (B, n, vocab) by loops over rows and heads, from equations.md "Real architectures"."""
    B, n = ids.shape
    d_h, h, n_kv = cfg.d_h, cfg.h, cfg.kv_heads
    out = onp.empty((B, n, cfg.vocab))
    pos = onp.arange(n)
    for b in range(B):
        X = params["embed"]["W_tok"][ids[b]]  # (n, d)
        for blk in params["blocks"]:
            a = blk["attn"]
            x = naive_rms(X, blk["ln1"]["gamma"], cfg.eps)
            Q = naive_rope((x @ a["W_q"].T)[None], pos, h, cfg.rope_base)[0]
            K = naive_rope((x @ a["W_k"].T)[None], pos, n_kv, cfg.rope_base)[0]
            V = x @ a["W_v"].T
            K, V = naive_repeat(K[None], n_kv, h // n_kv)[0], naive_repeat(V[None], n_kv, h // n_kv)[0]
            Z = onp.zeros((n, cfg.d))
            for j in range(h):
                sl = slice(j * d_h, (j + 1) * d_h)
                for t in range(n):
                    s = [Q[t, sl] @ K[u, sl] / math.sqrt(d_h) for u in range(t + 1)]  # causal: keys u ≤ t
                    w = onp.exp(onp.array(s) - max(s))
                    Z[t, sl] = (w / w.sum()) @ V[: t + 1, sl]
            X = X + Z @ a["W_o"].T
            m = blk["mlp"]
            x = naive_rms(X, blk["ln2"]["gamma"], cfg.eps)
            X = X + naive_swiglu(x @ m["W_g"].T, x @ m["W_1"].T) @ m["W_2"].T
        out[b] = naive_rms(X, params["ln_f"]["gamma"], cfg.eps) @ params["embed"]["W_tok"].T
    return out


def test_forward_matches_the_naive_loop():
    params = random_llama()
    ref = naive_llama(params, IDS, CFG)
    onp.testing.assert_allclose(lm_logits(params, IDS, CFG), ref, rtol=1e-10, atol=1e-11)
    onp.testing.assert_allclose(mp.forward(params, IDS, CFG), ref[:, -1], rtol=1e-10, atol=1e-11)
    onp.testing.assert_allclose(lm_logits(params, IDS, CFG, at=[0, 4]), ref[:, [0, 4]], rtol=1e-10, atol=1e-11)


def test_closed_form_count_and_layout():
    for cfg in (CFG, dataclasses.replace(CFG, n_kv=0), dataclasses.replace(CFG, bias=True)):
        params = mp.init_params(cfg, 0)
        assert mp.count(params) == cfg.n_params
    params = mp.init_params(CFG, 0)
    assert set(params) == {"embed", "blocks", "ln_f"} and set(params["embed"]) == {"W_tok"}
    blk = params["blocks"][0]
    assert blk["attn"]["W_k"].shape == (CFG.d_kv, CFG.d) == (8, 24)
    assert set(blk["mlp"]) == {"W_g", "W_1", "W_2"} and set(blk["ln1"]) == {"gamma"}
    sm = llama.config(**llama.SMOLLM2_135M)
    assert sm.n_params == 30 * (2 * 576 + 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536) + 576 + 49152 * 576


@pytest.mark.parametrize("kw, match", [
    ({"n_kv": 4}, "n_kv must divide h"), ({"n_kv": -1}, "n_kv"), ({"pos": "alibi"}, "pos must be one of"),
    ({"rope_base": 1.0}, "rope_base"), ({"causal": 1}, "causal must be True or False"),
    ({"head": "lm"}, "head must be one of"), ({"n_classes": 3}, "n_classes must equal vocab"),
    ({"h": 8, "n_kv": 2, "d": 24}, "d_h = d / h must be even")])
def test_bad_decoder_options_name_the_field(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dataclasses.replace(CFG, **kw)


def test_lm_loss_reads_the_target_rows_only():
    params = random_llama()
    logits = naive_llama(params, IDS, CFG)
    targets = onp.zeros_like(IDS)
    targets[0, [3, 5]] = targets[1, [1, 8]] = 1
    b, t = onp.nonzero(targets)
    ls = logits[b, t - 1] - logits[b, t - 1].max(-1, keepdims=True)
    ref = -onp.mean(ls[onp.arange(len(b)), IDS[b, t]] - onp.log(onp.exp(ls).sum(-1)))
    assert math.isclose(float(lm_loss(params, IDS, CFG, targets=targets)), ref, rel_tol=1e-10)
    with pytest.raises(ValueError, match="targets"):
        lm_loss(params, IDS, CFG, targets=onp.zeros_like(IDS))


def attached(methods, seed=0, perturb=True):
    params = mp.attach(random_llama(), methods, CFG, seed)
    if perturb:  # move θ off its init (B = 0, ones) so a merge has something to fold
        rng = onp.random.default_rng(seed + 7)
        for m in methods:
            params[m.name] = _perturb(params[m.name], rng)
    return params


def _perturb(t, rng):
    if isinstance(t, dict):
        return {k: _perturb(v, rng) for k, v in t.items()}
    if isinstance(t, list):
        return [_perturb(v, rng) for v in t]
    return t + 0.1 * rng.standard_normal(t.shape)


MERGEABLE = {
    "lora-all": lambda: LoRA(r=2, targets=("q", "k", "v", "o", "gate", "mlp1", "mlp2")),
    "ia3-paper": lambda: IA3(variant="paper"),
    "ia3-notes": lambda: IA3(variant="notes"),
    "ssf": lambda: SSF(),
    "ssf-gate": lambda: SSF(placements=("gate", "ln2", "ln_f", "k")),
}


@pytest.mark.parametrize("name", sorted(MERGEABLE))
def test_merged_equals_unmerged_on_a_llama(name):
    m = MERGEABLE[name]()
    params = attached([m])
    x = onp.stack([IDS, onp.zeros_like(IDS), onp.ones_like(IDS)], axis=1)
    x[1, 2, 6:] = 0  # right padding in row 1
    ref = lm_logits(params, x, CFG, [m])
    merged, rest = merge_methods(params, [m])
    assert rest == [] and m.name not in merged
    onp.testing.assert_allclose(lm_logits(merged, x, CFG), ref, rtol=1e-10, atol=1e-10)
    back = m.unmerge(merged, params[m.name])
    onp.testing.assert_allclose(lm_logits(back, x, CFG, [m]), ref, rtol=1e-10, atol=1e-10)


def test_ssf_on_rmsnorm_folds_beta_into_the_readers_biases():
    m = SSF(placements=("ln1", "ln2", "ln_f"))
    merged, _ = merge_methods(attached([m]), [m])
    blk = merged["blocks"][0]
    assert set(blk["ln1"]) == {"gamma"}  # still an RMSNorm
    assert {"b_q", "b_k", "b_v"} <= set(blk["attn"]) and {"b_g", "b_1"} <= set(blk["mlp"])
    assert "b_o" not in blk["attn"] and "b_2" not in blk["mlp"] and merged["head"]["b"].shape == (CFG.vocab,)


STEP0 = {
    "lora-gate": lambda: LoRA(r=2, targets=("gate", "mlp2")),
    "ia3": lambda: IA3(variant="paper"),
    "ssf": lambda: SSF(init_mode="identity", placements=("q", "gate", "ln1", "ln_f")),
    "adaptformer": lambda: AdaptFormer(d_hat=4),
    "serial": lambda: SerialAdapter(d_hat=4, sigma_up=0.0),  # W_up = 0: exactly the backbone
}


@pytest.mark.parametrize("name", sorted(STEP0))
def test_each_method_starts_at_the_backbone_and_trains(name):
    m = STEP0[name]()
    params = mp.attach(random_llama(), [m], CFG, 0)
    onp.testing.assert_allclose(lm_logits(params, IDS, CFG, [m]), lm_logits(params, IDS, CFG), rtol=1e-12,
                                atol=1e-12)
    theta, phi = mp.split(params, mp.trainable([m], train_head=False))
    g = grad(lambda th: lm_loss(mp.combine(th, phi), IDS, CFG, [m]))(theta)
    assert mp.tree.count(g) == m.n_params(CFG) and any(onp.abs(a).max() > 0 for _, a in mp.tree.leaves_with_paths(g))


def test_lora_gate_and_ssf_gate_are_refused_without_swiglu():
    gelu = mp.Config(front="text", vocab=20, max_len=8, n_classes=2, d=8, h=2, N=1, d_ff=16)
    with pytest.raises(ValueError, match="gate"):
        mp.attach(mp.init_params(gelu), [LoRA(r=2, targets=("q", "gate"))], gelu)
    with pytest.raises(ValueError, match="gate"):
        mp.attach(mp.init_params(gelu), [SSF(placements=("gate",))], gelu)
    assert "gate" not in SSF().placements  # the default keeps its meaning on every model


def test_bitfit_refuses_a_bias_free_model():
    with pytest.raises(ValueError, match="no biases"):
        mp.attach(random_llama(), [BitFit()], CFG)
    with pytest.raises(ValueError, match="nothing to train"):
        BitFit().n_params(CFG)


def test_prompt_rows_sit_before_the_text_with_no_rotation(monkeypatch):
    """[P_e; E₀]: with P_e = the embeddings of tokens a, b, the text's logits equal a model
    that reads a, b first at rotary position 0 — checked against the naive loop with the
    rotation of those two rows removed (positions 0, 0, then 0..n−1)."""
    pt = PromptTuning(p=2, init_from="text", init_tokens=(5, 7))
    params = mp.attach(random_llama(), [pt], CFG, 0)
    got = lm_logits(params, IDS[:1], CFG, [pt])  # (1, n, vocab): the text's rows
    full = onp.concatenate([[5, 7], IDS[0]])[None]
    # the same sequence read as plain tokens gives different positions (0..n+1): differs
    assert onp.abs(got - lm_logits(params, full, CFG)[:, 2:]).max() > 1e-6
    import sys
    monkeypatch.setattr(sys.modules["minipeft.transformer.forward"], "_positions",
                        lambda cfg, T0, T, start=0: onp.concatenate([[0, 0], onp.arange(T - 2)]))
    same = lm_logits(params, full, CFG)[:, 2:]
    onp.testing.assert_allclose(got, same, rtol=1e-10, atol=1e-12)


def test_prefix_keys_are_unrotated_and_visible_to_every_query():
    """The attention weights with a prefix: every query (row 0 included) puts weight on every
    prefix column, the text's columns stay causal, and P_k, P_v are d_kv wide (GQA)."""
    pf = PrefixTuning(p=3)
    params = mp.attach(random_llama(), [pf], CFG, 0)
    trace = {}
    mp.transformer.hidden(params, IDS, CFG, [pf], trace=trace)
    A = trace["attn"][0]  # (B, h, T, p + T)
    assert A.shape == (2, CFG.h, 9, 12)
    assert (A[:, :, :, :3] > 0).all()  # every query reads every prefix key
    assert (A[:, :, 0, 4:] == 0).all() and (A[:, :, 4, 8:] == 0).all()  # causal on the text
    assert pf.n_params(CFG) == 2 * CFG.N * 3 * CFG.d_kv


def test_layout_on_a_decoder_has_no_cls_row_and_prompts_before_the_text():
    """token_rows / key_columns with cls="no_cls", checked on the trace: Z₀'s prompt rows are
    P_e and its text rows W_tok[ids] (a table lookup), and the attention weights are causal
    exactly where the layout says the text is — its own triangle (diagonal > 0, above 0), no
    weight from the prompt rows on the later text, every query on every prefix key."""
    from minipeft.methods.layout import key_columns, token_rows

    pt, pf = PromptTuning(p=2), PrefixTuning(p=3)
    params = attached([pt, pf])
    n = IDS.shape[1]
    rows, cols = token_rows([pt, pf], n, cls=CFG.cls), key_columns([pt, pf], n, cls=CFG.cls)
    assert "cls" not in rows and "cls" not in cols
    trace = {}
    mp.transformer.hidden(params, IDS, CFG, [pt, pf], trace=trace)
    Z0 = trace["hidden"][0]  # (B, p + n, d)
    onp.testing.assert_array_equal(Z0[:, rows["prompt"]], onp.repeat(params["prompt"]["P"][None], 2, 0))
    onp.testing.assert_array_equal(Z0[:, rows["input"]], params["embed"]["W_tok"][IDS])
    for A in trace["attn"]:  # (B, h, T, p_prefix + T)
        assert sorted(i for s in cols.values() for i in range(s.start, s.stop)) == list(range(A.shape[-1]))
        text = A[:, :, rows["input"], cols["input"]]  # (B, h, n, n)
        assert (onp.diagonal(text, axis1=2, axis2=3) > 0).all()
        assert (text[..., onp.triu_indices(n, 1)[0], onp.triu_indices(n, 1)[1]] == 0).all()
        assert (A[:, :, rows["prompt"], cols["input"]] == 0).all()  # prompts come before the text
        assert (A[:, :, rows["input"], cols["prompt"]] > 0).all()
        assert (A[:, :, :, cols["prefix"]] > 0).all()
    with pytest.raises(ValueError, match="cls must be one of"):
        token_rows([pt], n, cls="none")


def test_float32_llama_stays_float32_with_lora():
    m = LoRA(r=2, targets=("q", "gate"))
    params = mp.attach(random_llama(dtype="float32"), [m], CFG, 0)
    theta, phi = mp.split(params, mp.trainable([m], train_head=False))
    v, g = mp.value_and_grad(lambda th: lm_loss(mp.combine(th, phi), IDS, CFG, [m]), theta)
    assert v.dtype == onp.float32 and all(a.dtype == onp.float32 for _, a in mp.tree.leaves_with_paths(g))


def test_fit_with_the_lm_objective_lowers_the_loss_on_the_targets_only():
    """fit(objective="lm"): LoRA on a random Llama learns a fixed continuation; the context
    tokens (targets 0) do not enter the loss, and the backbone is untouched."""
    rng = onp.random.default_rng(0)
    ids = rng.integers(0, CFG.vocab, size=(8, 6))
    ids[:, 3:] = [4, 8, 15]  # the answer after each random 3-token context
    targets = onp.zeros_like(ids)
    targets[:, 3:] = 1
    m = LoRA(r=2, targets=("q", "v", "gate"))
    params = mp.attach(random_llama(), [m], CFG, 0)
    before = float(lm_loss(params, ids, CFG, [m], targets=targets))
    out, hist = mp.fit(params, (ids, targets), CFG, [m], objective="lm", steps=30, lr=3e-2, batch_size=8)
    assert len(hist["loss"]) == 30 and math.isclose(hist["loss"][0], before, rel_tol=1e-10)
    assert float(lm_loss(out, ids, CFG, [m], targets=targets)) < 0.5 * before
    assert out["blocks"][0]["attn"]["W_q"] is params["blocks"][0]["attn"]["W_q"]
    with pytest.raises(ValueError, match="targets"):
        mp.fit(params, (ids, targets[:, :3]), CFG, [m], objective="lm", steps=1)
    with pytest.raises(ValueError, match="objective must be one of"):
        mp.fit(params, (ids, targets), CFG, [m], objective="mlm", steps=1)


def test_label_word_classification_through_forward_and_fit():
    """forward on a Llama = next-token logits at the last real token: fit's "classes"
    objective trains it to answer with label words (token ids as labels)."""
    rng = onp.random.default_rng(1)
    ids = rng.integers(0, CFG.vocab, size=(12, 5))
    y = onp.where(ids[:, 0] % 2 == 0, 7, 11)  # the label word: token 7 or 11
    m = PromptTuning(p=2)
    params = mp.attach(random_llama(), [m], CFG, 0)
    out, hist = mp.fit(params, (ids, y), CFG, [m], steps=40, lr=5e-2, batch_size=12, train_head=False)
    assert hist["loss"][-1] < hist["loss"][0]
    assert mp.predict(out, ids, CFG, [m]).shape == (12, CFG.vocab)


def test_method_gradients_on_a_llama_match_finite_differences():
    """∂L/∂θ of the LM loss for LoRA (gate, down), prefix and prompt tuning and (IA)³ together,
    as one vector, against central differences along random directions (float64)."""
    from conftest import directional_check
    methods = [LoRA(r=2, targets=("gate", "mlp2", "k")), PrefixTuning(p=2), PromptTuning(p=2), IA3(variant="paper")]
    params = attached(methods)
    theta, phi = mp.split(params, mp.trainable(methods, train_head=False))
    leaves = mp.tree.leaves_with_paths(theta)
    sizes = [a.size for _, a in leaves]

    def unflat(vec):
        out, i = theta, 0
        for (path, a), n in zip(leaves, sizes):
            out = mp.tree.replace(out, path, vec[i:i + n].reshape(a.shape))
            i += n
        return out

    vec = onp.concatenate([a.ravel() for _, a in leaves])
    f = lambda v: float(lm_loss(mp.combine(unflat(v), phi), IDS, CFG, methods))  # noqa: E731
    g = grad(lambda th: lm_loss(mp.combine(th, phi), IDS, CFG, methods))(theta)
    gvec = onp.concatenate([a.ravel() for _, a in mp.tree.leaves_with_paths(g)])
    directional_check(f, vec, gvec, n=4, rel_tol=1e-6, abs_tol=1e-9)


def test_a_kv_cache_needs_a_causal_rope_model():
    enc = dataclasses.replace(CFG, causal=False)
    with pytest.raises(ValueError, match="cache: a KV cache needs"):
        mp.transformer.hidden(mp.init_params(enc), IDS, enc, cache=mp.transformer.KVCache())


def test_to_dict_omits_decoder_fields_at_their_defaults_and_round_trips():
    """A config written before the decoder fields existed keeps its record and cache key."""
    from minipeft.transformer.config import DECODER_FIELDS
    vit = mp.Config()
    assert not set(DECODER_FIELDS) & set(vit.to_dict())
    assert mp.Config.from_dict(vit.to_dict()) == vit
    d = CFG.to_dict()
    assert {"n_kv", "pos", "rope_base", "causal", "bias", "head"} <= set(d)
    assert mp.Config.from_dict(d) == CFG


def test_lm_logits_positions_are_checked():
    params = random_llama()
    for at in ([9], [-1], [[0]], [0.5]):
        with pytest.raises(ValueError, match="at: expected"):
            lm_logits(params, IDS, CFG, at=at)
    with pytest.raises(ValueError, match="causal decoder"):
        lm_loss(params, IDS, dataclasses.replace(CFG, causal=False))

"""Generation with the KV cache (minipeft/generate.py) on a random small Llama: the cache
against recomputing the whole sequence every step (token for token and logits), prefix
tuning through the cache against prefix tuning through the kv seam, seeded sampling, the
nucleus, the end token, and the options' checks."""
import dataclasses

import numpy as onp
import pytest

from minipeft.generate import generate, next_token
from minipeft import attach
from minipeft.methods.adapter import AdaptFormer
from minipeft.methods.ia3 import IA3
from minipeft.methods.lora import LoRA
from minipeft.methods.prefix import PrefixTuning
from minipeft.methods.prompt import PromptTuning
from test_llama import CFG, _perturb, random_llama

PROMPT = [3, 14, 15, 9, 2, 6]


def adapted(methods):
    params = attach(random_llama(), methods, CFG, 0)
    rng = onp.random.default_rng(5)
    for m in methods:
        params[m.name] = _perturb(params[m.name], rng)
    return params


CASES = {
    "base": lambda: [],
    "prefix": lambda: [PrefixTuning(p=4)],
    "prompt": lambda: [PromptTuning(p=3)],
    "lora+ia3+adaptformer": lambda: [LoRA(r=2, targets=("q", "v", "gate")), IA3(variant="paper"),
                                     AdaptFormer(d_hat=4)],
    "prefix+prompt": lambda: [PromptTuning(p=2), PrefixTuning(p=3)],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_greedy_with_the_cache_equals_greedy_without(name):
    methods = CASES[name]()
    params = adapted(methods)
    with_logits, without_logits = [], []
    a = generate(params, PROMPT, CFG, methods, max_new_tokens=12, logits_out=with_logits)
    b = generate(params, PROMPT, CFG, methods, max_new_tokens=12, use_cache=False, logits_out=without_logits)
    assert a == b and len(a) == 12
    onp.testing.assert_allclose(onp.array(with_logits), onp.array(without_logits), rtol=1e-10, atol=1e-11)


def test_prefix_through_the_cache_is_the_caches_first_entries():
    from minipeft.transformer import KVCache, hidden
    m = PrefixTuning(p=4)
    params = adapted([m])
    cache = KVCache()
    hidden(params, onp.array([PROMPT]), CFG, [m], cache=cache)
    for ell in range(CFG.N):
        K, V = cache.kv[ell]
        assert K.shape == (1, 4 + len(PROMPT), CFG.d_kv)
        onp.testing.assert_array_equal(K[0, :4], params["prefix"]["P_k"][ell])
        onp.testing.assert_array_equal(V[0, :4], params["prefix"]["P_v"][ell])


def test_sampling_is_seeded_and_stops_at_the_end_token():
    params = random_llama()
    kw = dict(max_new_tokens=15, temperature=1.5, top_p=0.9)
    a = generate(params, PROMPT, CFG, seed=1, **kw)
    assert a == generate(params, PROMPT, CFG, seed=1, **kw)
    assert a != generate(params, PROMPT, CFG, seed=2, **kw)
    assert generate(params, PROMPT, CFG, seed=1, use_cache=False, **kw) == a
    end = a[4]
    short = generate(params, PROMPT, CFG, seed=1, stop=end, **kw)
    assert short == a[: a.index(end)]


def test_top_p_keeps_the_fewest_most_likely_tokens():
    logits = onp.log(onp.array([0.5, 0.3, 0.15, 0.05]))
    rng = onp.random.default_rng(0)
    draws = {next_token(logits, 1.0, 0.75, rng) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 ≥ 0.75: the nucleus is {0, 1}
    assert {next_token(logits, 1.0, 0.8, rng) for _ in range(300)} == {0, 1}
    assert {next_token(logits, 1.0, 0.81, rng) for _ in range(300)} == {0, 1, 2}
    assert next_token(logits, None, 1.0, rng) == 0
    assert {next_token(logits, 1.0, 1e-9, rng) for _ in range(50)} == {0}


@pytest.mark.parametrize("kw, match", [
    ({"prompt": []}, "prompt: expected a non-empty"), ({"prompt": "hello"}, "encode the text"),
    ({"prompt": [1, 99]}, "vocab"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 35}, "context length max_len=40"), ({"temperature": 0.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"stop": [1000]}, "stop")])
def test_bad_options_are_clear_errors(kw, match):
    args = {"prompt": PROMPT, "max_new_tokens": 4, **kw}
    with pytest.raises((ValueError, TypeError), match=match):
        generate(random_llama(), args.pop("prompt"), CFG, **args)


def test_an_encoder_cannot_generate():
    with pytest.raises(ValueError, match="causal decoder"):
        generate({}, PROMPT, dataclasses.replace(CFG, causal=False), max_new_tokens=2)


def test_an_adapter_saved_on_a_llama_loads_back_and_refuses_another_backbone(tmp_path):
    from minipeft.adapters import load_adapter, save_adapter
    from test_llama import CFG as LLAMA
    m = LoRA(r=2, targets=("q", "gate"))
    params = adapted([m])
    path = tmp_path / "lora-llama.npz"
    save_adapter(path, params, [m], LLAMA, train_head=False)
    loaded, methods, _ = load_adapter(path, random_llama(), LLAMA)
    assert generate(loaded, PROMPT, LLAMA, methods, max_new_tokens=5) == generate(params, PROMPT, LLAMA, [m],
                                                                                  max_new_tokens=5)
    encoder = dataclasses.replace(LLAMA, causal=False, pos="learned", cls="ids")
    with pytest.raises(ValueError, match="trained for a backbone with config"):
        load_adapter(path, random_llama(), encoder)

"""The real SmolLM2-135M-Instruct through minipeft's Llama configuration: logits and final
hidden rows against the fixture transformers made from the same GGUF file
(tests/fixtures/make_smollm2_fixture.py), float32, max |Δ| ≤ 1e-4; and greedy generation
with the KV cache equal to recomputing the sequence, on the real model. Skipped when the
model package is missing."""
import numpy as onp
import pytest

import minipeft as mp
from minipeft.generate import generate
from minipeft.models import llama

from conftest import needs_smollm2

pytestmark = needs_smollm2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One BLAS thread: small matrix products on a shared 2-core machine run faster so."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def smol(smollm2):
    """(params, cfg, tokenizer) as ``llama.load_smollm2("float32")``, from conftest's shared load."""
    params, hp, tok = smollm2("float32")
    return params, llama.config_of(hp), tok


@pytest.fixture(scope="module")
def ref(smollm2_ref):
    return smollm2_ref


def test_config_is_smollm2(smol, smollm2, monkeypatch):
    _, cfg, _ = smol
    import dataclasses
    assert abs(cfg.eps - 1e-5) < 1e-12  # the file's float32 ε
    assert dataclasses.replace(cfg, eps=1e-5) == llama.config(**llama.SMOLLM2_135M)
    # load_smollm2 = smollm2.load + config_of (the session's load stands in for the file read)
    from minipeft.models import smollm2 as S
    monkeypatch.setattr(S, "load", lambda dtype=None: smollm2(dtype))
    params, cfg2, tok = llama.load_smollm2("float32")
    assert params is smol[0] and tok is smol[2] and cfg2 == cfg


@pytest.mark.parametrize("k", [0, 1, 2])
def test_logits_match_transformers_on_the_same_gguf(smol, ref, k):
    params, cfg, _ = smol
    ids = ref[f"ids_{k}"][None]  # (1, n)
    X, _ = mp.transformer.hidden(params, ids, cfg)  # (1, n, d) after RMSNorm_f
    assert onp.abs(X[0, [0, -1]] - ref[f"hidden32_{k}"]).max() <= 1e-4
    logits = mp.forward(params, ids, cfg)[0]  # the last position only: (vocab,)
    assert logits.dtype == onp.float32 and logits.shape == (49152,)
    assert onp.abs(logits - ref[f"logits32_{k}"]).max() <= 1e-4


@pytest.mark.slow  # recomputing the whole sequence each step: ~10 s here
def test_greedy_generation_with_the_cache_equals_without_on_the_real_model(smol, ref):
    params, cfg, tok = smol
    ids = list(ref["ids_2"])  # the chat prompt
    a = generate(params, ids, cfg, max_new_tokens=6, stop=tok.eos_id)
    b = generate(params, ids, cfg, max_new_tokens=6, stop=tok.eos_id, use_cache=False)
    assert a == b and len(a) >= 1


def test_the_4bit_base_gives_the_fixtures_logits(smollm2, ref):
    """The linears kept as Q4_1 blocks and the table as Q8_0 (smollm2.load(quantized=True)):
    the same numbers on use, so the same logits as transformers' dense model, ≤ 1e-4."""
    params, hp, _ = smollm2("float32", quantized=True)
    cfg = llama.config_of(hp)
    for k in (0, 2):
        logits = mp.forward(params, ref[f"ids_{k}"][None], cfg)[0]
        assert onp.abs(logits - ref[f"logits32_{k}"]).max() <= 1e-4

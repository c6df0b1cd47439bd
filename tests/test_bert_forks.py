"""The BERT options of the one Config on a tiny random model: erf GELU, the key mask,
post-LN, token types, embedding LN, pooling — against independent computations and
finite differences."""
import dataclasses
import math

import numpy as onp
import pytest

import minipeft as mp
from conftest import finite_diff_check, randomize, theta_vec_fn
from minipeft.nn.attention import attention, attention_composed
from minipeft.nn.primitives import gelu_erf

TINY = mp.Config(d=16, h=4, N=2, d_ff=24, n_classes=3, front="text", vocab=13, max_len=8, eps=1e-12,
                 norm="post", act="gelu_erf", cls="ids", type_vocab=2, embed_ln=True, pool="mean")


def batch():
    """(3, 3, 6): ids, type ids (the second row a pair), mask with padding in rows 1 and 2."""
    ids = onp.array([[1, 5, 6, 7, 8, 2], [1, 9, 2, 4, 2, 0], [1, 3, 2, 0, 0, 0]])
    types = onp.array([[0] * 6, [0, 0, 0, 1, 1, 0], [0] * 6])
    mask = (onp.arange(6)[None] < onp.array([[6], [5], [3]])).astype(int)
    return onp.stack([ids, types, mask], axis=1)


def test_gelu_erf_against_math_erf_and_finite_differences():
    x = onp.linspace(-6, 6, 41)
    want = onp.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    onp.testing.assert_allclose(gelu_erf(x), want, rtol=1e-14, atol=1e-15)
    assert gelu_erf(x.astype("float32")).dtype == onp.float32
    finite_diff_check(lambda v: onp.sum(gelu_erf(v) * onp.cos(v)), x)


@pytest.mark.parametrize("fn", [attention, attention_composed])
def test_masked_attention_equals_attention_over_the_visible_keys(fn):
    """Each batch row attends only to its visible keys: the same as dropping the hidden ones."""
    rng = onp.random.default_rng(0)
    Q, K, V = (rng.standard_normal((2, 5, 8)) for _ in range(3))
    mask = onp.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], bool)
    Z, A = fn(Q, K, V, 2, return_weights=True, mask=mask)
    for b in range(2):
        keep = mask[b]
        want = attention_composed(Q[b:b + 1], K[b:b + 1, keep], V[b:b + 1, keep], 2)
        onp.testing.assert_allclose(Z[b:b + 1], want, rtol=1e-12, atol=1e-12)
        assert (A[b][..., ~keep] == 0).all()
    # prefix keys are prepended and always visible
    P = (rng.standard_normal((3, 8)), rng.standard_normal((3, 8)))
    Zp = fn(Q, K, V, 2, prefix=P, mask=mask)
    for b in range(2):
        keep = mask[b]
        want = attention_composed(Q[b:b + 1], K[b:b + 1, keep], V[b:b + 1, keep], 2, prefix=P)
        onp.testing.assert_allclose(Zp[b:b + 1], want, rtol=1e-12, atol=1e-12)


def test_masked_attention_gradient_matches_finite_differences():
    rng = onp.random.default_rng(1)
    K, V = rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 5, 8))
    mask = onp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    c = rng.standard_normal((2, 5, 8))
    finite_diff_check(lambda Q: onp.sum(attention(Q, K, V, 2, mask=mask) * c), rng.standard_normal((2, 5, 8)))
    Q = rng.standard_normal((2, 5, 8))
    finite_diff_check(lambda K_: onp.sum(attention(Q, K_, V, 2, mask=mask) * c), K)


@pytest.mark.parametrize("pool", ["mean", "cls", "pooler"])
def test_whole_bert_gradient_matches_finite_differences(pool):
    """∂L/∂φ for every leaf of a padded batch through the post-LN, erf, typed, masked model."""
    cfg = dataclasses.replace(TINY, pool=pool)
    params = randomize(mp.init_params(cfg, 0, "float64"), scale=0.2)
    full = mp.FullFineTune()
    vec, f, g = theta_vec_fn(params, [full], batch(), onp.array([0, 1, 2]), cfg)
    rng = onp.random.default_rng(0)
    for _ in range(4):
        u = rng.standard_normal(vec.shape)
        fd = (f(vec + 1e-6 * u) - f(vec - 1e-6 * u)) / 2e-6
        assert onp.isclose(g @ u, fd, rtol=1e-5, atol=1e-7), (g @ u, fd)


def naive_bert(params, x, cfg):
    """Post-LN BERT in plain NumPy, one sentence at a time with its padding dropped."""
    from minipeft.nn import reference as R
    out = []
    for ids, types, mask in x:
        n = int(mask.sum())
        e = params["embed"]
        Z = e["W_tok"][ids[:n]] + e["pos"][:n] + e["W_type"][types[:n]]
        Z = R.layer_norm(Z[None], e["ln"]["gamma"], e["ln"]["beta"], cfg.eps)
        for bp in params["blocks"]:
            a, m = bp["attn"], bp["mlp"]
            att = attention_composed(Z @ a["W_q"].T + a["b_q"], Z @ a["W_k"].T + a["b_k"], Z @ a["W_v"].T + a["b_v"], cfg.h)
            Z = R.layer_norm(Z + att @ a["W_o"].T + a["b_o"], bp["ln1"]["gamma"], bp["ln1"]["beta"], cfg.eps)
            H = R.gelu_erf(Z @ m["W_1"].T + m["b_1"])
            Z = R.layer_norm(Z + H @ m["W_2"].T + m["b_2"], bp["ln2"]["gamma"], bp["ln2"]["beta"], cfg.eps)
        out.append(Z[0].mean(axis=0))
    return onp.stack(out) @ params["head"]["W"].T + params["head"]["b"]


def test_bert_forward_matches_a_naive_per_sentence_reference():
    params = randomize(mp.init_params(TINY, 0, "float64"), scale=0.2)
    onp.testing.assert_allclose(mp.forward(params, batch(), TINY), naive_bert(params, batch(), TINY),
                                rtol=1e-10, atol=1e-12)


def test_float32_stays_float32_through_the_bert_path():
    params = mp.init_params(TINY, 0, "float32")
    full = mp.FullFineTune()
    theta, phi = mp.split(params, mp.trainable([full]))
    value, g = mp.value_and_grad(lambda th: mp.loss(th, phi, batch(), onp.array([0, 1, 2]), TINY, [full]), theta)
    assert value.dtype == onp.float32
    assert all(a.dtype == onp.float32 for _, a in mp.tree.leaves_with_paths(g))


@pytest.mark.parametrize("pool", ["mean", "cls", "pooler"])
def test_closed_form_count_with_the_bert_options(pool):
    cfg = dataclasses.replace(TINY, pool=pool)
    assert mp.count(mp.init_params(cfg, 0)) == cfg.n_params


@pytest.mark.parametrize("kw, match", [({"norm": "mid"}, "norm must be one of"), ({"act": "relu"}, "act must be"),
                                       ({"pool": "max"}, "pool must be"), ({"cls": "none"}, "cls must be"),
                                       ({"embed_ln": 1}, "embed_ln must be True or False"),
                                       ({"type_vocab": -1}, "type_vocab")])
def test_bad_bert_options_name_the_field(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dataclasses.replace(TINY, **kw)


def test_token_ids_and_types_need_the_text_front():
    with pytest.raises(ValueError, match="need front='text'"):
        mp.Config(cls="ids")


def test_mean_pooling_skips_the_rows_vpt_deep_inserts(tiny_cfg):
    """pool="mean" reads the real input rows only: with VPT-Deep's p rows inserted after row 0
    at block 1, the pooled vector is the mean of the m patch rows of LN_f(X_N)."""
    from minipeft.methods.vpt import VPTDeep

    cfg = dataclasses.replace(tiny_cfg, pool="mean")
    m = VPTDeep(p=3)
    params = mp.attach(mp.init_params(cfg, 0, "float64"), [m], cfg, seed=1)
    x = onp.random.default_rng(0).random((2, 1, cfg.image_size, cfg.image_size))
    trace = {}
    f = mp.features(params, x, cfg, [m], trace)  # (B, d)
    X_N = trace["hidden"][-1]  # (B, 1 + p + m, d)
    assert X_N.shape[1] == 1 + m.p + cfg.n_patches
    mu = X_N.mean(-1, keepdims=True)
    ln = (X_N - mu) / onp.sqrt(X_N.var(-1, keepdims=True) + cfg.eps) * params["ln_f"]["gamma"] + params["ln_f"]["beta"]
    want = ln[:, 1 + m.p:].mean(axis=1)  # the patch rows only
    assert onp.allclose(f, want, rtol=1e-12, atol=1e-12)

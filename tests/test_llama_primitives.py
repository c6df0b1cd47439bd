"""The decoder primitives (nn/rmsnorm, nn/swiglu, nn/rope, nn/gqa) against naive loops
written from their equations, and their gradients against central finite differences."""
import math

import numpy as onp
import pytest

from conftest import finite_diff_check
from minipeft.nn.gqa import repeat_kv
from minipeft.nn.rmsnorm import rms_norm
from minipeft.nn.rope import rope
from minipeft.nn.swiglu import swiglu

RNG = onp.random.default_rng(0)


def naive_rms(x, g, eps):
    out = onp.empty_like(x)
    for idx in onp.ndindex(x.shape[:-1]):
        row = x[idx]
        ms = sum(v * v for v in row) / len(row)
        out[idx] = [g[j] * row[j] / math.sqrt(ms + eps) for j in range(len(row))]
    return out


def naive_swiglu(G, U):
    out = onp.empty_like(G)
    for idx in onp.ndindex(G.shape):
        a = G[idx]
        out[idx] = a / (1.0 + math.exp(-a)) * U[idx]
    return out


def naive_rope(X, positions, h, base):
    """Each pair (i, i + d_h/2) of each head turned by t·base^(−2i/d_h), as a 2×2 rotation."""
    B, T, d = X.shape
    d_h, out = d // h, onp.empty_like(X)
    for b in range(B):
        for t in range(T):
            for head in range(h):
                o = head * d_h
                for i in range(d_h // 2):
                    a = positions[t] * base ** (-2.0 * i / d_h)
                    x1, x2 = X[b, t, o + i], X[b, t, o + i + d_h // 2]
                    out[b, t, o + i] = math.cos(a) * x1 - math.sin(a) * x2
                    out[b, t, o + i + d_h // 2] = math.sin(a) * x1 + math.cos(a) * x2
    return out


def naive_repeat(K, n_kv, n_rep):
    B, S, d_kv = K.shape
    d_h = d_kv // n_kv
    out = onp.empty((B, S, n_kv * n_rep * d_h))
    for j in range(n_kv * n_rep):  # query head j reads key/value head j // n_rep
        out[:, :, j * d_h:(j + 1) * d_h] = K[:, :, (j // n_rep) * d_h:(j // n_rep + 1) * d_h]
    return out


def test_rms_norm_matches_the_loop_and_its_gradients_finite_differences():
    x, g = RNG.standard_normal((2, 3, 7)), 1 + 0.3 * RNG.standard_normal(7)
    onp.testing.assert_allclose(rms_norm(x, g, 1e-5), naive_rms(x, g, 1e-5), rtol=1e-12, atol=1e-14)
    w = RNG.standard_normal(x.shape)
    finite_diff_check(lambda a: (rms_norm(a, g, 1e-5) * w).sum(), x)
    finite_diff_check(lambda a: (rms_norm(x, a, 1e-5) * w).sum(), g)


def test_untraced_rms_norm_is_the_traced_value_and_keeps_nothing():
    """A forward with no gradient gives the traced node's very numbers and stashes nothing."""
    from autograd import make_vjp

    from minipeft.nn import rmsnorm as RN
    for dt in ("float64", "float32"):
        r = onp.random.default_rng(3)
        x, g = r.standard_normal((3, 5, 16)).astype(dt), (1 + 0.1 * r.standard_normal(16)).astype(dt)
        RN._RMS.put(None, None)
        y = rms_norm(x, g, 1e-5)
        assert RN._RMS.slot == (None, None) and y.dtype == onp.dtype(dt)
        onp.testing.assert_array_equal(y, make_vjp(lambda a: rms_norm(a, g, 1e-5))(x)[1])


def test_swiglu_matches_the_loop_and_its_gradients_finite_differences():
    G, U = 3 * RNG.standard_normal((2, 3, 5)), RNG.standard_normal((2, 3, 5))
    onp.testing.assert_allclose(swiglu(G, U), naive_swiglu(G, U), rtol=1e-12, atol=1e-14)
    w = RNG.standard_normal(G.shape)
    finite_diff_check(lambda a: (swiglu(a, U) * w).sum(), G)
    finite_diff_check(lambda a: (swiglu(G, a) * w).sum(), U)


def test_swiglu_is_finite_for_huge_gates():
    G = onp.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    out = swiglu(G, onp.ones(5))
    assert onp.isfinite(out).all() and out[0] == 0 and out[-1] == 1e4


@pytest.mark.parametrize("h", [1, 3])
def test_rope_matches_the_pairwise_rotation_loop_and_its_gradient(h):
    X, pos = RNG.standard_normal((2, 4, 8 * h)), onp.array([0, 3, 1, 17])
    onp.testing.assert_allclose(rope(X, pos, h, 100000.0), naive_rope(X, pos, h, 100000.0), rtol=1e-12,
                                atol=1e-13)
    w = RNG.standard_normal(X.shape)
    finite_diff_check(lambda a: (rope(a, pos, h, 100000.0) * w).sum(), X)


def test_rope_scores_depend_on_the_offset_only():
    q, k = RNG.standard_normal((1, 1, 8)), RNG.standard_normal((1, 1, 8))

    def score(t, s):
        return float((rope(q, onp.array([t]), 1, 10000.0) * rope(k, onp.array([s]), 1, 10000.0)).sum())

    assert math.isclose(score(5, 2), score(13, 10), rel_tol=1e-12)
    assert not math.isclose(score(5, 2), score(5, 3), rel_tol=1e-6)
    onp.testing.assert_array_equal(rope(q, onp.array([0]), 1, 10000.0), q)  # position 0: no rotation


def test_repeat_kv_matches_the_loop_and_its_gradient():
    K = RNG.standard_normal((2, 5, 3 * 4))  # n_kv = 3 heads of width 4
    onp.testing.assert_array_equal(repeat_kv(K, 3, 2), naive_repeat(K, 3, 2))
    w = RNG.standard_normal((2, 5, 3 * 2 * 4))
    finite_diff_check(lambda a: (repeat_kv(a, 3, 2) * w).sum(), K)
    onp.testing.assert_array_equal(repeat_kv(K, 3, 1), K)


@pytest.mark.parametrize("fn", ["rms", "swiglu", "rope", "repeat"])
def test_float32_stays_float32(fn):
    from autograd import grad
    x = RNG.standard_normal((2, 3, 8)).astype("float32")
    f = {"rms": lambda a: rms_norm(a, onp.ones(8, "float32")), "swiglu": lambda a: swiglu(a, a),
         "rope": lambda a: rope(a, onp.arange(3), 2, 10000.0), "repeat": lambda a: repeat_kv(a, 2, 2)}[fn]
    assert f(x).dtype == onp.float32
    assert grad(lambda a: f(a).sum())(x).dtype == onp.float32

"""nn: fused primitives against finite differences, the composed reference, and naive loops."""
import math

import autograd.numpy as anp
import numpy as onp
import pytest
from autograd import grad
from hypothesis import given
from hypothesis import strategies as st

from conftest import finite_diff_check
from minipeft import nn
from minipeft.nn import reference as R
from reference import naive_attention

rng = onp.random.default_rng(0)
X = rng.standard_normal((3, 5, 8))
W = rng.standard_normal((6, 8)) / math.sqrt(8)
b = rng.standard_normal(6)
G = 1 + 0.1 * rng.standard_normal(8)
BETA = 0.1 * rng.standard_normal(8)
LAB = onp.array([0, 3, 5])


def scalar(f):
    """A scalar of f's output, weighted so that every output element matters."""
    def s(*args):
        y = f(*args)
        w = onp.cos(onp.arange(y.size)).reshape(y.shape).astype(y.dtype)
        return anp.sum(y * w)
    return s


# each case: fused fn, reference fn, args builder
CASES = {
    "linear": (lambda x, W, b: nn.linear(x, W, b), lambda x, W, b: R.linear(x, W, b), (X, W, b)),
    "layer_norm": (nn.layer_norm, R.layer_norm, (X, G, BETA)),
    "gelu": (nn.gelu, R.gelu, (X,)),
    "softmax": (nn.softmax, R.softmax, (X,)),
    "log_softmax": (nn.log_softmax, R.log_softmax, (X,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_finite_differences(name):
    fused, _, args = CASES[name]
    for i in range(len(args)):
        def f(a, i=i):
            full = list(args)
            full[i] = a
            return scalar(fused)(*full)
        finite_diff_check(f, args[i])


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_equals_reference_in_value_and_gradient(name):
    fused, ref, args = CASES[name]
    onp.testing.assert_allclose(fused(*args), ref(*args), rtol=1e-12, atol=1e-12)
    for i in range(len(args)):
        gf = grad(scalar(fused), i)(*args)
        gr = grad(scalar(ref), i)(*args)
        onp.testing.assert_allclose(gf, gr, rtol=1e-10, atol=1e-12)


def test_cross_entropy_value_gradient_and_reference():
    logits = rng.standard_normal((3, 7))
    ls = logits - onp.log(onp.exp(logits).sum(1, keepdims=True))
    assert onp.isclose(nn.cross_entropy(logits, LAB), -ls[onp.arange(3), LAB].mean(), rtol=1e-14)
    assert onp.isclose(nn.cross_entropy(logits, LAB), R.cross_entropy(logits, LAB), rtol=1e-14)
    finite_diff_check(lambda z: nn.cross_entropy(z, LAB), logits)
    onp.testing.assert_allclose(grad(nn.cross_entropy)(logits, LAB), grad(R.cross_entropy)(logits, LAB), atol=1e-14)


def test_softmax_is_stable_for_huge_logits():
    z = onp.array([[1000.0, 1000.0, -1000.0]])
    onp.testing.assert_allclose(nn.softmax(z), [[0.5, 0.5, 0.0]])
    assert onp.isfinite(nn.cross_entropy(onp.array([[1e4, -1e4]]), onp.array([1])))


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_stays_float32_in_forward_and_backward(name):
    fused, _, args = CASES[name]
    args32 = [a.astype(onp.float32) for a in args]
    assert fused(*args32).dtype == onp.float32
    for i in range(len(args)):
        assert grad(scalar(fused), i)(*args32).dtype == onp.float32


@given(B=st.integers(1, 3), T=st.integers(1, 5), S=st.integers(1, 5), h=st.sampled_from([1, 2, 4]),
       p=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_attention_matches_naive_loop_with_and_without_prefix(B, T, S, h, p, seed):
    r = onp.random.default_rng(seed)
    d = 4 * h
    Q, K, V = (r.standard_normal((B, n, d)) for n in (T, S, S))
    P_k, P_v = r.standard_normal((p, d)), r.standard_normal((p, d))
    if p:
        Z, A = nn.attention(Q, K, V, h, prefix=(P_k, P_v), return_weights=True)
        Kf = onp.concatenate([onp.broadcast_to(P_k, (B, p, d)), K], 1)
        Vf = onp.concatenate([onp.broadcast_to(P_v, (B, p, d)), V], 1)
    else:
        Z, A = nn.attention(Q, K, V, h, return_weights=True)
        Kf, Vf = K, V
    assert Z.shape == (B, T, d) and A.shape == (B, h, T, S + p)
    onp.testing.assert_allclose(A.sum(-1), 1.0, rtol=1e-12)
    onp.testing.assert_allclose(Z, naive_attention(Q, Kf, Vf, h), rtol=1e-10, atol=1e-12)


def test_attention_gradients_finite_differences():
    r = onp.random.default_rng(1)
    Q, K, V = (r.standard_normal((2, 3, 8)) for _ in range(3))
    P = r.standard_normal((2, 8))
    for i in range(3):
        def f(a, i=i):
            args = [Q, K, V]
            args[i] = a
            return scalar(lambda *z: nn.attention(*z, 2, prefix=(P, P)))(*args)
        finite_diff_check(f, [Q, K, V][i])
    finite_diff_check(lambda P: scalar(lambda *z: nn.attention(*z, 2, prefix=(P, 2 * P)))(Q, K, V), P)


def test_linear_without_bias():
    onp.testing.assert_allclose(nn.linear(X, W), X @ W.T, rtol=1e-14)
    g = grad(lambda x: anp.sum(nn.linear(x, W, b)))(X)
    onp.testing.assert_allclose(g, onp.broadcast_to(W.sum(0), X.shape), rtol=1e-14)


def test_frozen_weight_gradient_is_never_computed():
    """The PEFT saving: when only x is differentiated, linear's dW VJP is never even built."""
    from autograd.core import primitive_vjps
    from autograd.extend import defvjp

    from minipeft.nn import primitives as P

    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return P._linear_vjp_W(*args, **kwargs)

    saved = primitive_vjps[P.linear]
    try:
        defvjp(P.linear, P._linear_vjp_x, spy, P._linear_vjp_b)
        grad(lambda x: anp.sum(nn.linear(x, W, b)))(X)
        assert calls == []  # W frozen: no dW
        grad(lambda w: anp.sum(nn.linear(X, w, b)))(W)
        assert calls == [1]  # W differentiated: the spy sees it
    finally:
        primitive_vjps[P.linear] = saved

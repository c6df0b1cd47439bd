"""Fused primitives with hand-written VJPs: what minipeft trains with.

Each function here is an ``autograd.extend.primitive``: autograd sees one node, and its
gradient is the closed form below, computed in the dtype of the inputs (float32 stays
float32; autograd's own VJPs of mean/var/max upcast to float64). The composed,
line-by-line readable versions of the same equations live in ``nn/reference.py``;
tests check the two agree, in value and in gradient.

Only differentiated arguments get a VJP: for a frozen W, ``linear`` computes no dW —
the PEFT saving.
"""
from __future__ import annotations

import math

import numpy as onp
from autograd.extend import defvjp, primitive

_GELU_C = math.sqrt(2.0 / math.pi)  # a Python float: joins float32 without upcasting


# --------------------------------------------------------------------------- linear
@primitive
def linear(x, W, b=None):
    """Affine map, weights stored d_out×d_in (equations.md, "Conventions").

        y = x Wᵀ + b

    x: (..., d_in), W: (d_out, d_in), b: (d_out,) or None  ->  y: (..., d_out).
    Applied to the 2-D view (B·T, d_in), so dW is one GEMM: dW = gᵀ x.
    """
    x2 = x.reshape(-1, x.shape[-1])  # (M, d_in)
    y = x2 @ W.T  # (M, d_out)
    if b is not None:
        y += b
    return y.reshape(x.shape[:-1] + (W.shape[0],))  # (..., d_out)


def _linear_vjp_x(ans, x, W, b=None):
    return lambda g: (g.reshape(-1, g.shape[-1]) @ W).reshape(x.shape)  # (..., d_in)


def _linear_vjp_W(ans, x, W, b=None):
    def vjp(g):
        return g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # (d_out, d_in)

    return vjp


def _linear_vjp_b(ans, x, W, b=None):
    return lambda g: g.reshape(-1, g.shape[-1]).sum(axis=0)  # (d_out,)


defvjp(linear, _linear_vjp_x, _linear_vjp_W, _linear_vjp_b)


# ----------------------------------------------------------------------- layer norm
def _ln_stats(x, eps):
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mu
    rstd = 1.0 / onp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    return xc * rstd, rstd  # x̂ (..., d), 1/σ (..., 1)


@primitive
def layer_norm(x, gamma, beta, eps=1e-5):
    """Layer normalisation over the last axis (equations.md, "Transformer").

        LN(x) = γ ⊙ (x − μ(x)) / sqrt(σ²(x) + ε) + β

    x: (..., d), gamma, beta: (d,)  ->  (..., d).
    """
    xhat, _ = _ln_stats(x, eps)
    return xhat * gamma + beta


def _ln_vjp_x(ans, x, gamma, beta, eps=1e-5):
    xhat, rstd = _ln_stats(x, eps)

    def vjp(g):
        gx = g * gamma  # ∂L/∂x̂
        return rstd * (
            gx - gx.mean(axis=-1, keepdims=True) - xhat * (gx * xhat).mean(axis=-1, keepdims=True)
        )

    return vjp


def _ln_vjp_gamma(ans, x, gamma, beta, eps=1e-5):
    xhat, _ = _ln_stats(x, eps)
    return lambda g: (g * xhat).reshape(-1, x.shape[-1]).sum(axis=0)  # (d,)


def _ln_vjp_beta(ans, x, gamma, beta, eps=1e-5):
    return lambda g: g.reshape(-1, x.shape[-1]).sum(axis=0)  # (d,)


defvjp(layer_norm, _ln_vjp_x, _ln_vjp_gamma, _ln_vjp_beta)


# ------------------------------------------------------------------------------ gelu
@primitive
def gelu(x):
    """GELU, tanh form (as GPT-2 and PyTorch's ``approximate='tanh'``).

        GELU(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))

    Any shape -> same shape.
    """
    return 0.5 * x * (1.0 + onp.tanh(_GELU_C * (x + 0.044715 * x * x * x)))


def _gelu_vjp(ans, x):
    t = onp.tanh(_GELU_C * (x + 0.044715 * x * x * x))
    dydx = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)
    return lambda g: g * dydx


defvjp(gelu, _gelu_vjp)


# --------------------------------------------------------------------------- softmax
@primitive
def softmax(z):
    """Numerically stable softmax over the last axis.

        softmax(z)_j = exp(z_j − max z) / Σ_i exp(z_i − max z)

    Any shape (..., n) -> (..., n).
    """
    e = onp.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


defvjp(softmax, lambda y, z: lambda g: y * (g - (g * y).sum(axis=-1, keepdims=True)))


@primitive
def log_softmax(z):
    """log softmax over the last axis: z − max z − log Σ exp(z − max z). (..., n) -> (..., n)."""
    zc = z - z.max(axis=-1, keepdims=True)
    return zc - onp.log(onp.exp(zc).sum(axis=-1, keepdims=True))


defvjp(log_softmax, lambda ls, z: lambda g: g - onp.exp(ls) * g.sum(axis=-1, keepdims=True))


@primitive
def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of integer labels.

        L = −(1/B) Σ_b log softmax(logits_b)[y_b]

    logits: (B, C), labels: (B,) int in [0, C)  ->  scalar (0-d array, logits' dtype).
    Gradient: (softmax(logits) − onehot(y)) / B.
    """
    ls = log_softmax(logits)
    return -ls[onp.arange(len(labels)), labels].mean()


def _ce_vjp(ans, logits, labels):
    def vjp(g):
        p = softmax(logits)
        p[onp.arange(len(labels)), labels] -= 1.0
        return p * (g / len(labels))

    return vjp


defvjp(cross_entropy, _ce_vjp)

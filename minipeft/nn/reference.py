"""The same equations as ``nn/primitives.py``, composed from ``autograd.numpy`` ops.

These are the versions to read beside the notes: one line per symbol. They are
differentiable by autograd as they stand, but autograd's VJPs of ``mean``/``var``/``max``
return float64 for float32 inputs and each op is its own graph node, so training uses the
fused primitives instead. Tests check both agree in value and gradient.
"""
from __future__ import annotations

import math

import autograd.numpy as np


def linear(x, W, b=None):
    """y = x Wᵀ + b.   x: (..., d_in), W: (d_out, d_in), b: (d_out,) -> (..., d_out)."""
    y = np.dot(x, W.T)
    return y if b is None else y + b


def layer_norm(x, gamma, beta, eps=1e-5):
    """LN(x) = γ ⊙ (x − μ(x)) / sqrt(σ²(x) + ε) + β over the last axis.  (..., d) -> (..., d)."""
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.var(x, axis=-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def gelu(x):
    """GELU(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³))).  Same shape."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
    """GELU(x) = ½ x (1 + erf(x / √2)), the exact form.  Same shape."""
    from autograd.scipy.special import erf
    return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))


def softmax(z):
    """softmax(z)_j = exp(z_j − max z) / Σ_i exp(z_i − max z) over the last axis."""
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def log_softmax(z):
    """log softmax(z) = z − max z − log Σ exp(z − max z) over the last axis."""
    zc = z - np.max(z, axis=-1, keepdims=True)
    return zc - np.log(np.sum(np.exp(zc), axis=-1, keepdims=True))


def cross_entropy(logits, labels):
    """L = −(1/B) Σ_b log softmax(logits_b)[y_b].  logits (B, C), labels (B,) -> scalar."""
    return -np.mean(log_softmax(logits)[np.arange(len(labels)), labels])


def low_rank_add(y, x, A, B, s):
    """LoRA's branch: h = y + s (x Aᵀ) Bᵀ, s = α/r.  y (..., d), x (..., k), A (r, k), B (d, r) -> (..., d)."""
    return y + s * linear(linear(x, A), B)

"""Rotary position embeddings, RoPE (Su et al. 2021; equations.md, "Real architectures").

Each head's d_h dimensions form d_h/2 pairs; pair i of the row at position t turns by
the angle t·θ_i, θ_i = base^{−2i/d_h}. Pairs are (i, i + d_h/2) — the "rotate_half"
layout of Hugging Face's Llama, in which its W_q and W_k are stored (the GGUF file's
interleaved pairs (2i, 2i+1) are the same rotation after permuting W_q's and W_k's rows,
which the loader does). With x = [x₁, x₂] (the two halves of one head),

    RoPE(x, t) = x ⊙ cos(tθ) + rotate_half(x) ⊙ sin(tθ),   rotate_half(x) = [−x₂, x₁]
    cos(tθ), sin(tθ) ∈ R^{d_h}: each angle written twice, [tθ_0..tθ_{d_h/2−1}, same]

so q_t · k_s depends on t − s only. It is orthogonal, so its VJP is the rotation back:
∂L/∂x = G ⊙ cos − rotate_half(G) ⊙ sin.  Position 0 is the identity (an unrotated row).
"""
from __future__ import annotations

import numpy as onp
from autograd.extend import defvjp, primitive

from ..backend import like


def rope_angles(positions, d_h: int, base: float):
    """(cos, sin), each (T, d_h) float64 on the host: angles t·θ_i for the rows' positions.

    positions: (T,) non-negative ints (rotary position of each row); θ_i = base^{−2i/d_h},
    i = 0..d_h/2 − 1, each written twice ([θ; θ]) to match rotate_half.
    """
    inv = base ** (-onp.arange(0, d_h, 2, dtype=onp.float64) / d_h)  # θ_i (d_h/2,)
    ang = onp.asarray(positions, dtype=onp.float64)[:, None] * inv[None, :]  # (T, d_h/2)
    ang = onp.concatenate([ang, ang], axis=1)  # (T, d_h)
    return onp.cos(ang), onp.sin(ang)


def _rotate_half(x):
    """[x₁, x₂] -> [−x₂, x₁] on the last axis (d_h even).  (..., d_h) -> (..., d_h)."""
    half = x.shape[-1] // 2
    return onp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _turn(X, cos, sin, h, sign):
    """X (B, T, h·d_h) with each head turned by ±angle (sign ±1).  -> (B, T, h·d_h)."""
    B, T, d = X.shape
    x = X.reshape(B, T, h, d // h)  # (B, T, h, d_h)
    c, s = cos[:, None, :], sin[:, None, :]  # (T, 1, d_h), broadcast over batch and heads
    y = x * c
    r = _rotate_half(x)
    r *= s
    y += r if sign > 0 else -r
    return y.reshape(B, T, d)


@primitive
def rotate(X, cos, sin, h):
    """RoPE on every head of X (module docstring); cos, sin from ``rope_angles``.

    X: (B, T, h·d_h) (Q, or K with h = n_kv heads); cos, sin: (T, d_h)  ->  (B, T, h·d_h).
    """
    return _turn(X, cos, sin, h, +1)


defvjp(rotate, lambda ans, X, cos, sin, h: lambda G: _turn(G, cos, sin, h, -1))


def rope(X, positions, h: int, base: float):
    """RoPE of X at ``positions`` (T,) with h heads and base ``base``.  (B, T, h·d_h) -> same.

    The angle tables are computed in float64 and cast to X's dtype, on X's device.
    """
    d_h = X.shape[-1] // h
    cos, sin = rope_angles(positions, d_h, base)
    dtype = getattr(X, "_value", X).dtype
    cos, sin = like(cos.astype(dtype), getattr(X, "_value", X)), like(sin.astype(dtype), getattr(X, "_value", X))
    return rotate(X, cos, sin, h)

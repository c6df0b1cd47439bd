"""RMSNorm (Zhang & Sennrich 2019; Llama's norm; equations.md, "Real architectures").

    RMSNorm(x) = g ⊙ x / sqrt(mean(x²) + ε)          over the last axis; no mean, no β

x: (..., d), g: (d,) -> (..., d). A fused primitive with a hand-written VJP (as
``primitives.layer_norm``): with r = 1/sqrt(mean(x²) + ε), x̂ = r x and ĝ = G ⊙ g
(G = ∂L/∂y),

    ∂L/∂x = r (ĝ − x̂ ⊙ mean(ĝ ⊙ x̂)),     ∂L/∂g = Σ_rows G ⊙ x̂.
"""
from __future__ import annotations

import numpy as onp
from autograd.extend import defvjp_argnums, primitive
from autograd.tracer import isbox

from .primitives import _Stash, _col_sum, _empty, _row_dot

_RMS = _Stash()


def _rms_stats(x, eps, out=None):
    """(x̂ (..., d), r (..., 1)) with r = 1/sqrt(mean(x²) + ε), x̂ = r x (into ``out`` if given)."""
    r = 1.0 / (_row_dot(x, x) * (1.0 / x.shape[-1]) + eps) ** 0.5  # (..., 1)
    return onp.multiply(x, r, out=out), r


def _rms_values(x, gamma, eps=1e-5, stash=True):
    """RMSNorm(x) into one new array; ``stash``: x̂ and r are kept for the VJP (``_RMS``),
    else x̂ is formed in the output's own buffer and nothing is kept."""
    y = _empty(x)
    xhat, r = _rms_stats(x, eps, out=None if stash else y)
    onp.multiply(xhat, gamma, out=y)
    return _RMS.put(y, (xhat, r)) if stash else y


_rms_norm_node = primitive(_rms_values)  # what autograd traces: its VJP reads the stash


def rms_norm(x, gamma, eps=1e-5):
    """RMSNorm(x) = γ ⊙ x / sqrt(mean(x²) + ε) over the last axis (module docstring).

    x: (..., d), gamma: (d,) (Llama's "weight", the notes' g)  ->  (..., d).  Traced by
    autograd (x or γ), one node (``_rms_norm_node``) that keeps x̂ and r for its VJP;
    untraced (a forward pass with no gradient), nothing is kept.
    """
    if isbox(x) or isbox(gamma):
        return _rms_norm_node(x, gamma, eps)
    return _rms_values(x, gamma, eps, stash=False)


def _rms_vjp(argnums, ans, args, kwargs):
    x, gamma = args[0], args[1]
    eps = args[2] if len(args) > 2 else kwargs.get("eps", 1e-5)
    stats = _RMS.take(ans)
    xhat, r = stats if stats is not None else _rms_stats(x, eps)
    d = x.shape[-1]

    def vjp(g):
        out = []
        for i in argnums:
            if i == 0:
                gx = g * gamma  # ĝ
                gx -= xhat * (_row_dot(gx, xhat) * (1.0 / d))  # ĝ − x̂ ⊙ mean(ĝ ⊙ x̂)
                gx *= r
                out.append(gx)
            elif i == 1:
                out.append(_col_sum((g * xhat).reshape(-1, d)))  # (d,)
            else:
                raise ValueError("rms_norm: eps is not differentiable")
        return tuple(out)

    return vjp


defvjp_argnums(_rms_norm_node, _rms_vjp)

"""RMSNorm (Zhang & Sennrich 2019; Llama's norm; equations.md, "Real architectures").

    RMSNorm(x) = g ⊙ x / sqrt(mean(x²) + ε)          over the last axis; no mean, no β

x: (..., d), g: (d,) -> (..., d). A fused primitive with a hand-written VJP (as
``primitives.layer_norm``): with r = 1/sqrt(mean(x²) + ε), x̂ = r x and ĝ = G ⊙ g
(G = ∂L/∂y),

    ∂L/∂x = r (ĝ − x̂ ⊙ mean(ĝ ⊙ x̂)),     ∂L/∂g = Σ_rows G ⊙ x̂.
"""
from __future__ import annotations

from autograd.extend import defvjp_argnums, primitive

from .primitives import _Stash, _col_sum, _row_dot

_RMS = _Stash()


def _rms_stats(x, eps):
    """(x̂ (..., d), r (..., 1)) with r = 1/sqrt(mean(x²) + ε), x̂ = r x."""
    r = 1.0 / (_row_dot(x, x) * (1.0 / x.shape[-1]) + eps) ** 0.5  # (..., 1)
    return x * r, r


@primitive
def rms_norm(x, gamma, eps=1e-5):
    """RMSNorm(x) = γ ⊙ x / sqrt(mean(x²) + ε) over the last axis (module docstring).

    x: (..., d), gamma: (d,) (Llama's "weight", the notes' g)  ->  (..., d).
    """
    xhat, r = _rms_stats(x, eps)
    return _RMS.put(xhat * gamma, (xhat, r))


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


defvjp_argnums(rms_norm, _rms_vjp)

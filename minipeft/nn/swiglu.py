"""SwiGLU, Llama's MLP nonlinearity (Shazeer 2020; equations.md, "Real architectures").

    SiLU(z) = z σ(z),   σ(z) = 1 / (1 + e^{−z})
    SwiGLU(G, U) = SiLU(G) ⊙ U          G = x W_gᵀ (gate), U = x W_1ᵀ (up)
    MLP(x) = SwiGLU(x W_gᵀ, x W_1ᵀ) W_2ᵀ                (W_2: down)

G, U: (..., d_ff) -> (..., d_ff). A fused primitive with a hand-written VJP, with
H = ∂L/∂y:  ∂L/∂U = H ⊙ SiLU(G),  ∂L/∂G = H ⊙ U ⊙ σ(G)(1 + G(1 − σ(G))).
"""
from __future__ import annotations

import numpy as onp
from autograd.extend import defvjp, primitive


def _sigmoid(z):
    """σ(z) = 1/(1 + e^{−z}), computed as ½(1 + tanh(z/2)): no overflow for large |z|."""
    s = onp.tanh(z * 0.5)
    s += 1.0
    s *= 0.5
    return s


def silu(z):
    """SiLU(z) = z σ(z) (plain NumPy; any shape)."""
    return z * _sigmoid(z)


@primitive
def swiglu(G, U):
    """SiLU(G) ⊙ U (module docstring).  G, U: (..., d_ff) -> (..., d_ff)."""
    return silu(G) * U


def _vjp_G(ans, G, U):
    s = _sigmoid(G)
    dG = 1.0 - s  # σ(G)(1 + G(1 − σ(G))) ⊙ U, in one buffer
    dG *= G
    dG += 1.0
    dG *= s
    dG *= U
    return lambda H: H * dG


def _vjp_U(ans, G, U):
    sG = silu(G)
    return lambda H: H * sG


defvjp(swiglu, _vjp_G, _vjp_U)

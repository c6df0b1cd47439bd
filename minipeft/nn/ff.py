"""The first half of the MLP, H = GELU(x W₁ᵀ + b₁), as one node (equations.md, "Transformer").

The same numbers as ``gelu(linear(x, W₁, b₁))`` (tanh form), bit for bit: the same GEMM,
then the same element-wise operations in the same order, only in cache-sized blocks.
Why one node: as two, the forward of a step ends GELU holding three buffers of the
hidden layer's size (B, T, d_ff) at once — the pre-activation U, tanh(·) (which becomes
GELU'(U) for the backward pass) and H — and in a step whose W₁, W₂ are frozen (LoRA on
q, v; prompt tuning) that moment, in the last block, is the step's peak. Here U is this
node's own buffer: each block of it is read, then overwritten with its block of H, while
GELU'(U) is written to the one buffer the backward pass keeps. Two buffers, no recompute.

The forward pass uses it where nothing sits between the two (no method touches the
"linear" seam of mlp1, see ``Method.hook_points``) and something is differentiated
(forming GELU'(U) is wasted work in a forward pass that no VJP reads).
"""
from __future__ import annotations

import numpy as onp
from autograd.extend import defvjp_argnums, primitive

from .primitives import _blocks, _gelu_derivative, _gelu_tanh, _linear_vjp_W, _linear_vjp_b, _linear_vjp_x, linear


_SLOT = [None, None]  # (H, GELU'(U)) of the last forward, taken by the VJP maker built for that H


#: numbers per block here: half of primitives' _BLOCK, as each block makes a few block-sized temporaries
_FF_BLOCK = 1 << 15


@primitive
def linear_gelu(x, W, b):
    """H = GELU(x Wᵀ + b), tanh form, with GELU'(x Wᵀ + b) kept for the backward pass.

    x: (..., d_in), W: (d_out, d_in), b: (d_out,)  ->  H: (..., d_out).
    Gradient, with dU = g ⊙ GELU'(U):  ∂L/∂x = dU W,  ∂L/∂W = dUᵀ x,  ∂L/∂b = Σ_rows dU.
    """
    H = linear.fun(x, W, b)  # U, this node's own buffer: becomes H block by block
    D = onp.empty_like(H)  # GELU'(U)
    Hf, Df = H.reshape(-1), D.reshape(-1)
    for sl in _blocks(Hf.shape[0], type(H) is not onp.ndarray, _FF_BLOCK):
        u = Hf[sl]
        t = _gelu_tanh(u)
        y = t + 1.0  # as gelu: ½ u (1 + t)
        y *= u
        y *= 0.5
        Df[sl] = _gelu_derivative(u, t)  # reads u and t (t's buffer is overwritten)
        u[...] = y
    _SLOT[:] = H, D
    return H


def _linear_gelu_vjp(argnums, ans, args, kwargs):
    if _SLOT[0] is not ans:
        raise RuntimeError("linear_gelu: a VJP built for an output its forward did not just make")
    D, _SLOT[:] = _SLOT[1], (None, None)
    x, W, b = args
    makers = {0: _linear_vjp_x, 1: _linear_vjp_W, 2: _linear_vjp_b}
    vjps = [makers[i](None, x, W, b) for i in argnums]  # linear's own VJPs, applied to dU

    def vjp(g):
        dU = g * D  # gelu's VJP
        del g  # the backward pass hands g over: freed here, before the products below
        return tuple(f(dU) for f in vjps)

    return vjp


defvjp_argnums(linear_gelu, _linear_gelu_vjp)

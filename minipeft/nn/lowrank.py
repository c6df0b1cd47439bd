"""LoRA's branch added to a projection's output as one node (equations.md, "LoRA"):

    h = y + s (x Aᵀ) Bᵀ,   y = x W₀ᵀ + b (the frozen projection's output), s = α/r

``low_rank_add`` gives the same numbers as its composed twin ``low_rank_add_composed``,
``y + s · linear(linear(x, A), B)`` (what LoRA's hook computed before), bit for bit, in
value and in every gradient: the same BLAS calls on the same 2-D arrays, the same
element-wise operations, only without their temporaries.
Why one node: composed, each adapted projection is four graph nodes, and its forward makes
three arrays of y's size (B, T, d) — (x Aᵀ)Bᵀ, s·(…), y + (…) — and its backward one more
(s·g, the multiplication's VJP); with r ≪ d those element-wise passes cost as much as the
rank-r products themselves. Here the product (x Aᵀ)Bᵀ is the node's output buffer: s is
applied in place and y added in place (one array of y's size, one pass). The rank-r
intermediate u = x Aᵀ (B, T, r) is kept for ∂L/∂B; x, for ∂L/∂A, is not kept when it is a
LayerNorm's output (LN₁'s, for q and v): it is rebuilt in the backward pass from the x̂ that
LayerNorm keeps for its own gradient (``primitives.input_again``, the same bits; once for
the q and v branches that both read it). When s is a
power of two (α = r: s = 1, the default) it moves onto the rank-r side exactly — s·(P Bᵀ) = (s P) Bᵀ bit for bit, a
power-of-two scaling commuting with every rounding — so neither pass over (B, T, d) by s
remains; another s is applied at full size, as the composed form does, to keep its bits.

Gradient, with g = ∂L/∂h (B, T, d), ∂u = s · g B (B, T, r):
    ∂L/∂y = g,   ∂L/∂x = ∂u A,   ∂L/∂A = ∂uᵀ x,   ∂L/∂B = s · gᵀ u.
"""
from __future__ import annotations

import math

import numpy as onp
from autograd.extend import defvjp_argnums, primitive

from .primitives import _Stash, input_again, linear

_LR = _Stash()  # u = x Aᵀ (scaled by s when s is a power of two) of the last forward


def _exact(s) -> bool:
    """Whether multiplying by s commutes with rounding: s is a power of two (1 included)."""
    return math.frexp(s)[0] == 0.5


def _rank_side(x2, A, s):
    """u = x Aᵀ (M, r), times s when s is a power of two (exact): linear(x, A)'s own product."""
    u = x2 @ A.T
    if s != 1.0 and _exact(s):
        u *= s
    return u


def _check(y, x, A, B, s):
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s == 0:
        raise ValueError(f"low_rank_add: s must be a finite nonzero Python number (α/r), got {s!r}")
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1] or x.shape[-1] != A.shape[1] \
            or y.shape != x.shape[:-1] + (B.shape[0],):
        raise ValueError(f"low_rank_add: expected y (..., d), x (..., k), A (r, k), B (d, r); got y {y.shape}, "
                         f"x {x.shape}, A {A.shape}, B {B.shape}")


@primitive
def low_rank_add(y, x, A, B, s):
    """h = y + s (x Aᵀ) Bᵀ as one node, u = x Aᵀ kept.

    y: (..., d), x: (..., k), A: (r, k), B: (d, r), s: a Python float (α/r)  ->  h: (..., d).
    Gradient (g = ∂L/∂h, ∂u = s·g B): ∂L/∂y = g, ∂L/∂x = ∂u A, ∂L/∂A = ∂uᵀ x, ∂L/∂B = s·gᵀ u.
    Bit for bit ``low_rank_add_composed``. s is a constant (not differentiated).
    """
    _check(y, x, A, B, s)
    u = _rank_side(x.reshape(-1, x.shape[-1]), A, s)  # (M, r)
    h = u @ B.T  # (M, d): this node's own buffer
    if not _exact(s):
        h *= s  # as s · (…) in the composed form
    y2 = y.reshape(h.shape)
    if onp.promote_types(h.dtype, y2.dtype) == h.dtype:
        h += y2  # y + s(…): the same sum (addition commutes exactly)
    else:
        h = y2 + h
    return _LR.put(h.reshape(y.shape), u)


def _low_rank_add_vjp(argnums, ans, args, kwargs):
    y, x, A, B, s = args
    if 4 in argnums:
        raise ValueError("low_rank_add: s = α/r is a constant; it cannot be differentiated")
    u = _LR.take(ans)
    k = x.shape[-1]
    if 3 in argnums and u is None:  # an untraced forward in between: recompute (the same bits)
        u = _rank_side(x.reshape(-1, k), A, s)
    if 3 not in argnums:
        u = None  # ∂L/∂B alone reads u
    # ∂L/∂A alone reads x; when x is a LayerNorm's output (LN₁'s, for q and v) it is rebuilt in
    # the backward pass from the x̂ that LN keeps anyway, so x itself is freed after the forward
    x_again = input_again(x) if 2 in argnums else None
    shape, d = x.shape, B.shape[0]
    exact = _exact(s)

    def vjp(g):
        g2 = g.reshape(-1, d)  # (M, d)
        gs = g2 if exact else g2 * s  # the multiplication's VJP, where s is not a power of two
        out = {0: g}
        if 3 in argnums:
            out[3] = gs.T @ u  # (d, r): s · gᵀ u (s already in u or in gs)
        if 1 in argnums or 2 in argnums:
            du = gs @ B  # (M, r)
            del gs
            if exact and s != 1.0:
                du *= s
            if 2 in argnums:
                x2 = x_again().reshape(-1, k)  # (M, k)
                out[2] = du.T @ x2  # (r, k)
                del x2
            if 1 in argnums:
                out[1] = (du @ A).reshape(shape)  # (..., k)
        return tuple(out[i] for i in argnums)

    return vjp


defvjp_argnums(low_rank_add, _low_rank_add_vjp)


def low_rank_add_composed(y, x, A, B, s):
    """The readable twin: h = y + s · linear(linear(x, A), B), four graph nodes (the form
    ``low_rank_add`` is tested against, value and gradient, bit for bit).
    y: (..., d), x: (..., k), A: (r, k), B: (d, r) -> (..., d)."""
    return y + s * linear(linear(x, A), B)

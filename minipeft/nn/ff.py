"""The MLP as fused nodes (equations.md, "Transformer"): its first half H = GELU(x W₁ᵀ + b₁)
(``linear_gelu``), and the whole M = H W₂ᵀ + b₂ for frozen weights (``frozen_mlp``, below).

``linear_gelu`` gives the same numbers as ``gelu(linear(x, W₁, b₁))`` (tanh form), bit for
bit: the same GEMM, then the same element-wise operations in the same order (+ b₁ first),
only in cache-sized blocks: b₁ joins each block of U while it is in cache rather than taking
a pass over (B, T, d_ff) of its own.
Why one node: as two, the forward of a step ends GELU holding three buffers of the
hidden layer's size (B, T, d_ff) at once — the pre-activation U, tanh(·) (which becomes
GELU'(U) for the backward pass) and H — and in a step whose W₁, W₂ are frozen (LoRA on
q, v; prompt tuning) that moment, in the last block, is the step's peak. Here U is this
node's own buffer: each block of it is read, then overwritten with its block of H, while
GELU'(U) is written to the one buffer the backward pass keeps. Two buffers, no recompute.

The forward pass uses it where nothing sits between the two (no method touches the
"linear" seam of mlp1, see ``Method.hook_points``) and something is differentiated
(forming GELU'(U) is wasted work in a forward pass that no VJP reads). A forward pass
alone, for either GELU form, takes ``linear_gelu_values``: the same numbers, H written over
U block by block, b₁ added to each block first (not in a pass of its own), no GELU'.

``frozen_mlp`` trades time for memory (activation checkpointing, chosen by
MINIPEFT_RECOMPUTE=mlp, ``runtime.recompute``; by default the forward keeps GELU'(U) through
``linear_gelu`` instead) where W₁, b₁, W₂, b₂ are all frozen and no method touches the MLP
between its input and W₂'s output (LoRA on q, v; prompt tuning): the whole
M = GELU(x W₁ᵀ + b₁) W₂ᵀ + b₂ as one node. Only ∂L/∂x is computed, and
∂L/∂x = ((g W₂) ⊙ GELU'(x W₁ᵀ + b₁)) W₁ reads x and the frozen weights: the node keeps x
(B, T, d), not GELU'(U) (B, T, d_ff, twice x's size with d_ff = 2d), and recomputes U in
the backward pass (one more x W₁ᵀ product per block and step: memory bought with time).
Where x is LN₂'s output (pre-LN), not even x is kept: it is rebuilt in the backward pass
from the x̂ that LayerNorm keeps for its own gradient (``primitives.LNOutput``).
H lives only inside the forward; in the backward GELU'(U) is formed in U's buffer. The
same numbers as ``linear(gelu(linear(x, W₁, b₁)), W₂, b₂)``, bit for bit with any BLAS:
every product is the same call on the same whole arrays (a product split into row blocks
can round differently: OpenBLAS's AVX2 kernel does), the element-wise work is blocked.
"""
from __future__ import annotations

import numpy as onp
from autograd.extend import defvjp_argnums, primitive

from .primitives import (_GELU_A, _GELU_C, _add_bias_rows, _blocks, _gelu_derivative_into, _gelu_erf_blocks,
                         _gelu_tanh, _row_step, _linear_vjp_W, _linear_vjp_b, _linear_vjp_x, _scratch, input_again, linear)


_SLOT = [None, None]  # (H, GELU'(U)) of the last forward, taken by the VJP maker built for that H


#: numbers per block here: half of primitives' _BLOCK, as each block makes a few block-sized temporaries
_FF_BLOCK = 1 << 15


@primitive
def linear_gelu(x, W, b):
    """H = GELU(x Wᵀ + b), tanh form, with GELU'(x Wᵀ + b) kept for the backward pass.

    x: (..., d_in), W: (d_out, d_in), b: (d_out,)  ->  H: (..., d_out).
    Gradient, with dU = g ⊙ GELU'(U):  ∂L/∂x = dU W,  ∂L/∂W = dUᵀ x,  ∂L/∂b = Σ_rows dU.
    """
    H = linear.fun(x, W)  # x Wᵀ, this node's own buffer: + b, then H, block by block
    D = onp.empty_like(H)  # GELU'(U)
    _gelu_in_place(H, D, b)
    _SLOT[:] = H, D
    return H


def _gelu_in_place(H, D=None, b=None):
    """U -> GELU(U) (tanh form) in U's own buffer, in blocks of ``_FF_BLOCK`` numbers (whole
    rows when b is given), with GELU'(U) written into D when given: the operations of ``gelu``
    and of its derivative, in their order, so the bits of ``gelu(U)`` and of its VJP's GELU'(U).
    b: None, or a bias (H.shape[-1],) added to each block first while it is in cache (H = x Wᵀ
    on entry: U = x Wᵀ + b, the numbers of ``linear``'s own ``+= b``, without a pass of its own)."""
    if D is not None:
        return _gelu_blocks(H, D, b=b)
    Hf = H.reshape(-1)
    n = H.shape[-1] if H.ndim else 1
    for sl in _blocks(Hf.shape[0], type(H) is not onp.ndarray, _row_step(_FF_BLOCK, n, b)):
        u = Hf[sl]
        _add_bias_rows(u, b, n)  # U = x Wᵀ + b, this block
        t = _gelu_tanh(u)
        y = t + 1.0  # as gelu: ½ u (1 + t)
        y *= u
        y *= 0.5
        u[...] = y


def _gelu_blocks(U, D=None, b=None, G=None):
    """U -> GELU(U) in U's own buffer with GELU'(U) written into D (``linear_gelu``'s forward),
    or, with D None, U -> GELU'(U) in U's own buffer (``frozen_mlp``'s backward); block by block
    (``_FF_BLOCK`` numbers), each block's chain (``_gelu_block``) through three scratch rows:
    no other temporary, no copy.  Two more steps may join each block while it is in cache:
    ``b`` (U.shape[-1],), a bias added to U first (U = x W₁ᵀ, then + b₁: the numbers of
    ``linear``'s own ``+= b``; blocks are then whole rows), and, with D None, ``G``, an array of
    U's shape multiplied by GELU'(U) in place (gelu's VJP, G ⊙ GELU'(U))."""
    Uf = U.reshape(-1)
    Df = None if D is None else D.reshape(-1)
    host_c = G is not None and type(G) is onp.ndarray and G.flags.c_contiguous
    Gf = G.reshape(-1) if host_c else None  # a view, written through (a device: one block, G *= U after it)
    n = U.shape[-1] if U.ndim else 1
    sls = _blocks(Uf.shape[0], type(U) is not onp.ndarray, _row_step(_FF_BLOCK, n, b))
    rows = _scratch(Uf, 3, min(sls[0].stop, Uf.shape[0])) if sls else ()
    for sl in sls:
        u = Uf[sl]
        t, s, w = (r[:u.shape[0]] for r in rows)
        _add_bias_rows(u, b, n)  # U = x W₁ᵀ + b₁, this block
        if Df is not None:
            _gelu_block(u, t, s, w, Df[sl])
            continue
        _gelu_block(u, t, s, w, u, value=False)
        if Gf is not None:
            Gf[sl] *= u  # G ⊙ GELU'(U), this block
    if G is not None and Gf is None:  # a strided or device G: one pass at the end
        G *= U
    return U


def _gelu_block(u, t, s, w, d, value=True):
    """One block u of U (tanh form), through the scratch rows t, s, w (u's size):
    t = tanh(√(2/π)(u + 0.044715 u³)), then GELU'(u) into d (u itself when not ``value``), then,
    when ``value``, GELU(u) = ½ u (1 + t) over u. u² is formed once, for t and for GELU'; every
    other rounded operation is that of ``_gelu_tanh``, ``_gelu_derivative_into`` and ``gelu``, in
    their order, so their bits."""
    onp.multiply(u, u, out=w)  # u², kept for GELU'
    onp.multiply(w, u, out=t)  # u³
    t *= _GELU_A
    t += u
    t *= _GELU_C
    onp.tanh(t, out=t)  # t
    _gelu_derivative_into(u, t, d, s, w, squared=True)  # d may be u: read for the last time there
    if value:
        onp.add(t, 1.0, out=s)
        onp.multiply(s, u, out=u)
        u *= 0.5  # GELU(u) = ½ u (1 + t), over u


def linear_gelu_values(x, W, b, exact=False):
    """H = GELU(x Wᵀ + b) in a forward pass with nothing traced (no GELU' is formed).

    x: (..., d_in), W: (d_out, d_in), b: (d_out,)  ->  H: (..., d_out).  exact: the erf form
    (``gelu_erf``), else the tanh form (``gelu``).  One buffer of the hidden size: U = x Wᵀ is
    ``linear``'s own product, and H is written over it block by block (erf: b is added to each
    block while it is in cache, rather than in a pass of its own). The same numbers as
    ``gelu_erf(linear(x, W, b))`` / ``gelu(linear(x, W, b))``, bit for bit.
    """
    if not exact:
        H = linear.fun(x, W)  # x Wᵀ (..., d_out): + b and GELU, block by block, in its buffer
        _gelu_in_place(H, b=b)
        return H
    U = linear.fun(x, W)  # x Wᵀ (..., d_out), no bias yet
    return _gelu_erf_blocks(U, U, b=b)


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


# ------------------------------------------------------------ the whole MLP, frozen
@primitive
def frozen_mlp(x, W1, b1, W2, b2):
    """The MLP, M = GELU(x W₁ᵀ + b₁) W₂ᵀ + b₂ (tanh GELU), as one node for frozen weights.

    x: (..., d), W1: (d_ff, d), b1: (d_ff,), W2: (d_out, d_ff), b2: (d_out,)  ->  (..., d_out).
    Gradient (x only; W₁, b₁, W₂, b₂ are constants), with U = x W₁ᵀ + b₁ recomputed:
        ∂L/∂x = ((g W₂) ⊙ GELU'(U)) W₁.
    The products are ``linear``'s own calls on the whole arrays (so its bits with any BLAS);
    GELU and GELU' run in place, in blocks (in the backward pass + b₁, GELU' and the product
    with g W₂ join in each block: element-wise, so the same numbers).
    """
    H = linear.fun(x, W1)  # x W₁ᵀ (..., d_ff), this node's own buffer
    _gelu_in_place(H, b=b1)  # U = x W₁ᵀ + b₁, then H = GELU(U), block by block in its buffer
    return linear.fun(H, W2, b2)  # (..., d_out); H is freed on return


def _frozen_mlp_vjp(argnums, ans, args, kwargs):
    if tuple(argnums) != (0,):
        raise ValueError("frozen_mlp: only x is differentiable (W1, b1, W2, b2 must be constants); "
                         "differentiate the weights through linear_gelu and linear")
    x, W1, b1, W2, b2 = args
    dx_of = _linear_vjp_x(None, x, W1)  # linear's ∂L/∂x = ∂L/∂U W₁
    # x is LN₂'s output in a pre-LN block: rebuilt in the backward pass from the x̂ LayerNorm keeps
    # anyway (primitives.input_again), so nothing of x's size is held here; otherwise x is held
    # ((..., d), half the size of the GELU'(U) it replaces)
    x_again = input_again(x)

    def vjp(g):
        xb = x_again()  # x, bit for bit
        D = linear.fun(xb, W1)  # the forward's x W₁ᵀ, recomputed (the same product, the same bits)
        del xb
        dH = _linear_vjp_x(None, D, W2)(g)  # linear's ∂L/∂H = g W₂, of H's shape (..., d_ff)
        del g  # handed over by the backward pass: freed before the products below
        _gelu_blocks(D, b=b1, G=dH)  # block by block: U = x W₁ᵀ + b₁, GELU'(U), ∂L/∂U = ∂L/∂H ⊙ GELU'(U)
        del D
        return (dx_of(dH),)  # linear's ∂L/∂x = ∂L/∂U W₁

    return vjp


defvjp_argnums(frozen_mlp, _frozen_mlp_vjp)

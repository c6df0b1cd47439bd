"""Several projections of one input as one GEMM (equations.md, "Transformer"): attention's
Q, K, V, all read from the same h = LN₁(X).

    [Y_1 | … | Y_n] = x [W_1; …; W_n]ᵀ + [b_1 | … | b_n]        Y_i = x W_iᵀ + b_i

``linear_stacked`` computes the left side as one node (one matrix product on the stacked
weights) and ``column_block`` hands out each Y_i as a view of its columns; their readable
twin is ``linear_stacked_composed``, one ``linear`` per projection. Same numbers in the
forward pass, bit for bit: column block i of x [W_1; …]ᵀ is the same dot products, in the
same order, as x W_iᵀ (the BLAS computes every output column on its own; tests check it on
the benchmark's and MiniLM's shapes, float32 and float64), and each b_i is added to its own
block as ``linear`` adds it.

Gradient, with G = [G_1 | … | G_n] = ∂L/∂[Y_1 | …] (the column blocks' cotangents, summed
side by side into one (…, Σd_i) array: ``column_block``'s VJP adds its block in place):
    ∂L/∂x = G [W_1; …; W_n]          (one product; composed: Σ_i G_i W_i, three products and
                                      two sums — the same value, rounded differently)
    ∂L/∂W_i = G_iᵀ x                  (one product Gᵀ x when every W_i is differentiated, its
                                      row blocks; else one per W_i)
    ∂L/∂b_i = Σ_rows G_i

No cache: the stack [W_1; …; W_n] is concatenated at every call, from whatever arrays are
passed (a trainable W is a fresh array every step; a frozen one may have been merged into or
written in place), so a stale stack cannot exist. The copy is d_in·Σd_i numbers against the
product's M·d_in·Σd_i multiply-adds; ``stack_pays`` says when the product is big enough for
the saving to cover it.
"""
from __future__ import annotations

import numpy as onp
from autograd.core import SparseObject, vspace
from autograd.extend import defvjp_argnums, primitive

from .primitives import _Stash, _col_sum, linear

_QKV = _Stash()  # the stacked weights of the last forward, for its ∂L/∂x

#: fewest rows M = B·T for which one stacked product is used (``stack_pays``): below it the
#: copy of the weights costs about what the wider product saves (benchmarks/gemm_rates.py
#: times the two layouts at the benchmark's and MiniLM's shapes)
MIN_ROWS = 512


def stack_pays(x) -> bool:
    """Whether x (…, d_in) has enough rows (``MIN_ROWS``) for ``linear_stacked`` to be faster
    than one ``linear`` per projection."""
    return x.size // max(x.shape[-1], 1) >= MIN_ROWS


def _split(args):
    n = (len(args) - 1) // 2
    return args[0], args[1:1 + n], args[1 + n:]


@primitive
def linear_stacked(x, *weights_then_biases):
    """[x W_1ᵀ + b_1 | … | x W_nᵀ + b_n] as one product on the stacked weights.

    Called as ``linear_stacked(x, W_1, …, W_n, b_1, …, b_n)``: x (…, d_in), W_i (d_i, d_in),
    b_i (d_i,) or None  ->  (…, d_1 + … + d_n). Gradient: the module docstring.
    """
    _, Ws, bs = _split((x,) + weights_then_biases)
    S = onp.concatenate(Ws)  # (Σd_i, d_in)
    x2 = x.reshape(-1, x.shape[-1])  # (M, d_in)
    Y = x2 @ S.T  # (M, Σd_i)
    if any(b is not None for b in bs):  # as linear: y += b, every block's b in one contiguous pass
        Y += onp.concatenate([onp.zeros_like(W[:, 0]) if b is None else b for W, b in zip(Ws, bs)])
    return _QKV.put(Y.reshape(x.shape[:-1] + (S.shape[0],)), S)


def _linear_stacked_vjp(argnums, ans, args, kwargs):
    x, Ws, bs = _split(args)
    n = len(Ws)
    S = _QKV.take(ans)
    if S is None:  # an untraced forward in between: the same stack again
        S = onp.concatenate(Ws)
    edges = onp.cumsum([0] + [W.shape[0] for W in Ws])
    wanted_W = [i for i in range(n) if 1 + i in argnums]
    x2 = x.reshape(-1, x.shape[-1]) if wanted_W else None  # ∂W reads x; ∂x alone needs only S
    if x2 is not None and type(x2) is onp.ndarray and not x2.flags.c_contiguous:
        x2 = x2.copy()  # as linear's dW: a compact copy, not a view of a larger base
    if 0 not in argnums:
        S = None
    shape = x.shape

    def vjp(g):
        g2 = g.reshape(-1, g.shape[-1])  # (M, Σd_i)
        out = {}
        if 0 in argnums:
            out[0] = (g2 @ S).reshape(shape)  # Σ_i G_i W_i in one product
        if len(wanted_W) == n:
            dS = g2.T @ x2  # (Σd_i, d_in): every ∂W_i, as row blocks (C-contiguous views)
            out.update((1 + i, dS[edges[i]:edges[i + 1]]) for i in range(n))
        else:
            out.update((1 + i, g2[:, edges[i]:edges[i + 1]].T @ x2) for i in wanted_W)
        for i in range(n):
            if 1 + n + i in argnums:
                out[1 + n + i] = _col_sum(g2[:, edges[i]:edges[i + 1]])  # (d_i,)
        return tuple(out[i] for i in argnums)

    return vjp


defvjp_argnums(linear_stacked, _linear_stacked_vjp)


@primitive
def column_block(Y, lo, hi):
    """Y[..., lo:hi], a view of columns lo..hi-1 (one projection's output).  (…, D) -> (…, hi - lo).

    Its VJP adds the cotangent into its block of one shared (…, D) accumulator (autograd's
    sparse cotangent), so the blocks of one ``linear_stacked`` output meet side by side in
    one array, with no (…, D) array of zeros per block."""
    return Y[..., lo:hi]


def _column_block_vjp(argnums, ans, args, kwargs):
    if tuple(argnums) != (0,):
        raise ValueError("column_block: lo and hi are not differentiable")
    Y, lo, hi = args
    vs = vspace(Y)

    def vjp(g):
        def mut_add(A):
            A[..., lo:hi] += g
            return A

        return (SparseObject(vs, mut_add),)

    return vjp


defvjp_argnums(column_block, _column_block_vjp)


def linear_split(x, Ws, bs):
    """(x W_1ᵀ + b_1, …, x W_nᵀ + b_n) from one ``linear_stacked`` product: each a column view.
    x (…, d_in), Ws, bs: sequences of n weights (d_i, d_in) and biases (d_i,) or None."""
    Y = linear_stacked(x, *Ws, *bs)
    edges = onp.cumsum([0] + [W.shape[0] for W in Ws])
    return tuple(column_block(Y, int(edges[i]), int(edges[i + 1])) for i in range(len(Ws)))


def linear_stacked_composed(x, Ws, bs):
    """The readable twin of ``linear_split``: (linear(x, W_1, b_1), …), one node per projection."""
    return tuple(linear(x, W, b) for W, b in zip(Ws, bs))

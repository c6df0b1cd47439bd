"""autograd's own VJPs of indexing and reshaping, re-registered to hold a shape, not an array.

Stock autograd 1.9 writes the VJP of ``A[idx]`` as ``lambda g: untake(g, idx, vspace(A))``
and that of ``reshape(x, s)`` (and ravel, expand_dims, squeeze) as
``lambda g: reshape(g, shape(x))``: the closure refers to the input itself, only to read
its shape and dtype when the backward pass runs. So ``pool``'s ``X[:, 0]`` (the CLS row)
keeps the whole (B, T, d) output of LN_f alive until the backward pass, for a gradient
that needs (B, d) numbers and X's shape (the same leak ``linear``'s dX VJP had; see
primitives.py). The replacements below compute the same cotangents — the same calls
on g, so the same bits — from the shape and dtype taken when the VJP is built.

The scatter itself (``A[idx]``'s cotangent: zeros, g added at idx) is ``_scatter_add``
on NumPy: the same additions in the same order as stock's ``onp.add.at`` (the same bits),
without its per-index cost, which in full fine-tuning is the token-embedding gradient of
every step (W_tok[ids]: B·n rows of d) and the token-type one (all B·n into one row).

``x + y`` and ``x − y`` (the residual adds): stock passes each cotangent through
``unbroadcast``, a few NumPy calls per operand even when the operand has the answer's
shape and nothing is summed. ``_same_shape_or_unbroadcast`` hands such a g on as it is
(what stock's loop returns for it) and keeps stock's ``unbroadcast`` for the others.

``untake`` and ``reshape`` are looked up in autograd's modules when the backward pass
runs, so the device patches of ``minipeft.cupy_patches`` (which replace ``untake``)
still apply. Pinned to autograd 1.9.x, as cupy_patches is.
"""
from __future__ import annotations

import autograd.numpy as anp
import numpy as onp
import autograd.numpy.numpy_vjps as av
from autograd.core import SparseObject, vspace
from autograd.extend import defvjp
from autograd.numpy.numpy_boxes import ArrayBox
from autograd.util import func


def _getitem_vjp(ans, A, idx):
    vs = vspace(A)  # shape and dtype now; A itself is not held
    kind = _index_kind(idx)

    def vjp(g):  # zeros of A's space, g added at idx
        if kind is None or type(g) is not onp.ndarray or g.dtype != vs.dtype:
            return av.untake(g, idx, vs)  # stock (and the device patches; a traced g: higher order)
        return SparseObject(vs, lambda Z: _scatter_add(Z, idx, g, kind))

    return vjp


#: a row of W indexed more often than this in one gather (a [CLS] or [PAD] id, token type 0)
#: is summed by one sequential reduction instead of one round per occurrence
_HEAVY = 8
#: rows narrower than this go to ``onp.add.at`` (its per-index cost is then below the rounds' per-call cost)
_MIN_WIDTH = 32


def _index_kind(idx):
    """"basic" (ints, slices, Ellipsis, None: every element of A at most once), "rows" (one
    integer array indexing axis 0) or None (anything else: stock ``onp.add.at``)."""
    basic = (int, onp.integer, slice, type(Ellipsis), type(None))
    if isinstance(idx, basic) and not isinstance(idx, bool) or (
            isinstance(idx, tuple) and all(isinstance(i, basic) and not isinstance(i, bool) for i in idx)):
        return "basic"
    if type(idx) is onp.ndarray and idx.dtype.kind in "iu":
        return "rows"
    return None


def _scatter_add(A, idx, g, kind):
    """``onp.add.at(A, idx, g)`` with the same sums in the same order (the same bits), faster:
    A[idx[k]] += g[k] for k = 0, 1, … in turn.

        basic   A[idx] += g: no element is addressed twice, so each gets one addition.
        rows    rows of A hit once or a few times (≤ _HEAVY): round j adds every such row's
                j-th occurrence (a fancy-index add whose indices are distinct); a heavier
                row r: A[r] ← Σ over [A[r]; g rows in order] by one add.reduce along axis 0,
                which adds row after row (sequential, not pairwise, for rows of ≥ 2 numbers).
    Falls back to ``onp.add.at`` where these do not hold (A not C-contiguous) or do not pay
    (rows of fewer than ``_MIN_WIDTH`` numbers).
    """
    if kind == "basic":
        A[idx] += g
        return A
    V = A.shape[0] if A.ndim else 0
    width = A[0].size if V else 0
    if not A.flags.c_contiguous or width < _MIN_WIDTH or idx.size == 0:
        onp.add.at(A, idx, g)
        return A
    i = idx.reshape(-1).astype(onp.intp, copy=False)
    i = onp.where(i < 0, i + V, i)  # one name per row (add.at takes negative indices too)
    x, A2 = g.reshape(i.size, width), A.reshape(V, width)  # views
    order = onp.argsort(i, kind="stable")  # occurrences of a row stay in their order
    s = i[order]
    starts = onp.flatnonzero(onp.r_[True, s[1:] != s[:-1]])
    counts = onp.diff(onp.r_[starts, s.size])
    heavy = counts > _HEAVY
    for st, c in zip(starts[heavy].tolist(), counts[heavy].tolist()):
        r = s[st]
        A2[r] = onp.add.reduce(onp.concatenate([A2[r][None], x[order[st:st + c]]]), axis=0)
    starts, counts = starts[~heavy], counts[~heavy]
    for j in range(int(counts.max()) if counts.size else 0):
        sel = starts[counts > j] + j
        A2[s[sel]] += x[order[sel]]
    return A


def _reshape_back(x, order=None):
    shape = anp.shape(x)  # a tuple now; x itself is not held
    return lambda g: anp.reshape(g, shape, order=order)


def _same_shape_or_unbroadcast(target, f=None):
    """The VJP of an operand ``target`` of a broadcasting add or subtract: g ↦ unbroadcast(f(g))
    (f the identity or negation), with g's own array when its shape is the target's and has no
    size-1 axis (stock then sums nothing and returns g; over a size-1 axis its sum turns −0 into
    +0, so those keep stock's path), and there is nothing complex to drop."""
    meta = anp.metadata(target)  # shape, ndim, dtype, complex: target itself is not held
    shape, complex_ok = meta[0], meta[3]
    same = 1 not in shape

    def vjp(g):
        g = g if f is None else f(g)
        if same and type(g) is onp.ndarray and g.shape == shape and (complex_ok or g.dtype.kind != "c"):
            return g
        return av.unbroadcast(g, meta)

    return vjp


defvjp(func(ArrayBox.__getitem__), _getitem_vjp)
defvjp(anp.add, lambda ans, x, y: _same_shape_or_unbroadcast(x), lambda ans, x, y: _same_shape_or_unbroadcast(y))
defvjp(anp.subtract, lambda ans, x, y: _same_shape_or_unbroadcast(x),
       lambda ans, x, y: _same_shape_or_unbroadcast(y, anp.negative))
defvjp(anp.reshape, lambda ans, x, shape, order=None: _reshape_back(x, order))
defvjp(anp.ravel, lambda ans, x, order=None: _reshape_back(x, order))
defvjp(anp.expand_dims, lambda ans, x, axis: _reshape_back(x))
defvjp(anp.squeeze, lambda ans, x, axis=None: _reshape_back(x))

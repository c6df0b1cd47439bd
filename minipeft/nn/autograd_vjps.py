"""autograd's own VJPs of indexing and reshaping, re-registered to hold a shape, not an array.

Stock autograd 1.9 writes the VJP of ``A[idx]`` as ``lambda g: untake(g, idx, vspace(A))``
and that of ``reshape(x, s)`` (and ravel, expand_dims, squeeze) as
``lambda g: reshape(g, shape(x))``: the closure refers to the input itself, only to read
its shape and dtype when the backward pass runs. So ``pool``'s ``X[:, 0]`` (the CLS row)
keeps the whole (B, T, d) output of LN_f alive until the backward pass, for a gradient
that needs (B, d) numbers and X's shape (the same leak ``linear``'s dX VJP had; see
primitives.py). The replacements below compute the same cotangents — the same calls
on g, so the same bits — from the shape and dtype taken when the VJP is built.

``untake`` and ``reshape`` are looked up in autograd's modules when the backward pass
runs, so the device patches of ``minipeft.cupy_patches`` (which replace ``untake``)
still apply. Pinned to autograd 1.9.x, as cupy_patches is.
"""
from __future__ import annotations

import autograd.numpy as anp
import autograd.numpy.numpy_vjps as av
from autograd.core import vspace
from autograd.extend import defvjp
from autograd.numpy.numpy_boxes import ArrayBox
from autograd.util import func


def _getitem_vjp(ans, A, idx):
    vs = vspace(A)  # shape and dtype now; A itself is not held
    return lambda g: av.untake(g, idx, vs)  # zeros of A's space, g added at idx


def _reshape_back(x, order=None):
    shape = anp.shape(x)  # a tuple now; x itself is not held
    return lambda g: anp.reshape(g, shape, order=order)


defvjp(func(ArrayBox.__getitem__), _getitem_vjp)
defvjp(anp.reshape, lambda ans, x, shape, order=None: _reshape_back(x, order))
defvjp(anp.ravel, lambda ans, x, order=None: _reshape_back(x, order))
defvjp(anp.expand_dims, lambda ans, x, axis: _reshape_back(x))
defvjp(anp.squeeze, lambda ans, x, axis=None: _reshape_back(x))

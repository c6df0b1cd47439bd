"""Gradients of a scalar function of a tree θ, one autograd root per leaf.

``autograd.grad`` of a function of a dict boxes the whole container: every leaf access
then builds a zero copy of the container on the way back, O(P²) in the number of leaves
P (harmless for PEFT's handful of tensors, costly for full fine-tuning; benchmarks/bench.py
measures it). Here each leaf gets its own root node, the tree handed to
the function is a plain dict of ArrayBoxes, and the backward pass keeps the cotangent
that reaches each root: O(P). Each node's VJP closure is dropped once it has run, so the
activations it held are freed during the backward pass, not after it (autograd's own
``backward_pass`` keeps them all until the end); a node's cotangent is handed to its
VJP without a second reference, and what the VJP returns is dropped before the next runs.
Where a node feeds several others (the residual stream, LN₁'s output read by q, k and v), their
contributions are summed into a buffer nothing else holds (``_accumulate``), not into a new one.
Pinned to autograd 1.9's tracer (``trace_stack``, ``new_box``, ``VJPNode.new_root``, ``toposort``,
``add_outgrads``, ``vspace``) and to CPython's reference counts (``sys.getrefcount``).
"""
from __future__ import annotations

import sys

import numpy as onp
from autograd.core import VJPNode, add_outgrads, vspace
from autograd.tracer import isbox, new_box, toposort, trace_stack

from .tree import leaves, rebuild

#: the references an array has, as ``_accumulate`` looks at it, when nothing else holds it: the
#: first contribution, p: the (cotangent, mutable) pair in the backward pass's table, the name p,
#: ``sys.getrefcount``'s argument; the new one, g: the caller's name for it, the name g, the argument
_OWNED_REFS = 3


def _owned(a, like) -> bool:
    """Whether ``_accumulate`` may add into a's own buffer: a writeable host NumPy array of the
    sum's shape and dtype (``like``: the other term) that nothing else holds, and that owns its
    memory or is a whole reshaped view of an array held by it alone (a product's 2-D output
    seen as (B, T, d))."""
    if (type(a) is not onp.ndarray or not a.flags.writeable or a.shape != like.shape
            or a.dtype != onp.result_type(a, like) or sys.getrefcount(a) > _OWNED_REFS + 1):
        return False
    b = a.base
    # b's references: a's .base, the name b, getrefcount's argument
    return b is None or (type(b) is onp.ndarray and b.base is None and b.dtype == a.dtype and b.size == a.size
                         and a.flags.c_contiguous and sys.getrefcount(b) <= 3)


def _accumulate(prev, g):
    """A node's cotangent so far plus one more contribution g (autograd's ``add_outgrads``:
    ∂L/∂x = Σ over x's consumers of their contributions), as the (sum, mutable) pair it keeps.

    autograd adds the second contribution into a new array and only the third and later in
    place. Here the second goes into the buffer of the first, or else of the new one, when
    nothing else can see that buffer (``_owned``: a VJP that handed the same array to two
    parents, kept it, or viewed it raises its reference count, and gets autograd's new array).
    p + g = g + p exactly, so the same bits; one (B, T, d) allocation and pass fewer per fan-out."""
    if _IN_PLACE and prev is not None and not prev[1] and type(g) is onp.ndarray and type(prev[0]) is onp.ndarray:
        p = prev[0]
        if _owned(p, g):  # (+1: the name ``a`` in _owned)
            p += g
            return p, True
        del p
        if _owned(g, prev[0]):
            g += prev[0]
            return g, True
    return add_outgrads(prev, g)


def _counts_hold() -> bool:
    """Whether this interpreter's reference counts tell a held array from a lone one the way
    ``_owned`` assumes (CPython's): ``_accumulate`` itself, called as the backward pass calls it,
    must add into a lone first term, into a lone new term, and into neither when both are held
    once more elsewhere. If not (another implementation, a CPython that counts some references
    differently), every sum is autograd's own."""
    if not hasattr(sys, "getrefcount"):
        return False
    lone, g = (onp.zeros(2), False), onp.ones(2)
    into_first = _accumulate(lone, g)[0] is lone[0]
    arr, g2 = onp.zeros(2), onp.ones(2)
    extra = [g2]  # a second reference to g2 (arr's is the name arr)
    out = _accumulate((arr, False), g2)[0]
    into_neither = out is not arr and out is not extra[0]
    g3 = onp.ones(2)
    into_new = _accumulate((arr, False), g3)[0] is g3
    return into_first and into_neither and into_new and arr.tolist() == [0.0, 0.0] and g2.tolist() == [1.0, 1.0]


_IN_PLACE = True  # (for the probe's own calls)
_IN_PLACE = _counts_hold()  # False: ``_accumulate`` is autograd's ``add_outgrads``


def value_and_grad(fun, theta):
    """Return (fun(θ), ∂fun/∂θ), the gradient a tree with θ's nesting.

    fun: tree -> scalar (0-d array or float). Leaves of θ that ``fun`` does not use get
    zero gradients. Works for any number of leaves in O(P) bookkeeping.
    """
    flat = leaves(theta)
    roots = [VJPNode.new_root() for _ in flat]
    with trace_stack.new_trace() as t:
        end = fun(rebuild(theta, [new_box(leaf, t, node) for leaf, node in zip(flat, roots)]))
        traced = isbox(end) and end._trace == t
    if not traced:
        return end, rebuild(theta, [vspace(leaf).zeros() for leaf in flat])
    value, end_node = end._value, end._node
    root_index = {id(node): i for i, node in enumerate(roots)}
    found = [None] * len(roots)
    outgrads = {end_node: (vspace(value).ones(), False)}
    for node in toposort(end_node):
        i = root_index.get(id(node))
        if i is not None:
            found[i] = outgrads.pop(node)[0]
            continue
        # the cotangent is handed over, not kept here: a VJP that is done with it can free it;
        # the closure is dropped once it has run, so its activations free as we go
        ingrads, node.vjp = list(node.vjp(outgrads.pop(node)[0])), None
        for i, parent in enumerate(node.parents):
            ingrad, ingrads[i] = ingrads[i], None  # held by this name alone (``_accumulate`` may add into it)
            outgrads[parent] = _accumulate(outgrads.get(parent), ingrad)
        ingrads = ingrad = None  # else this node's cotangents stay alive through the next node's VJP
    return value, rebuild(theta, [g if g is not None else vspace(leaf).zeros() for leaf, g in zip(flat, found)])

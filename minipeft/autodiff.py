"""Gradients of a scalar function of a tree θ, one autograd root per leaf.

``autograd.grad`` of a function of a dict boxes the whole container: every leaf access
then builds a zero copy of the container on the way back, O(P²) in the number of leaves
P (harmless for PEFT's handful of tensors, costly for full fine-tuning; benchmarks/bench.py
measures it). Here each leaf gets its own root node, the tree handed to
the function is a plain dict of ArrayBoxes, and the backward pass keeps the cotangent
that reaches each root: O(P). Each node's VJP closure is dropped once it has run, so the
activations it held are freed during the backward pass, not after it (autograd's own
``backward_pass`` keeps them all until the end); a node's cotangent is handed to its
VJP without a second reference, and what the VJP returns is dropped before the next runs. Pinned to autograd 1.9's tracer (``trace_stack``,
``new_box``, ``VJPNode.new_root``, ``toposort``, ``add_outgrads``, ``vspace``).
"""
from __future__ import annotations

from autograd.core import VJPNode, add_outgrads, vspace
from autograd.tracer import isbox, new_box, toposort, trace_stack

from .tree import leaves_with_paths, map_leaves


def value_and_grad(fun, theta):
    """Return (fun(θ), ∂fun/∂θ), the gradient a tree with θ's nesting.

    fun: tree -> scalar (0-d array or float). Leaves of θ that ``fun`` does not use get
    zero gradients. Works for any number of leaves in O(P) bookkeeping.
    """
    pairs = leaves_with_paths(theta)
    roots = [VJPNode.new_root() for _ in pairs]
    with trace_stack.new_trace() as t:
        boxes = {p: new_box(leaf, t, node) for (p, leaf), node in zip(pairs, roots)}
        end = fun(map_leaves(lambda p, _: boxes[p], theta))
        traced = isbox(end) and end._trace == t
    if not traced:
        return end, map_leaves(lambda p, leaf: vspace(leaf).zeros(), theta)
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
        ingrads, node.vjp = node.vjp(outgrads.pop(node)[0]), None
        for parent, ingrad in zip(node.parents, ingrads):
            outgrads[parent] = add_outgrads(outgrads.get(parent), ingrad)
        ingrads = ingrad = None  # else this node's cotangents stay alive through the next node's VJP
    grads = {p: (g if g is not None else vspace(leaf).zeros()) for (p, leaf), g in zip(pairs, found)}
    return value, map_leaves(lambda p, _: grads[p], theta)

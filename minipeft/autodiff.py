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

from .tree import leaves, rebuild


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
        ingrads, node.vjp = node.vjp(outgrads.pop(node)[0]), None
        for parent, ingrad in zip(node.parents, ingrads):
            outgrads[parent] = add_outgrads(outgrads.get(parent), ingrad)
        ingrads = ingrad = None  # else this node's cotangents stay alive through the next node's VJP
    return value, rebuild(theta, [g if g is not None else vspace(leaf).zeros() for leaf, g in zip(flat, found)])

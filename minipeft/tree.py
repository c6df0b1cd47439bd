"""Parameters as nested dicts and lists of arrays: paths, split/combine, get/replace, counting.

A *path* names a leaf: ``("blocks", 0, "attn", "W_q")``. ``split`` partitions a tree
into θ (the leaves a predicate selects: what trains) and φ (the rest: frozen); both keep
the original nesting, lists keep their length and an emptied dict stays ``{}``, so
``combine(θ, φ)`` rebuilds the tree. These functions work on plain containers and on
autograd's DictBox/SequenceBox (what a dict or list becomes inside ``autograd.grad``:
``isinstance(x, dict)`` is False there), so they are safe to call on traced values.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as onp
from autograd.builtins import DictBox, SequenceBox

Path = tuple


def _is_dict(x) -> bool:
    return isinstance(x, (dict, DictBox))


def _is_seq(x) -> bool:
    return isinstance(x, (list, tuple, SequenceBox))


def leaves_with_paths(tree, prefix: Path = ()) -> list[tuple[Path, Any]]:
    """All (path, leaf) pairs, depth first, dict keys in insertion order."""
    out = []
    _collect(tree, prefix, out)
    return out


# The walks below test the exact types first (dict, list, tuple, ndarray: what a step's trees
# hold) and ask isinstance (subclasses, autograd's boxes) only for anything else; a training step
# walks θ, its gradient and Adam's state several times, so this is most of their cost.
def _collect(node, prefix, out):
    t = type(node)
    if t is dict or (t is not onp.ndarray and t is not list and t is not tuple and _is_dict(node)):
        for k in node.keys():
            _collect(node[k], prefix + (k,), out)
    elif t is list or t is tuple or (t is not onp.ndarray and _is_seq(node)):
        for i, c in enumerate(node):
            _collect(c, prefix + (i,), out)
    else:
        out.append((prefix, node))


def map_leaves(fn: Callable, tree, prefix: Path = ()):
    """The same nesting with every leaf replaced by ``fn(path, leaf)``."""
    t = type(tree)
    if t is dict or (t is not onp.ndarray and t is not list and t is not tuple and _is_dict(tree)):
        return {k: map_leaves(fn, tree[k], prefix + (k,)) for k in tree.keys()}
    if t is list or t is tuple or (t is not onp.ndarray and _is_seq(tree)):
        return [map_leaves(fn, c, prefix + (i,)) for i, c in enumerate(tree)]
    return fn(prefix, tree)


def leaves(tree) -> list:
    """The leaves alone, in ``leaves_with_paths``' order (no path tuples built: the walk a
    training step repeats on θ, its gradient and Adam's state)."""
    out = []
    _gather(tree, out)
    return out


def _gather(node, out):
    t = type(node)
    if t is onp.ndarray:
        out.append(node)
    elif t is dict:
        for c in node.values():
            _gather(c, out)
    elif t is list or t is tuple:
        for c in node:
            _gather(c, out)
    elif _is_dict(node):
        for k in node.keys():
            _gather(node[k], out)
    elif _is_seq(node):
        for c in node:
            _gather(c, out)
    else:
        out.append(node)


def rebuild(tree, new_leaves):
    """``tree``'s nesting with its leaves replaced, in ``leaves`` order, by ``new_leaves``
    (a sequence of exactly as many): ``map_leaves`` without paths.
    ``rebuild(t, leaves(t))`` is a copy of t's containers sharing its leaves."""
    it = iter(new_leaves)
    out = _rebuild(tree, it)
    if next(it, _END) is not _END:
        raise ValueError("rebuild: more new leaves than the tree has")
    return out


_END = object()


def _rebuild(node, it):
    t = type(node)
    if t is dict:
        return {k: _rebuild(c, it) for k, c in node.items()}
    if t is not onp.ndarray:
        if t is list or t is tuple or (not _is_dict(node) and _is_seq(node)):
            return [_rebuild(c, it) for c in node]
        if _is_dict(node):
            return {k: _rebuild(node[k], it) for k in node.keys()}
    leaf = next(it, _END)
    if leaf is _END:
        raise ValueError("rebuild: fewer new leaves than the tree has")
    return leaf


def split(params, predicate: Callable[[Path, Any], bool]):
    """Partition ``params`` into (θ, φ): θ holds the leaves with ``predicate(path, leaf)``.

    Both keep the nesting of ``params`` (lists keep their length, an empty dict stays).
    ``combine(θ, φ)`` gives back ``params``.
    """

    def go(node, prefix):
        if _is_dict(node):
            th, ph = {}, {}
            for k in node.keys():
                a, b = go(node[k], prefix + (k,))
                if a is not None:
                    th[k] = a
                if b is not None:
                    ph[k] = b
            return th, ph
        if _is_seq(node):
            pairs = [go(c, prefix + (i,)) for i, c in enumerate(node)]
            return [a if a is not None else {} for a, _ in pairs], [b if b is not None else {} for _, b in pairs]
        return (node, None) if predicate(prefix, node) else (None, node)

    return go(params, ())


def combine(theta, phi):
    """The union of two trees from ``split`` (θ's leaf wins where both have one)."""
    if _is_dict(theta) and _is_dict(phi):
        keys = list(phi.keys()) + [k for k in theta.keys() if k not in phi]
        return {k: combine(theta[k], phi[k]) if (k in theta and k in phi) else (theta[k] if k in theta else phi[k])
                for k in keys}
    if _is_seq(theta) and _is_seq(phi):
        if len(theta) != len(phi):
            raise ValueError(f"combine: lists of different lengths ({len(theta)} vs {len(phi)})")
        return [combine(a, b) for a, b in zip(theta, phi)]
    if _is_dict(theta) and len(theta) == 0:
        return phi
    if _is_dict(phi) and len(phi) == 0:
        return theta
    return theta


def get(tree, path: Path):
    """The leaf (or subtree) at ``path``."""
    for k in path:
        tree = tree[k]
    return tree


def replace(tree, path: Path, value):
    """A copy of ``tree`` (containers only, arrays shared) with ``path`` set to ``value``."""
    if not path:
        return value
    k, rest = path[0], path[1:]
    if _is_dict(tree):
        out = {kk: tree[kk] for kk in tree.keys()}
        out[k] = replace(tree[k], rest, value)
        return out
    out = list(tree)
    out[k] = replace(tree[k], rest, value)
    return out


def without(tree: dict, key):
    """A shallow copy of the dict ``tree`` without ``key`` (e.g. a merged method's θ)."""
    return {k: v for k, v in tree.items() if k != key}


def count(tree) -> int:
    """Number of scalars in all leaves."""
    return int(sum(onp.size(leaf) for _, leaf in leaves_with_paths(tree)))


def path_str(path: Path) -> str:
    """("blocks", 0, "attn", "W_q") -> "blocks.0.attn.W_q"."""
    return ".".join(str(p) for p in path)

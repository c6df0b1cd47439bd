"""Adapters on disk: the trainable part θ of one or more methods, with a JSON record.

The record names each method (its registry name and options), the backbone's config,
the head's class count and whether the head trained, so the methods can be rebuilt and a
file that does not fit refused: another backbone shape, another method, a truncated file
— each a ValueError saying which. This file is the one reader (``read_adapter``) and the
one writer (``save_adapter``) of that record, and writes the merged backbone
``minipeft merge`` makes (``save_merged``).
"""
from __future__ import annotations

import os
from typing import NamedTuple

from . import io, tree
from .backend import cast_like
from .methods import REGISTRY, attach, method_class, trainable
from .transformer import Config, new_head


class AdapterFile(NamedTuple):
    """What ``read_adapter`` found in a file: θ's leaves, the rebuilt methods, the record."""

    theta: dict
    methods: list
    meta: dict
    path: str


def registry_name(method) -> str:
    """The REGISTRY name of ``method``'s class (ValueError if it is not registered)."""
    cls = type(method)
    for name, spec in REGISTRY.items():  # compare "module:Class" strings: imports no other method
        mod, clsname = spec.split(":")
        if (cls.__module__, cls.__name__) == (f"minipeft.methods.{mod}", clsname):
            return name
    raise ValueError(f"method {type(method).__name__} is not in methods.REGISTRY; register it to save it")


def save_adapter(path, params, methods, cfg: Config, *, train_head: bool = True, extra: dict | None = None):
    """Write θ = split(params, trainable(methods, train_head))[0] and its record to ``path``."""
    theta, _ = tree.split(params, trainable(methods, train_head))
    meta = {
        "kind": "adapter",
        "methods": [{"type": registry_name(m), "options": m.options()} for m in methods],
        "config": cfg.to_dict(),
        "n_classes": int(params["head"]["W"].shape[0]),
        "train_head": bool(train_head),
        **(extra or {}),
    }
    io.save_tree(path, theta, meta)


def read_adapter(path, cfg: Config) -> AdapterFile:
    """Read an adapter file and check its record against ``cfg``, without a backbone:
    the kind, the config, and every method rebuilt with ``Method.from_options``."""
    theta, meta = io.load_tree(path)
    if meta.get("kind") != "adapter":
        raise ValueError(f"{path}: not an adapter file (kind={meta.get('kind')!r})")
    if meta.get("config") != cfg.to_dict():
        raise ValueError(f"{path}: adapter was trained for a backbone with config {meta.get('config')}, "
                         f"this backbone has {cfg.to_dict()}")
    try:
        methods = [method_class(r["type"]).from_options(r["options"]) for r in meta["methods"]]
        meta["n_classes"], meta["train_head"]  # noqa: B018  (present, or a KeyError)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"{path}: malformed method record: {e!r}") from None
    return AdapterFile(theta, methods, meta, str(path))


def load_adapter(path, backbone, cfg: Config):
    """An adapter for ``backbone`` (params of config ``cfg``): returns (params, methods, meta).

    path: a file, or what ``read_adapter`` returned for one (so a caller that checked the
    record first does not read the file twice). params = backbone (with a head of the
    adapter's class count) + the saved θ, bit-exact, on the backbone's device.
    """
    f = path if isinstance(path, AdapterFile) else read_adapter(path, cfg)
    theta, methods, meta = f.theta, f.methods, f.meta
    base = backbone
    if meta["n_classes"] != backbone["head"]["W"].shape[0]:
        base = new_head(backbone, int(meta["n_classes"]))
    expected, _ = tree.split(attach(base, methods, cfg), trainable(methods, meta["train_head"]))
    io.check_same_shapes(theta, expected, what=f"{f.path}")
    # rebuilt on the nesting attach makes (a file keeps leaves only: empty {} entries and
    # trailing {} of lists are not stored), with the file's leaves, bit-exact, in the
    # backbone's dtype and on its device (a NumPy file into a CuPy model)
    ref = base["embed"]["pos"]
    theta = tree.map_leaves(lambda p, a: cast_like(tree.get(theta, p), ref), expected)
    _, phi = tree.split(base, trainable(methods, meta["train_head"]))
    return tree.combine(theta, phi), methods, meta


def save_merged(path, merged, adapter: AdapterFile, cfg: Config, *, task: str, dtype: str, max_abs_diff: float):
    """Write a merged backbone (what ``merge.merge_methods`` returned for ``adapter``) with its
    record: the methods folded in, the config, the head's classes, the task it was checked
    on, the dtype and max |Δ| between merged and unmerged logits there."""
    io.save_tree(path, merged, {"kind": "merged-backbone", "methods": adapter.meta["methods"],
                                "config": cfg.to_dict(), "n_classes": int(adapter.meta["n_classes"]), "task": task,
                                "dtype": dtype, "source": os.path.basename(adapter.path),
                                "max_abs_diff": max_abs_diff})

"""Adapters on disk: the trainable part θ of one or more methods, with a JSON record.

The record names each method (its registry name and options), the backbone's config,
the head's class count and whether the head trained, so ``load_adapter`` can rebuild
the methods and refuse a file that does not fit: another backbone shape, another
method, a truncated file — each a ValueError saying which.
"""
from __future__ import annotations

from . import io, tree
from .methods import REGISTRY, attach, method_class, trainable
from .transformer import Config, new_head


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


def _build_method(record):
    cls = method_class(record["type"])
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in record["options"].items()}
    return cls(**opts)


def load_adapter(path, backbone, cfg: Config):
    """Read an adapter for ``backbone`` (params of config ``cfg``): returns (params, methods, meta).

    params = backbone (with a head of the adapter's class count) + the saved θ, bit-exact.
    """
    theta, meta = io.load_tree(path)
    if meta.get("kind") != "adapter":
        raise ValueError(f"{path}: not an adapter file (kind={meta.get('kind')!r})")
    if meta.get("config") != cfg.to_dict():
        raise ValueError(f"{path}: adapter was trained for a backbone with config {meta.get('config')}, "
                         f"this backbone has {cfg.to_dict()}")
    try:
        methods = [_build_method(r) for r in meta["methods"]]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed method record: {e}") from None
    base = backbone
    if meta["n_classes"] != backbone["head"]["W"].shape[0]:
        base = new_head(backbone, int(meta["n_classes"]))
    expected, _ = tree.split(attach(base, methods, cfg), trainable(methods, meta["train_head"]))
    io.check_same_shapes(theta, expected, what=f"{path}")
    dtype = base["embed"]["pos"].dtype
    # rebuilt on the nesting attach makes (a file keeps leaves only: empty {} entries and
    # trailing {} of lists are not stored), with the file's leaves, bit-exact
    ref = base["embed"]["pos"]  # θ goes to the backbone's device (a NumPy file into a CuPy model)
    theta = tree.map_leaves(lambda p, a: io.from_host(tree.get(theta, p), dtype, like=ref), expected)
    _, phi = tree.split(base, trainable(methods, meta["train_head"]))
    return tree.combine(theta, phi), methods, meta

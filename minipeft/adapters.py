"""Adapters on disk: the trainable part θ of one or more methods, with a JSON record.

The record names each method (its registry name and options), the backbone's config and
identity (a SHA-256 of its frozen arrays), the head's class count and whether the head
trained, so ``load_adapter`` can rebuild the methods and refuse a file that does not fit:
another backbone (shape or content), another method, a truncated file — each a
ValueError naming the file and the field. The record is checked field by field (types,
ranges) before anything is built; the expected θ (its leaves and shapes) is built from
the record and the config, never from the file's keys, and each array's header is
checked against it before its data is read (``io.load_tree``). This file is the one
reader (``read_adapter``, ``load_adapter``) and the one writer (``save_adapter``) of that
record, and writes and reads the merged backbone ``minipeft merge`` makes
(``save_merged``, ``load_merged``).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import NamedTuple

import numpy as onp

from . import io, tree
from .backend import cast_like
from .methods import REGISTRY, attach, method_class, trainable
from .transformer import Config, new_head
from .transformer.schema import anchor

#: record keys ``save_adapter`` writes itself; ``extra`` may not set them
RESERVED = ("format", "version", "kind", "methods", "config", "n_classes", "train_head", "backbone_sha256")
#: the largest head a record may ask for (n_classes × d numbers)
MAX_CLASSES = 65536


class AdapterFile(NamedTuple):
    """What ``read_adapter`` found in a file's record (no array read yet): the rebuilt
    methods, the record, the path."""

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


def backbone_sha256(params, methods, train_head: bool = True) -> str:
    """Identity of the backbone an adapter relies on: SHA-256 over the frozen φ leaves
    (every leaf ``trainable(methods, train_head)`` does not select, the head excluded),
    each as path, shape and the bytes of its float32 rounding (so a float64 copy of a
    float32 backbone has the same identity)."""
    _, phi = tree.split(params, trainable(methods, train_head))
    h = hashlib.sha256()
    for p, leaf in tree.leaves_with_paths(phi):
        if p and p[0] == "head":
            continue
        a = onp.ascontiguousarray(io.to_host(leaf), dtype=onp.float32)
        h.update(f"{tree.path_str(p)}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_adapter(path, params, methods, cfg: Config, *, train_head: bool = True, extra: dict | None = None):
    """Write θ = split(params, trainable(methods, train_head))[0] and its record to ``path``.

    ``extra``: more JSON-able record fields (task, accuracy, …); a key of ``RESERVED`` is a
    ValueError (it would overwrite what the loader relies on).
    """
    clash = sorted(set(extra or {}) & set(RESERVED))
    if clash:
        raise ValueError(f"extra: keys {clash} are reserved for the adapter record ({', '.join(RESERVED)})")
    theta, _ = tree.split(params, trainable(methods, train_head))
    meta = {
        "kind": "adapter",
        "methods": [{"type": registry_name(m), "options": m.options()} for m in methods],
        "config": cfg.to_dict(),
        "n_classes": int(cfg.vocab if cfg.head == "tied_lm" else params["head"]["W"].shape[0]),  # tied: vocab
        "train_head": bool(train_head),
        "backbone_sha256": backbone_sha256(params, methods, train_head),
        **(extra or {}),
    }
    io.save_tree(path, theta, meta)


def build_methods(path, meta: dict) -> list:
    """The methods a record names, each field checked first (ValueError naming file and field)."""
    records = meta.get("methods")
    if not isinstance(records, list):
        raise ValueError(f"{path}: record field 'methods' must be a list of {{type, options}}, got {records!r:.80}")
    out = []
    for i, r in enumerate(records):
        where = f"{path}: record field methods[{i}]"
        if not isinstance(r, dict) or set(r) != {"type", "options"}:
            raise ValueError(f"{where} must be an object with exactly the keys 'type' and 'options', got {r!r:.80}")
        if not isinstance(r["type"], str) or r["type"] not in REGISTRY:
            raise ValueError(f"{where}.type must be one of {sorted(REGISTRY)}, got {r['type']!r:.80}")
        if not isinstance(r["options"], dict):
            raise ValueError(f"{where}.options must be an object, got {type(r['options']).__name__}")
        try:
            out.append(method_class(r["type"]).from_options(r["options"]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}.options: {e}") from None
    return out


def check_record(path, meta: dict, cfg: Config) -> list:
    """Check an adapter record's fields against ``cfg``; returns the methods it names."""
    if meta.get("kind") != "adapter":
        raise ValueError(f"{path}: not an adapter file (kind={meta.get('kind')!r:.80})")
    for key in ("config", "methods", "n_classes", "train_head"):
        if key not in meta:
            raise ValueError(f"{path}: record field {key!r} missing (not an adapter written by save_adapter?)")
    if meta["config"] != cfg.to_dict():
        raise ValueError(f"{path}: adapter was trained for a backbone with config {meta['config']!r:.300}, "
                         f"this backbone has {cfg.to_dict()}")
    n = meta["n_classes"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLASSES:
        raise ValueError(f"{path}: record field 'n_classes' must be an int in [1, {MAX_CLASSES}], got {n!r:.80}")
    if not isinstance(meta["train_head"], bool):
        raise ValueError(f"{path}: record field 'train_head' must be true or false, got {meta['train_head']!r:.80}")
    methods = build_methods(path, meta)
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: record field 'methods' names two methods with one name: {names}")
    for m in methods:
        if hasattr(m, "check_cfg"):
            try:
                m.check_cfg(cfg)
            except ValueError as e:
                raise ValueError(f"{path}: record field methods ({registry_name(m)}): {e}") from None
    sha = meta.get("backbone_sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise ValueError(f"{path}: record field 'backbone_sha256' must be a 64-character hex string, got {sha!r:.80}")
    return methods


def read_adapter(path, cfg: Config) -> AdapterFile:
    """Read an adapter file's record and check it against ``cfg`` (``check_record``), without
    a backbone and without reading any array."""
    path = os.fspath(path)
    meta = io.read_record(path)
    return AdapterFile(check_record(path, meta, cfg), meta, path)


def load_adapter(path, backbone, cfg: Config, *, other_backbone: bool = False):
    """An adapter for ``backbone`` (params of config ``cfg``): returns (params, methods, meta).

    path: a file, or what ``read_adapter`` returned for one (a caller that checked the
    record first). params = backbone (with a head of the adapter's class count) + the saved
    θ, bit-exact, in the backbone's dtype and on its device. An adapter trained on another
    backbone (its ``backbone_sha256`` differs, or is absent) is a ValueError; with
    ``other_backbone=True`` it loads with a UserWarning.
    """
    f = path if isinstance(path, AdapterFile) else read_adapter(path, cfg)
    methods, meta = f.methods, f.meta
    base = backbone
    if cfg.head == "classes" and meta["n_classes"] != backbone["head"]["W"].shape[0]:
        base = new_head(backbone, int(meta["n_classes"]))
    want, got = backbone_sha256(base, methods, meta["train_head"]), meta.get("backbone_sha256")
    if want != got:
        msg = (f"{f.path}: adapter was trained on another backbone (record field backbone_sha256 "
               f"{str(got)[:12] + '…' if got else 'absent'}, this backbone {want[:12]}…)")
        if not other_backbone:
            raise ValueError(msg + "; pass other_backbone=True (CLI: --other-backbone) to load it anyway")
        warnings.warn(msg + "; loaded anyway (other_backbone=True)")
    # the expected θ from the record and the config: its leaves and shapes, never the file's keys
    expected, _ = tree.split(attach(base, methods, cfg), trainable(methods, meta["train_head"]))
    theta, meta = io.load_tree(f.path, expected)
    theta = cast_like(theta, anchor(base))  # a NumPy file into a CuPy model
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


def load_merged(path):
    """Read a merged backbone written by ``minipeft merge``: returns (params, cfg, meta).

    The record carries the config, the class count and the dtype; the expected leaves are
    the backbone of that config with a head of n_classes rows, in that dtype (checked
    before any data is read, as every load).
    """
    from .transformer import init_params

    path = os.fspath(path)
    meta = io.read_record(path)
    if meta.get("kind") != "merged-backbone":
        raise ValueError(f"{path}: not a merged backbone (record field 'kind' is {meta.get('kind')!r:.80})")
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path}: record field 'config' missing or not an object")
    try:
        cfg = Config.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: record field 'config': {e}") from None
    n = meta.get("n_classes")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLASSES:
        raise ValueError(f"{path}: record field 'n_classes' must be an int in [1, {MAX_CLASSES}], got {n!r:.80}")
    if meta.get("dtype") not in io.FLOAT_DTYPES:
        raise ValueError(f"{path}: record field 'dtype' must be one of {io.FLOAT_DTYPES}, got {meta.get('dtype')!r:.80}")
    skeleton = new_head(init_params(cfg, 0, meta["dtype"]), n)
    params, meta = io.load_tree(path, skeleton, dtypes=(meta["dtype"],))
    return cast_like(params, skeleton["embed"]["pos"]), cfg, meta  # on the backend

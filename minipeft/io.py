"""Saving and loading parameter trees: ``.npz`` arrays plus a JSON record, no pickle.

A file holds one array per leaf, keyed by its path ("blocks.0.attn.W_q"), and the JSON
record as a uint8 array under "__meta__". Loading uses ``allow_pickle=False``. Writes go
to a temporary file in the same folder, are flushed to disk, then renamed over the
target: a crash leaves the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as onp

from . import tree
from .backend import to_host

FORMAT = "minipeft"
VERSION = 1
_META = "__meta__"


def save_tree(path, params, meta: dict) -> None:
    """Write ``params`` (nested dicts/lists of arrays) and ``meta`` (JSON-able) to ``path`` atomically."""
    path = os.fspath(path)
    arrays = {}
    for p, leaf in tree.leaves_with_paths(params):
        key = tree.path_str(p)
        if not key or key == _META or any("." in str(k) for k in p):
            raise ValueError(f"params: cannot save leaf at path {p!r} (keys must be non-empty and dot-free)")
        arrays[key] = to_host(leaf)
    record = {"format": FORMAT, "version": VERSION, **meta}
    arrays[_META] = onp.frombuffer(json.dumps(record, sort_keys=True).encode(), dtype=onp.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; give the file the usual rw-r--r--
        with os.fdopen(fd, "wb") as fh:
            onp.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_tree(path):
    """Read a file written by ``save_tree``: returns (params, meta).

    FileNotFoundError if missing; ValueError if truncated, corrupted, or not a minipeft file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with onp.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(bytes(arrays.pop(_META)).decode())
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable minipeft file (truncated or corrupted?): "
                         f"{type(e).__name__}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a minipeft file (format record missing)")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: file version {meta.get('version')!r}, this minipeft reads version {VERSION}")
    return unflatten(arrays), meta


def unflatten(arrays: dict):
    """{"a.0.b": x, …} -> nested dicts, with lists where every key of a level is a digit string."""
    root: dict = {}
    for key, value in arrays.items():
        node = root
        parts = key.split(".")
        for k in parts[:-1]:
            node = node.setdefault(k, {})
        node[parts[-1]] = value

    def fix(node):
        if not isinstance(node, dict):
            return node
        if node and all(k.isdigit() for k in node):
            return [fix(node[str(i)]) if str(i) in node else {} for i in range(max(map(int, node)) + 1)]
        return {k: fix(v) for k, v in node.items()}

    return fix(root)


def check_same_shapes(params, reference, what: str = "params") -> None:
    """ValueError naming the first leaf whose path or shape differs from ``reference``."""
    got = {p: tuple(leaf.shape) for p, leaf in tree.leaves_with_paths(params)}
    want = {p: tuple(leaf.shape) for p, leaf in tree.leaves_with_paths(reference)}
    for p in want:
        if p not in got:
            raise ValueError(f"{what}: missing leaf {tree.path_str(p)}")
        if got[p] != want[p]:
            raise ValueError(f"{what}: leaf {tree.path_str(p)} has shape {got[p]}, expected {want[p]}")
    extra = sorted(tree.path_str(p) for p in got if p not in want)
    if extra:
        raise ValueError(f"{what}: unexpected leaves {extra[:5]}")

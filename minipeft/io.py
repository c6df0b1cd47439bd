"""Saving and loading parameter trees: ``.npz`` arrays plus a JSON record, no pickle.

A file holds one array per leaf, keyed by its path ("blocks.0.attn.W_q"), and the JSON
record as a uint8 array under "__meta__". Reading never unpickles and never trusts the
file for a size: each member's ``.npy`` header is parsed and checked (dtype, shape, size
of the member) before its data is read, the expected leaves come from a skeleton the
caller builds from the record and the config, and NaN/Inf, duplicate or foreign members
are refused. Writes go to a temporary file in the same folder, are flushed to disk, then
renamed over the target: a crash leaves the old file or the new one, never half of one;
a temp file left by a killed save is removed by a later save once stale.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
import zipfile
from zlib import error as zlib_error

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
    try:  # NaN/Infinity are not JSON: a record holding one could not be read back
        text = json.dumps(record, sort_keys=True, allow_nan=False)
    except ValueError:
        raise ValueError("meta: the record must hold finite numbers only (no NaN/Inf)") from None
    arrays[_META] = onp.frombuffer(text.encode(), dtype=onp.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory; cannot write a file there")
    remove_stale_temps(folder)
    tmp = None
    try:  # a signal (SIGINT, or SIGTERM under the CLI) after mkstemp still removes the temp file
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_TMP_PREFIX, suffix=".npz")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; give the file the usual rw-r--r--
        with os.fdopen(fd, "wb") as fh:
            onp.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # name the target (the CLI prints one line)
            raise OSError(e.errno, e.strerror or str(e), path) from e
        raise


def remove_stale_temps(folder, max_age: float | None = None) -> list:
    """Delete ``.tmp-*.npz`` files in ``folder`` older than ``max_age`` s (default STALE_SECONDS):
    leftovers of saves killed by SIGKILL. A younger one may be a concurrent save: kept.
    Returns the removed paths."""
    max_age = STALE_SECONDS if max_age is None else max_age
    removed, now = [], time.time()
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if name.startswith(_TMP_PREFIX) and name.endswith(".npz"):
            full = os.path.join(folder, name)
            try:
                if now - os.lstat(full).st_mtime > max_age and os.path.isfile(full):
                    os.unlink(full)
                    removed.append(full)
            except OSError:
                pass  # gone already, or not ours to remove
    return removed


#: bound on the total uncompressed bytes of one file read without a skeleton (1 GiB)
MAX_BYTES = 1 << 30
#: bound on the JSON record's size
MAX_RECORD_BYTES = 1 << 20
#: float dtypes a leaf may have on disk (a file of any other dtype is refused, never cast)
FLOAT_DTYPES = ("float32", "float64")
#: a temp file of a save older than this (seconds) belongs to a save that died: removed
STALE_SECONDS = 600
_TMP_PREFIX = ".tmp-"
#: what the zip reader raises on a damaged file (a flipped compression method is
#: NotImplementedError, a flipped encryption flag RuntimeError, a torn extra field struct.error)
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib_error, NotImplementedError, RuntimeError, struct.error)


def _fail(path, what: str):
    return ValueError(f"{path}: {what}")


def _check_regular_file(path: str) -> None:
    """FileNotFoundError if nothing is there; ValueError for a directory or another non-file."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: a symlink to a missing file")
    if os.path.isdir(path):
        raise _fail(path, "is a directory, not a minipeft file" + (" (a symlink to one)" if os.path.islink(path) else ""))
    if not os.path.isfile(path):
        raise _fail(path, "is not a regular file")


def _members(path, zf) -> dict:
    """{key: ZipInfo} for every ``KEY.npy`` member; ValueError for a duplicate or a non-.npy member."""
    out = {}
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy") or name.startswith("/") or info.is_dir():
            raise _fail(path, f"unexpected zip member {name!r} (a minipeft file holds only KEY.npy arrays)")
        key = name[:-4]
        if key in out:
            raise _fail(path, f"zip member {name!r} appears twice (which one is meant is ambiguous)")
        out[key] = info
    return out


def _read_member(path, zf, info, key, *, shape=None, dtypes=FLOAT_DTYPES, budget=None):
    """The array of one member, its ``.npy`` header checked before any data is read.

    shape: the expected shape (None: any, bounded by the member's declared size); dtypes:
    the allowed dtype names (byte order aside). The data must fill the member exactly.
    """
    import numpy.lib.format as fmt

    with zf.open(info) as fh:
        try:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                got_shape, fortran, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                got_shape, fortran, dtype = fmt.read_array_header_2_0(fh)
            else:
                raise ValueError(f"npy format version {version}")
        except (ValueError, SyntaxError, TypeError, EOFError) as e:
            raise _fail(path, f"leaf {key}: unreadable .npy header ({e})") from None
        header_len = fh.tell()
        if dtype.hasobject:
            raise _fail(path, f"leaf {key}: dtype {dtype} holds Python objects (a pickle: never loaded); "
                              f"allowed: {', '.join(dtypes)}")
        if dtype.fields is not None or dtype.subdtype is not None:
            raise _fail(path, f"leaf {key}: structured dtype {dtype}; allowed: {', '.join(dtypes)}")
        if dtype.newbyteorder("=").name not in dtypes or dtype.kind != "f":
            raise _fail(path, f"leaf {key}: dtype {dtype} (kind {dtype.kind!r}); allowed: {', '.join(dtypes)} "
                              f"(never cast: an int, bool or complex leaf is not a saved parameter)")
        if shape is not None and tuple(got_shape) != tuple(shape):
            raise _fail(path, f"leaf {key}: shape {tuple(got_shape)}, expected {tuple(shape)}")
        n_items = 1
        for n in got_shape:
            n_items *= int(n)
        n_bytes = n_items * dtype.itemsize
        if info.file_size != header_len + n_bytes:
            raise _fail(path, f"leaf {key}: header says shape {tuple(got_shape)} ({n_bytes} bytes) but the member "
                              f"holds {info.file_size - header_len} data bytes (truncated or corrupted)")
        if budget is not None and n_bytes > budget:
            raise _fail(path, f"leaf {key}: {n_bytes} bytes exceed the {MAX_BYTES}-byte bound on a file")
        data = fh.read(n_bytes)
        if len(data) != n_bytes or fh.read(1):
            raise _fail(path, f"leaf {key}: data size does not match its header (truncated or corrupted)")
    arr = onp.frombuffer(data, dtype=dtype)
    arr = arr.reshape(got_shape, order="F" if fortran else "C")
    arr = onp.ascontiguousarray(arr.astype(dtype.newbyteorder("="), copy=True))
    if not onp.isfinite(arr).all():
        raise _fail(path, f"leaf {key}: holds {int((~onp.isfinite(arr)).sum())} NaN/Inf value(s)")
    return arr


def _open_zip(path):
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS + (ValueError,) as e:
        raise _fail(path, f"not a readable minipeft file (truncated or corrupted?): {type(e).__name__}: {e}") from None


def _read_record(path, zf, members) -> dict:
    if _META not in members:
        raise _fail(path, "not a minipeft file (format record missing)")
    info = members[_META]
    if info.file_size > MAX_RECORD_BYTES + 256:
        raise _fail(path, f"record of {info.file_size} bytes exceeds the {MAX_RECORD_BYTES}-byte bound")
    raw = _read_record_bytes(path, zf, info)
    try:
        meta = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(path, f"record is not valid JSON (truncated or corrupted?): {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(path, "not a minipeft file (format record missing)")
    if meta.get("version") != VERSION:
        raise _fail(path, f"file version {meta.get('version')!r}, this minipeft reads version {VERSION}")
    return meta


def _no_constant(name):
    raise ValueError(f"{name} is not a number a record may hold")


def _read_record_bytes(path, zf, info) -> bytes:
    """The record's bytes: a 1-d uint8 member, header checked first."""
    import numpy.lib.format as fmt

    with zf.open(info) as fh:
        try:
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(fh)
        except (ValueError, SyntaxError, TypeError, EOFError) as e:
            raise _fail(path, f"record: unreadable .npy header ({e})") from None
        if dtype != onp.uint8 or len(shape) != 1 or info.file_size != fh.tell() + shape[0]:
            raise _fail(path, f"record: expected a 1-d uint8 array filling its member, got {dtype} {shape}")
        data = fh.read(shape[0])
        if len(data) != shape[0] or fh.read(1):
            raise _fail(path, "record: truncated or corrupted")
    return data


def read_record(path) -> dict:
    """The JSON record of a minipeft file, without reading any array."""
    path = os.fspath(path)
    _check_regular_file(path)
    with _open_zip(path) as zf:
        try:
            return _read_record(path, zf, _members(path, zf))
        except _ZIP_ERRORS as e:
            raise _fail(path, f"not a readable minipeft file (truncated or corrupted?): {type(e).__name__}: {e}") from None


def load_tree(path, skeleton=None, *, dtypes=FLOAT_DTYPES):
    """Read a file written by ``save_tree``: returns (params, meta).

    skeleton: a tree (or a function meta -> tree) of arrays: the file must hold exactly its
    leaves, each of the skeleton leaf's shape, and the result has the skeleton's nesting.
    Without one, the nesting comes from the keys, bounded by the number of members (a list
    index must be < it) and the total by ``MAX_BYTES``. Either way every member's ``.npy``
    header is read and checked (dtype in ``dtypes``, shape, size) before its data; NaN/Inf
    leaves, duplicate or foreign members are refused; nothing is ever unpickled.

    FileNotFoundError if missing; ValueError naming the file and the field otherwise.
    """
    path = os.fspath(path)
    _check_regular_file(path)
    with _open_zip(path) as zf:
        try:
            members = _members(path, zf)
            meta = _read_record(path, zf, members)
            del members[_META]
            if callable(skeleton):
                skeleton = skeleton(meta)
            if skeleton is None:
                return _load_free(path, zf, members, dtypes), meta
            want = {tree.path_str(p): leaf for p, leaf in tree.leaves_with_paths(skeleton)}
            extra = sorted(set(members) - set(want))
            if extra:
                raise _fail(path, f"unexpected leaves {extra[:5]}")
            missing = [k for k in want if k not in members]
            if missing:
                raise _fail(path, f"missing leaf {missing[0]}")
            arrays = {k: _read_member(path, zf, members[k], k, shape=tuple(want[k].shape), dtypes=dtypes)
                      for k in want}
        except _ZIP_ERRORS as e:
            raise _fail(path, f"not a readable minipeft file (truncated or corrupted?): {type(e).__name__}: {e}") from None
    return tree.map_leaves(lambda p, _: arrays[tree.path_str(p)], skeleton), meta


def _load_free(path, zf, members, dtypes):
    """Leaves keyed by the file (no skeleton): sizes bounded by MAX_BYTES in all."""
    total = sum(info.file_size for info in members.values())
    if total > MAX_BYTES:
        raise _fail(path, f"members total {total} uncompressed bytes, over the {MAX_BYTES}-byte bound")
    arrays, budget = {}, MAX_BYTES
    for k, info in members.items():
        arrays[k] = _read_member(path, zf, info, k, dtypes=dtypes, budget=budget)
        budget -= arrays[k].nbytes
    return unflatten(arrays, path)


def unflatten(arrays: dict, path="params"):
    """{"a.0.b": x, …} -> nested dicts, with lists where every key of a level is a digit string.

    ValueError naming ``path`` for an empty key part, a key that is both a leaf and a
    prefix ("head.W" and "head.W.x"), or a list index ≥ the number of arrays (the
    index, not the file, would size the list).
    """
    root: dict = {}
    for key, value in arrays.items():
        node = root
        parts = key.split(".")
        if any(not k for k in parts):
            raise ValueError(f"{path}: leaf key {key!r} has an empty part")
        for k in parts[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"{path}: leaf key {key!r} nests under another leaf")
        if parts[-1] in node:
            raise ValueError(f"{path}: leaf key {key!r} is also the prefix of another leaf")
        node[parts[-1]] = value

    def fix(node):
        if not isinstance(node, dict):
            return node
        if node and all(k.isdigit() for k in node):
            top = max(map(int, node))
            if top >= len(arrays) or any(k != str(int(k)) for k in node):
                raise ValueError(f"{path}: list index {top} out of range for a file of {len(arrays)} arrays "
                                 f"(or a non-canonical index)")
            return [fix(node[str(i)]) if str(i) in node else {} for i in range(top + 1)]
        return {k: fix(v) for k, v in node.items()}

    return fix(root)


def tree_sha256(params) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in tree order: a file's checksum."""
    h = hashlib.sha256()
    for p, leaf in tree.leaves_with_paths(params):
        a = onp.ascontiguousarray(to_host(leaf))
        h.update(f"{tree.path_str(p)}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


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

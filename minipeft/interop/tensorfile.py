"""The safetensors format, read and written with NumPy alone, every size checked first.

A safetensors file is: 8 bytes (little-endian u64) N, then N bytes of JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
then the data, each tensor C-order little-endian at header-end + begin.

``read_header`` checks everything the header claims before any tensor is read: N against
``MAX_HEADER_BYTES`` and the file size, the JSON's form, each dtype (one of ``DTYPES``),
each shape's byte count against its offsets, the offsets against the file and each other
(no overlap); ``read_tensors`` then reads only the names the caller expects, each of
the shape the caller expects (refused before its bytes are read). Nothing is unpickled
(the format holds no code). ``write`` writes into an open binary file (the caller makes
the write atomic: ``interop.peft`` writes a temp folder and renames it).
"""
from __future__ import annotations

import json
import os
import struct

import numpy as onp

#: the largest header read (a peft adapter on a 6-layer BERT has a few kB of header)
MAX_HEADER_BYTES = 1 << 22
#: the largest data section read (1 GiB, io.MAX_BYTES)
MAX_DATA_BYTES = 1 << 30
#: safetensors dtype -> (NumPy dtype on disk, bytes per item); BF16 is widened to float32 on read
DTYPES = {"F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2)}
_WRITE = {"float64": "F64", "float32": "F32"}


def _fail(path, what):
    return ValueError(f"{path}: {what}")


def read_header(path) -> dict:
    """{name: (dtype, shape, begin, end)} with begin/end absolute file offsets; ``__metadata__``
    is dropped. ValueError naming the file and the field for anything malformed."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise _fail(path, "shorter than the 8-byte header length (not a safetensors file)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise _fail(path, f"header length {n} bytes is over the {MAX_HEADER_BYTES}-byte bound or past the end "
                              f"of the {size}-byte file (not a safetensors file, or truncated)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _fail(path, "header must be a JSON object of tensors")
    start, out, spans = 8 + n, {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"tensor {name!r:.120}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"{where}: header entry must have exactly dtype, shape, data_offsets")
        dt, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dt not in DTYPES:
            raise _fail(path, f"{where}: dtype {dt!r:.40}; minipeft reads {', '.join(DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > 8
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape)):
            raise _fail(path, f"{where}: shape {shape!r:.80} is not a list of at most 8 non-negative ints")
        if (not isinstance(offs, list) or len(offs) != 2
                or any(isinstance(o, bool) or not isinstance(o, int) for o in offs) or not 0 <= offs[0] <= offs[1]):
            raise _fail(path, f"{where}: data_offsets {offs!r:.80} is not [begin, end] with 0 ≤ begin ≤ end")
        n_items = 1
        for s in shape:
            n_items *= s
        if n_items * DTYPES[dt][1] != offs[1] - offs[0]:
            raise _fail(path, f"{where}: shape {tuple(shape)} of {dt} needs {n_items * DTYPES[dt][1]} bytes, its "
                              f"offsets span {offs[1] - offs[0]}")
        if start + offs[1] > size or offs[1] > MAX_DATA_BYTES:
            raise _fail(path, f"{where}: data ends at byte {start + offs[1]}, past the {size}-byte file (truncated?) "
                              f"or over the {MAX_DATA_BYTES}-byte bound")
        spans.append((offs[0], offs[1], name))
        out[name] = (dt, tuple(shape), start + offs[0], start + offs[1])
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise _fail(path, f"tensors {n0!r:.80} and {n1!r:.80} overlap in the data section")
    return out


def read_tensors(path, expected: dict) -> dict:
    """{name: array} for exactly the names of ``expected`` ({name: shape}).

    A missing name, an unexpected one, or another shape is a ValueError naming the tensor,
    raised from the header before any data is read. F32/F64 come back as float32/float64;
    F16 and BF16 are widened to float32 (exactly). NaN/Inf are refused.
    """
    path = os.fspath(path)
    header = read_header(path)
    missing = sorted(set(expected) - set(header))
    if missing:
        raise _fail(path, f"missing tensor {missing[0]} ({len(missing)} missing; expected {len(expected)} tensors)")
    extra = sorted(set(header) - set(expected))
    if extra:
        raise _fail(path, f"unexpected tensor {extra[0]} ({len(extra)} unexpected): not the adapter its "
                          f"adapter_config.json describes")
    for name, want in expected.items():
        if header[name][1] != tuple(want):
            raise _fail(path, f"tensor {name}: shape {header[name][1]}, expected {tuple(want)}")
    out = {}
    with open(path, "rb") as f:
        for name in expected:
            dt, shape, begin, end = header[name]
            f.seek(begin)
            data = f.read(end - begin)
            if len(data) != end - begin:
                raise _fail(path, f"tensor {name}: truncated")
            a = onp.frombuffer(data, dtype=DTYPES[dt][0]).reshape(shape)
            if dt == "BF16":
                a = (a.astype(onp.uint32) << 16).view(onp.float32)
            a = a.astype(onp.float32 if dt in ("F16", "BF16") else a.dtype.newbyteorder("="), copy=True)
            if not onp.isfinite(a).all():
                raise _fail(path, f"tensor {name}: holds {int((~onp.isfinite(a)).sum())} NaN/Inf value(s)")
            out[name] = a
    return out


def write(fh, tensors: dict, metadata: dict | None = None) -> None:
    """Write {name: float32/float64 array} to the binary file ``fh`` (names sorted, header
    padded with spaces to a multiple of 8, as the safetensors library writes)."""
    header, blobs, pos = {}, [], 0
    for name in sorted(tensors):
        a = onp.ascontiguousarray(tensors[name])
        if a.dtype.name not in _WRITE:
            raise ValueError(f"tensor {name}: dtype {a.dtype}; minipeft writes float32 or float64")
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _WRITE[a.dtype.name], "shape": list(a.shape), "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    fh.write(struct.pack("<Q", len(text)))
    fh.write(text)
    for b in blobs:
        fh.write(b)

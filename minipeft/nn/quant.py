"""Block-quantized frozen weights (GGML's Q4_1 and Q8_0) and a linear map that reads them
on use: QLoRA's idea — the frozen base stays in 4 bits, what trains is float — on the real
4-bit weights of a GGUF file.

A weight W ∈ R^{d_out×d_in} (equations.md, "Conventions": y = x Wᵀ) is cut along each row
into blocks of BLOCK = 32 consecutive numbers w_1 … w_32 (d_in must be a multiple of 32);
each block keeps one or two float16 numbers and 32 small integers q_j:

    Q4_1   w_j = d · q_j + m,   q_j ∈ {0, …, 15}   (4 bits; d, m float16)   20 bytes / 32 numbers
    Q8_0   w_j = d · q_j,       q_j ∈ {−128, …, 127} (8 bits; d float16)     34 bytes / 32 numbers

In Q4_1 byte k (k = 0 … 15) of the 16 packed bytes holds q_{k+1} in its low nibble and
q_{k+17} in its high nibble. Dequantization is computed in float32 as (float32(d) ·
float32(q)) + float32(m) — the same two roundings as GGML's reference (``gguf.quants``),
so the values are bit-identical to it (tests/test_quant.py); a float64 model gets those
float32 values exactly.

    W = Q4_1Blocks.from_bytes(raw, d_in)      raw: (d_out, d_in/32 · 20) uint8, a GGUF tensor's bytes
    W.dequantize()                           (d_out, d_in) float32, all at once (tests, the float base)
    y = qlinear(x, W)                        y = x Wᵀ, W dequantized a row tile at a time
    y = linear(x, W, b)                      either kind of W: a float array or blocks

``qlinear`` is an autograd primitive: its VJP gives dX = g W, dequantizing W again tile
by tile; W is frozen (it is not an array, autograd cannot trace it: no dW exists, the PEFT
saving). So a float32 copy of the whole W never exists, in the forward or the backward
pass: at any moment one tile of at most ``TILE_BYTES`` of float32 rows does.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as onp
from autograd.extend import defvjp, primitive

from .primitives import linear as _dense_linear

#: numbers per block (GGML's QK4_1 = QK8_0 = 32)
BLOCK = 32
#: bytes of one block: Q4_1 = d, m (2 × float16) + 16 packed bytes; Q8_0 = d (float16) + 32 int8
Q4_1_BYTES, Q8_0_BYTES = 20, 34
#: the largest float32 tile of W that qlinear dequantizes at once (rows = TILE_BYTES // (4 d_in))
TILE_BYTES = 1 << 20


def _check_raw(raw, d_in: int, block_bytes: int, what: str):
    """raw as a (d_out, d_in/32, block_bytes) uint8 view; ValueError on a wrong shape or dtype."""
    raw = onp.asarray(raw)
    if d_in <= 0 or d_in % BLOCK:
        raise ValueError(f"{what}: d_in must be a positive multiple of {BLOCK}, got {d_in}")
    nb = d_in // BLOCK
    if raw.dtype != onp.uint8 or raw.ndim != 2 or raw.shape[1] != nb * block_bytes:
        raise ValueError(f"{what}: expected raw bytes of shape (d_out, {nb * block_bytes}) uint8 for d_in = {d_in}, "
                         f"got {raw.shape} {raw.dtype}")
    return raw.reshape(raw.shape[0], nb, block_bytes)


def _f16(raw3, start: int):
    """The float16 at bytes [start, start+2) of every block, copied.  (d_out, nb, ·) uint8 -> (d_out, nb)"""
    return onp.ascontiguousarray(raw3[:, :, start:start + 2]).view(onp.float16)[:, :, 0].copy()


class _Blocks:
    """What both block formats share: the shape, the bytes held, a row selection."""

    @property
    def shape(self) -> tuple:
        """(d_out, d_in) of the dequantized W: rows × (blocks per row · BLOCK)."""
        return (self.qs.shape[0], self.qs.shape[1] * BLOCK)

    @property
    def nbytes(self) -> int:
        """Bytes held by the block arrays (Q4_1: 5 bits per number of W; Q8_0: 8.5)."""
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    def rows(self, index):
        """The blocks of rows W[index] (a slice, or an int array: a gather or a row permutation)."""
        return type(self)(*(getattr(self, f.name)[index] for f in fields(self)))


@dataclass(frozen=True, eq=False)
class Q4_1Blocks(_Blocks):
    """W ∈ R^{d_out×d_in} in Q4_1: w = d · q + m per block of 32 (d, m float16, q 4 bits).

    d, m: (d_out, d_in/32) float16 (the file's bits, widened to float32 only on use);
    qs: (d_out, d_in/32, 16) uint8, two 4-bit q per byte (low nibble: q_1…q_16, high: q_17…q_32).
    """

    d: onp.ndarray
    m: onp.ndarray
    qs: onp.ndarray

    kind = "Q4_1"

    @classmethod
    def from_bytes(cls, raw, d_in: int) -> "Q4_1Blocks":
        """Blocks from a GGUF tensor's bytes: raw (d_out, d_in/32 · 20) uint8 -> Q4_1Blocks (copied)."""
        r = _check_raw(raw, d_in, Q4_1_BYTES, "Q4_1")
        return cls(_f16(r, 0), _f16(r, 2), onp.ascontiguousarray(r[:, :, 4:]))

    def dequantize(self, start: int = 0, stop: int | None = None, dtype=onp.float32) -> onp.ndarray:
        """W[start:stop] as floats: w_j = d · q_j + m, in float32, then cast to dtype.  -> (stop−start, d_in)"""
        qs = self.qs[start:stop]  # (t, nb, 16)
        n, nb = qs.shape[0], qs.shape[1]
        q = onp.empty((n, nb, BLOCK), onp.float32)
        onp.bitwise_and(qs, 0x0F, out=q[:, :, :16], casting="unsafe")  # q_1 … q_16: low nibbles
        onp.right_shift(qs, 4, out=q[:, :, 16:], casting="unsafe")  # q_17 … q_32: high nibbles
        q *= self.d[start:stop, :, None].astype(onp.float32)
        q += self.m[start:stop, :, None].astype(onp.float32)
        return _as(q.reshape(n, nb * BLOCK), dtype)


@dataclass(frozen=True, eq=False)
class Q8_0Blocks(_Blocks):
    """W ∈ R^{d_out×d_in} in Q8_0: w = d · q per block of 32 (d float16, q int8).

    d: (d_out, d_in/32) float16; qs: (d_out, d_in/32, 32) int8.
    """

    d: onp.ndarray
    qs: onp.ndarray

    kind = "Q8_0"

    @classmethod
    def from_bytes(cls, raw, d_in: int) -> "Q8_0Blocks":
        """Blocks from a GGUF tensor's bytes: raw (d_out, d_in/32 · 34) uint8 -> Q8_0Blocks (copied)."""
        r = _check_raw(raw, d_in, Q8_0_BYTES, "Q8_0")
        return cls(_f16(r, 0), onp.ascontiguousarray(r[:, :, 2:]).view(onp.int8))

    def dequantize(self, start: int = 0, stop: int | None = None, dtype=onp.float32) -> onp.ndarray:
        """W[start:stop] as floats: w_j = d · q_j, in float32, then cast to dtype.  -> (stop−start, d_in)"""
        qs = self.qs[start:stop]  # (t, nb, 32)
        w = qs.astype(onp.float32)
        w *= self.d[start:stop, :, None].astype(onp.float32)
        return _as(w.reshape(qs.shape[0], -1), dtype)


#: the block formats this module reads, by GGML's type name
FORMATS = {"Q4_1": Q4_1Blocks, "Q8_0": Q8_0Blocks}


def _as(w, dtype):
    dtype = onp.dtype(dtype)
    return w if w.dtype == dtype else w.astype(dtype)


def is_quantized(W) -> bool:
    """Whether W is a block-quantized weight of this module (not a float array)."""
    return isinstance(W, (Q4_1Blocks, Q8_0Blocks))


def dequantize(W, dtype=onp.float32) -> onp.ndarray:
    """The whole W as a float array (d_out, d_in); a float array passes through (cast to dtype)."""
    return W.dequantize(dtype=dtype) if is_quantized(W) else _as(onp.asarray(W), dtype)


def embedding_rows(W, ids, dtype=onp.float32) -> onp.ndarray:
    """Rows W[ids] of a token table, dequantizing only those rows.  ids (...) int -> (..., d)

    The tied LM head of a quantized model reads the same W through ``qlinear``.
    """
    ids = onp.asarray(ids)
    if not is_quantized(W):
        return W[ids]
    flat = ids.reshape(-1)
    return W.rows(flat).dequantize(dtype=dtype).reshape(ids.shape + (W.shape[1],))


def _tile_rows(W) -> int:
    """Rows of W per tile: the most rows whose float32 copy fits in TILE_BYTES (at least one)."""
    return max(1, TILE_BYTES // (4 * W.shape[1]))


@primitive
def qlinear(x, W):
    """A frozen linear map whose weight stays block-quantized (equations.md, "Conventions").

        y = x Wᵀ,   computed as  y[:, r₀:r₁] = x (W[r₀:r₁])ᵀ  for row tiles of W

    x: (..., d_in) float32/float64, W: Q4_1Blocks or Q8_0Blocks of shape (d_out, d_in)
    ->  y: (..., d_out) in x's dtype. Each tile W[r₀:r₁] is dequantized, used, dropped.
    """
    d_out, d_in = W.shape
    if x.shape[-1] != d_in:
        raise ValueError(f"qlinear: x has {x.shape[-1]} features but W is {d_out}×{d_in} (y = x Wᵀ)")
    x2 = x.reshape(-1, d_in)  # (M, d_in)
    y = onp.empty((x2.shape[0], d_out), x.dtype)  # (M, d_out)
    step = _tile_rows(W)
    for r0 in range(0, d_out, step):
        Wt = W.dequantize(r0, r0 + step, x.dtype)  # (t, d_in): the only float copy of W alive
        y[:, r0:r0 + Wt.shape[0]] = x2 @ Wt.T
    return y.reshape(x.shape[:-1] + (d_out,))


def _qlinear_vjp_x(ans, x, W):
    shape = x.shape  # dX = g W needs W (still quantized) and x's shape only

    def vjp(g):
        g2 = g.reshape(-1, g.shape[-1])  # (M, d_out)
        dx = onp.zeros((g2.shape[0], W.shape[1]), g.dtype)  # (M, d_in)
        step = _tile_rows(W)
        for r0 in range(0, W.shape[0], step):
            Wt = W.dequantize(r0, r0 + step, g.dtype)  # (t, d_in)
            dx += g2[:, r0:r0 + Wt.shape[0]] @ Wt  # dX = Σ_tiles g[:, r₀:r₁] W[r₀:r₁]
        return dx.reshape(shape)

    return vjp


defvjp(qlinear, _qlinear_vjp_x)  # argnum 1 (W) has no VJP: the quantized base is frozen


def linear(x, W, b=None):
    """y = x Wᵀ + b whatever W is: a float array (``primitives.linear``, W may train) or blocks
    (``qlinear``, frozen). x: (..., d_in), W: (d_out, d_in), b: (d_out,) or None -> (..., d_out)."""
    if not is_quantized(W):
        return _dense_linear(x, W, b)
    y = qlinear(x, W)
    return y if b is None else y + b

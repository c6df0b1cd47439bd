"""nn/quant.py: Q4_1 and Q8_0 block dequantization bit-exact against the gguf package's
reference (gguf.quants) and a plain per-number loop; qlinear (y = x Wᵀ on quantized W, row
tiles) against the dense float computation, its dX against autograd on the dense version
and finite differences; only one tile of W is ever dequantized at once."""
import numpy as onp
import pytest
from autograd import grad

from minipeft.nn import primitives as P
from minipeft.nn import quant as Q

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gg_dequantize, quantize as gg_quantize  # noqa: E402

QT = gguf.GGMLQuantizationType
rng = onp.random.default_rng(0)


def quantized(kind, d_out, d_in, seed=0):
    """Raw bytes of a random W quantized by gguf's own quantizer: (d_out, d_in/32 · block bytes) uint8."""
    w = onp.random.default_rng(seed).standard_normal((d_out, d_in)).astype(onp.float32)
    return gg_quantize(w, QT[kind])


def random_blocks(kind, d_out, d_in, seed=1):
    """Raw bytes drawn at random (every nibble and int8 value occurs), with finite float16 scales."""
    r = onp.random.default_rng(seed)
    nb, size = d_in // 32, {"Q4_1": 20, "Q8_0": 34}[kind]
    raw = r.integers(0, 256, (d_out, nb, size), dtype=onp.uint8)
    n_scales = 2 if kind == "Q4_1" else 1
    scales = r.uniform(-2, 2, (d_out, nb, n_scales)).astype(onp.float16)
    raw[:, :, :2 * n_scales] = scales.view(onp.uint8).reshape(d_out, nb, 2 * n_scales)
    return raw.reshape(d_out, nb * size)


def bits(a):
    return onp.ascontiguousarray(a, onp.float32).view(onp.uint32)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("make", [quantized, random_blocks])
def test_dequantize_is_bit_identical_to_gguf_quants(kind, make):
    raw = make(kind, 48, 96)
    W = Q.FORMATS[kind].from_bytes(raw, 96)
    assert W.shape == (48, 96)
    ours, ref = W.dequantize(), gg_dequantize(raw, QT[kind])
    assert ours.dtype == onp.float32 and ref.shape == (48, 96)
    assert (bits(ours) == bits(ref)).all()
    assert (bits(W.dequantize(5, 17)) == bits(ref[5:17])).all()  # a tile of rows


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_dequantize_matches_a_loop_over_the_block_layout(kind):
    """One number at a time, from the bytes as GGML lays them out (no vectorised unpacking)."""
    raw = random_blocks(kind, 3, 64, seed=7)
    W = Q.FORMATS[kind].from_bytes(raw, 64).dequantize()
    size = {"Q4_1": 20, "Q8_0": 34}[kind]
    for r in range(3):
        for b in range(2):
            blk = bytes(raw[r, b * size:(b + 1) * size])
            d = onp.float32(onp.frombuffer(blk[0:2], onp.float16)[0])
            for j in range(32):
                if kind == "Q4_1":
                    m = onp.float32(onp.frombuffer(blk[2:4], onp.float16)[0])
                    byte = blk[4 + (j % 16)]
                    q = (byte & 0x0F) if j < 16 else (byte >> 4)
                    want = onp.float32(d * onp.float32(q)) + m
                else:
                    q = onp.frombuffer(blk[2 + j:3 + j], onp.int8)[0]
                    want = onp.float32(onp.float32(q) * d)
                assert bits(W[r, b * 32 + j]) == bits(onp.float32(want)), (r, b, j)


def test_float64_gets_the_float32_values_exactly():
    raw = random_blocks("Q4_1", 8, 64)
    W = Q.Q4_1Blocks.from_bytes(raw, 64)
    assert onp.array_equal(W.dequantize(dtype=onp.float64), W.dequantize().astype(onp.float64))


def test_rows_gathers_and_permutes_blocks():
    W = Q.Q4_1Blocks.from_bytes(random_blocks("Q4_1", 10, 64), 64)
    perm = rng.permutation(10)
    assert onp.array_equal(W.rows(perm).dequantize(), W.dequantize()[perm])
    ids = onp.array([[3, 3], [0, 9]])
    assert onp.array_equal(Q.embedding_rows(W, ids), W.dequantize()[ids])  # (2, 2, 64)
    E = Q.Q8_0Blocks.from_bytes(random_blocks("Q8_0", 10, 64), 64)
    assert onp.array_equal(Q.embedding_rows(E, ids), E.dequantize()[ids])
    dense = E.dequantize()
    assert Q.embedding_rows(dense, ids) is not None and onp.array_equal(Q.embedding_rows(dense, ids), dense[ids])


def test_memory_is_block_sized():
    W = Q.Q4_1Blocks.from_bytes(random_blocks("Q4_1", 64, 128), 64 * 2)
    assert W.nbytes == 64 * 128 // 32 * 20  # 5 bits a number
    E = Q.Q8_0Blocks.from_bytes(random_blocks("Q8_0", 64, 128), 128)
    assert E.nbytes == 64 * 128 // 32 * 34


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("dtype, tol", [(onp.float32, 1e-5), (onp.float64, 1e-12)])
def test_qlinear_equals_the_dense_linear(kind, dtype, tol, monkeypatch):
    monkeypatch.setattr(Q, "TILE_BYTES", 4 * 96 * 7)  # 7 rows a tile: 50 rows = 7 tiles, the last one short
    W = Q.FORMATS[kind].from_bytes(random_blocks(kind, 50, 96), 96)
    x = rng.standard_normal((2, 5, 96)).astype(dtype)
    y = Q.qlinear(x, W)
    dense = P.linear(x, W.dequantize(dtype=dtype))
    assert y.shape == (2, 5, 50) and y.dtype == dtype
    assert onp.abs(y - dense).max() <= tol * onp.abs(dense).max()


def test_qlinear_never_dequantizes_more_than_a_tile(monkeypatch):
    monkeypatch.setattr(Q, "TILE_BYTES", 4 * 64 * 8)  # 8 rows of float32
    W = Q.Q4_1Blocks.from_bytes(random_blocks("Q4_1", 40, 64), 64)
    seen = []
    real = Q.Q4_1Blocks.dequantize

    def spy(self, start=0, stop=None, dtype=onp.float32):
        out = real(self, start, stop, dtype)
        seen.append(out.shape[0])
        return out

    monkeypatch.setattr(Q.Q4_1Blocks, "dequantize", spy)
    x = rng.standard_normal((3, 64))
    grad(lambda u: (Q.qlinear(u, W) ** 2).sum())(x)  # forward and backward
    assert seen and max(seen) <= 8 and sum(seen) == 2 * 40  # 5 tiles forward, 5 backward


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_qlinear_vjp_is_dx_equals_g_w(kind, monkeypatch):
    """dX through qlinear = dX through the dense linear (autograd), float64, and = finite differences."""
    monkeypatch.setattr(Q, "TILE_BYTES", 4 * 64 * 6)
    W = Q.FORMATS[kind].from_bytes(random_blocks(kind, 20, 64), 64)
    dense = W.dequantize(dtype=onp.float64)
    x = rng.standard_normal((4, 64)) / (8.0 * onp.abs(dense).max())  # pre-activations O(1): tanh not saturated
    c = rng.standard_normal((4, 20))

    def loss_q(u):
        return (onp.tanh(Q.qlinear(u, W)) * c).sum()

    def loss_dense(u):
        return (onp.tanh(u @ dense.T) * c).sum()  # autograd's own matmul VJP

    gq, gd = grad(loss_q)(x), grad(loss_dense)(x)
    assert 0.1 < onp.abs(onp.tanh(x @ dense.T)).max() < 0.999
    assert onp.abs(gq - gd).max() <= 1e-12 * onp.abs(gd).max()
    e = onp.zeros_like(x)
    for idx in [(0, 0), (1, 17), (3, 63)]:
        e[idx] = 1e-6
        fd = (loss_q(x + e) - loss_q(x - e)) / 2e-6
        e[idx] = 0.0
        assert abs(fd - gq[idx]) <= 1e-7 * max(1.0, abs(fd))


def test_qlinear_trains_what_is_upstream_of_it():
    """A float32 LoRA-style B A path beside a frozen 4-bit W: gradients reach A and B only."""
    W = Q.Q4_1Blocks.from_bytes(quantized("Q4_1", 32, 64), 64)
    x = rng.standard_normal((6, 64)).astype(onp.float32)
    A = (0.1 * rng.standard_normal((4, 64))).astype(onp.float32)
    B = (0.1 * rng.standard_normal((32, 4))).astype(onp.float32)
    Wd = W.dequantize()

    def loss(th, frozen_linear):
        return (frozen_linear(x) + P.linear(P.linear(x, th[0]), th[1])).sum()

    gA, gB = grad(lambda th: loss(th, lambda u: Q.qlinear(u, W)))([A, B])
    rA, rB = grad(lambda th: loss(th, lambda u: u @ Wd.T))([A, B])
    assert gA.dtype == onp.float32
    assert onp.abs(gA - rA).max() <= 1e-5 * onp.abs(rA).max() and onp.abs(gB - rB).max() <= 1e-5 * onp.abs(rB).max()


def test_bad_input():
    with pytest.raises(ValueError, match="multiple of 32"):
        Q.Q4_1Blocks.from_bytes(onp.zeros((2, 20), onp.uint8), 40)
    with pytest.raises(ValueError, match=r"\(d_out, 40\) uint8"):
        Q.Q4_1Blocks.from_bytes(onp.zeros((2, 34), onp.uint8), 64)
    with pytest.raises(ValueError, match="uint8"):
        Q.Q8_0Blocks.from_bytes(onp.zeros((2, 34), onp.float32), 32)
    W = Q.Q4_1Blocks.from_bytes(random_blocks("Q4_1", 4, 64), 64)
    with pytest.raises(ValueError, match="x has 32 features but W is 4×64"):
        Q.qlinear(onp.zeros((2, 32)), W)


def test_linear_takes_either_kind_of_w():
    W = Q.Q4_1Blocks.from_bytes(random_blocks("Q4_1", 12, 64), 64)
    x, b = rng.standard_normal((2, 3, 64)), rng.standard_normal(12)
    dense = W.dequantize(dtype=onp.float64)
    want = onp.einsum("btj,oj->bto", x, dense) + b  # a different product from both paths
    assert onp.abs(Q.linear(x, W, b) - want).max() <= 1e-12 * onp.abs(want).max()
    assert onp.abs(Q.linear(x, dense, b) - want).max() <= 1e-12 * onp.abs(want).max()
    assert onp.abs(Q.linear(x, W) - (want - b)).max() <= 1e-12 * onp.abs(want).max()

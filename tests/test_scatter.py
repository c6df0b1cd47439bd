"""The indexing VJP's scatter (nn/autograd_vjps._scatter_add) against onp.add.at, bit for bit."""
from __future__ import annotations

import autograd
import autograd.numpy as anp
import numpy as onp
import pytest

from minipeft.nn import autograd_vjps as av


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("start", ["zeros", "previous"])
@pytest.mark.parametrize("V,shape", [(300, (8, 32)), (2, (8, 64)), (40, (5, 50)), (7, ())])
def test_row_scatter_is_add_at_bit_for_bit(dtype, start, V, shape):
    rng = onp.random.default_rng(V)
    d = 48
    ids = rng.integers(-V, V, shape)  # negative ids too; many repeats when V is small
    if ids.ndim == 2:
        ids[:, 0] = 1  # one heavy row ([CLS]-like), and (V = 2) every row heavy
    g = (rng.standard_normal(onp.shape(ids) + (d,)) * 10.0 ** rng.integers(-4, 4, onp.shape(ids) + (1,))).astype(dtype)
    A0 = onp.zeros((V, d), dtype) if start == "zeros" else rng.standard_normal((V, d)).astype(dtype)
    want, got = A0.copy(), A0.copy()
    onp.add.at(want, ids, g)
    assert av._index_kind(ids) == "rows"
    assert av._scatter_add(got, ids, g, "rows") is got
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("idx", [(slice(None), 0), slice(2, 9), (Ellipsis, 3), 4, (slice(None, None, -2), None)])
def test_basic_index_scatter_is_add_at(idx):
    rng = onp.random.default_rng(0)
    A = rng.standard_normal((10, 6, 5)).astype("float32")
    g = rng.standard_normal(A[idx].shape).astype("float32")
    want, got = A.copy(), A.copy()
    onp.add.at(want, idx, g)
    assert av._index_kind(idx) == "basic"
    assert av._scatter_add(got, idx, g, "basic").tobytes() == want.tobytes()


def test_other_indices_go_to_stock():
    assert av._index_kind(onp.array([True, False])) is None
    assert av._index_kind([0, 1]) is None
    assert av._index_kind((onp.array([0, 1]), onp.array([1, 0]))) is None
    assert av._index_kind(True) is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradient_of_a_gather_used_twice_is_stocks(dtype, monkeypatch):
    """d/dW of Σ c₁·W[ids] + Σ c₂·W[0]: two sparse cotangents into one leaf, the second added
    to the first's array (the path a tied or twice-read table takes)."""
    rng = onp.random.default_rng(1)
    W = rng.standard_normal((50, 40)).astype(dtype)
    ids = rng.integers(0, 50, (4, 30))
    c1 = rng.standard_normal((4, 30, 40)).astype(dtype)
    c2 = rng.standard_normal(40).astype(dtype)

    def f(w):
        return anp.sum(w[ids] * c1) + anp.sum(w[0] * c2)

    got = autograd.grad(f)(W)
    monkeypatch.setattr(av, "_index_kind", lambda idx: None)  # every index through stock untake (onp.add.at)
    want = autograd.grad(f)(W)
    assert got.dtype == W.dtype and got.tobytes() == want.tobytes()
    assert onp.allclose(got[0], c1.reshape(-1, 40)[ids.reshape(-1) == 0].sum(0) + c2, rtol=1e-4, atol=1e-4)

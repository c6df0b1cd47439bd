"""The add/subtract VJPs of nn/autograd_vjps (a same-shape cotangent handed on as it is) against
stock autograd's ``unbroadcast_f``, bit for bit, and through ``value_and_grad``."""
from __future__ import annotations

import autograd.numpy as anp
import autograd.numpy.numpy_vjps as stock
import numpy as onp
import pytest

import minipeft as mp
from minipeft.nn import autograd_vjps as V

PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((1, 4), (1, 4)),
         ((3, 4), ()), ((), (3, 4)), ((5,), (5,))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("xs, ys", PAIRS)
@pytest.mark.parametrize("op", ["add", "subtract"])
def test_add_and_subtract_vjps_give_stock_cotangents(op, xs, ys, dtype):
    rng = onp.random.default_rng(0)
    x, y = (rng.standard_normal(s).astype(dtype) for s in (xs, ys))
    ans = getattr(onp, op)(x, y)
    g = rng.standard_normal(onp.shape(ans)).astype(dtype)
    g[..., 0] = -0.0  # signed zeros pass unchanged
    neg = (lambda h: -h) if op == "subtract" else (lambda h: h)
    ours = [V._same_shape_or_unbroadcast(x)(g), V._same_shape_or_unbroadcast(y, anp.negative if op == "subtract"
                                                                                  else None)(g)]
    ref = [stock.unbroadcast_f(x, lambda h: h)(g), stock.unbroadcast_f(y, neg)(g)]
    for a, b, target in zip(ours, ref, (x, y)):
        a, b = onp.asarray(a), onp.asarray(b)
        assert a.shape == b.shape == onp.shape(target)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_value_and_grad_through_same_shape_adds():
    rng = onp.random.default_rng(1)
    theta = {"a": rng.standard_normal((4, 3)).astype("float32"), "b": rng.standard_normal((3,)).astype("float32"),
             "c": rng.standard_normal((4, 3)).astype("float32")}
    f = lambda t: anp.sum((t["a"] + t["b"] - t["c"]) ** 2 + t["a"] * (t["c"] + t["a"]))  # noqa: E731
    _, g = mp.value_and_grad(f, theta)
    r = theta["a"] + theta["b"] - theta["c"]
    assert onp.allclose(g["a"], 2 * r + theta["c"] + 2 * theta["a"], rtol=1e-6)
    assert onp.allclose(g["b"], (2 * r).sum(0), rtol=1e-6)
    assert onp.allclose(g["c"], -2 * r + theta["a"], rtol=1e-6)

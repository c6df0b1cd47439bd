"""Exercise layer-norm: x̂ = (x − μ(x)) / sqrt(σ²(x) + ε) and 1/sqrt(σ²(x) + ε) (equations.md, "Transformer").

The region is ``nn.primitives._ln_stats``, which ``layer_norm`` and its VJP share.
"""
import numpy as onp

import minipeft as mp
from exercise_helpers import check, check_close, check_gradient, check_same, naive_layer_norm, rng

HINT = ("over the last axis: μ = mean(x), σ² = mean((x − μ)²) (the biased variance, divide by d), "
        "x̂ = (x − μ) / sqrt(σ² + ε); return (x̂, 1/sqrt(σ² + ε)) with the statistics kept as (..., 1) columns")


def _x(shape=(2, 3, 8), seed=0, dtype="float64"):
    r = rng(seed)
    return (2.0 + 3.0 * r.standard_normal(shape)).astype(dtype), (1 + 0.3 * r.standard_normal(shape[-1])).astype(
        dtype), (0.3 * r.standard_normal(shape[-1])).astype(dtype)


def test_matches_a_loop_over_rows():
    for shape in ((5, 8), (2, 3, 8)):
        x, g, b = _x(shape)
        check_close(mp.nn.layer_norm(x, g, b, 1e-5), naive_layer_norm(x, g, b, 1e-5), f"LN(x) for x of shape {shape}",
                    HINT)


def test_epsilon_is_inside_the_square_root():
    x, g, b = _x((3, 8), seed=1)
    x[0] = 4.0  # a constant row: σ² = 0
    y = mp.nn.layer_norm(x, g, b, 1e-2)
    check_close(y, naive_layer_norm(x, g, b, 1e-2), "LN(x) with a constant row and ε = 1e-2",
                "ε goes inside the square root, sqrt(σ² + ε): a constant row then gives x̂ = 0 and LN(x) = β")


def test_input_is_not_modified():
    x, g, b = _x(seed=2)
    keep = x.copy()
    mp.nn.layer_norm(x, g, b, 1e-5)
    check_same(x, keep, "the input x after LN(x)",
               "do not subtract μ in place from x itself (x -= μ writes into the caller's array): make a new array")


def test_gradients_match_finite_differences():
    x, g, b = _x(seed=3)
    G = rng(4).standard_normal(x.shape)
    check_gradient(lambda v: onp.sum(G * mp.nn.layer_norm(v, g, b, 1e-5)), x, "∂L/∂x through LN", HINT)
    check_gradient(lambda v: onp.sum(G * mp.nn.layer_norm(x, v, b, 1e-5)), g, "∂L/∂γ through LN", HINT)


def test_float32_stays_float32():
    x, g, b = _x(dtype="float32", seed=5)
    y = mp.nn.layer_norm(x, g, b, 1e-5)
    check(y.dtype == onp.float32, f"float32 input gave LN(x) of dtype {y.dtype}",
          "use Python floats (1.0 / d) and array methods; a NumPy float64 scalar upcasts float32")

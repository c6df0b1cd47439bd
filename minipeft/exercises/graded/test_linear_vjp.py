"""Exercise linear-vjp: ∂L/∂W = gᵀ x of y = x Wᵀ + b on the 2-D views (equations.md, "Conventions").

The region is ``nn.primitives._linear_vjp_W``: given (ans, x, W, b) it returns the function
g ↦ ∂L/∂W, g = ∂L/∂y of shape (..., d_out).
"""
import numpy as onp
from autograd import grad

import minipeft as mp
from exercise_helpers import call, check, check_close, check_gradient, rng

HINT = ("y = x Wᵀ + b, so ∂L/∂W = Σ over every row (all leading axes) of gᵀ x: reshape g to (M, d_out) and x to "
        "(M, d_in), M = the product of the leading axes, and return g2ᵀ @ x2 of shape (d_out, d_in)")


def _xwbg(lead=(2, 3), d_in=5, d_out=4, seed=0, dtype="float64"):
    r = rng(seed)
    return tuple(r.standard_normal(s).astype(dtype) for s in (lead + (d_in,), (d_out, d_in), (d_out,),
                                                                lead + (d_out,)))


def test_matches_a_sum_over_rows():
    for lead in ((6,), (2, 3), (2, 1, 3)):
        x, W, b, G = _xwbg(lead)
        dW = call(grad(lambda w: onp.sum(G * mp.nn.linear(x, w, b))), W, what=f"∂L/∂W for x of shape {x.shape}",
                  hint=HINT)
        want = onp.zeros_like(W)
        for idx in onp.ndindex(lead):
            want += onp.outer(G[idx], x[idx])
        check_close(dW, want, f"∂L/∂W for x of shape {x.shape}", HINT)


def test_matches_finite_differences():
    x, W, b, G = _xwbg(seed=1)
    check_gradient(lambda w: onp.sum(G * onp.tanh(mp.nn.linear(x, w, b))), W, "∂L/∂W of Σ G ⊙ tanh(x Wᵀ + b)", HINT)


def test_float32_stays_float32():
    x, W, b, G = _xwbg(seed=2, dtype="float32")
    dW = call(grad(lambda w: onp.sum(G * mp.nn.linear(x, w, b))), W, what="∂L/∂W in float32", hint=HINT)
    check(dW.dtype == onp.float32, f"float32 inputs gave ∂L/∂W of dtype {dW.dtype}",
          "one matrix product of the float32 views keeps float32; avoid einsum and NumPy float64 scalars")

"""The float32 exact GELU's constants (``minipeft/nn/primitives.py``, ``_PHI_P``/``_PHI_R``).

    python benchmarks/gelu_erf_fit.py

Fits Φ(−a) = exp(−a²/2) · Q(a), a = |x| ≥ 0, with Q(a) = ½ erfcx(a/√2) = ½ exp(a²/2) erfc(a/√2)
(smooth, Q(0) = ½, Q(a) ~ 1/(a √(2π))) approximated by a rational function

    Q(a) ≈ P(a) / R(a),   P of degree 4,  R monic of degree 5,

minimising the largest relative error on [0, 14] (beyond, exp(−a²/2) underflows float32):
linearised least squares P − Q·R = 0 weighted by 1/(Q R) of the last iterate (Loeb's method)
with Lawson's reweighting towards the minimax error. Prints the coefficients (lowest order
first, as float32 values) and the fit's largest relative error in float64.
"""
from __future__ import annotations

import math

import numpy as onp

DEG_P, DEG_R, A_MAX, POINTS, ITERS = 4, 5, 14.0, 6000, 40


def target(a):
    """Q(a) = ½ erfcx(a/√2) in float64 (SciPy)."""
    from scipy.special import erfcx
    return 0.5 * erfcx(a / math.sqrt(2.0))


def fit():
    """(P's coefficients, R's coefficients below its leading 1; both lowest order first, float64), max rel. error."""
    a = onp.linspace(0.0, A_MAX, POINTS)
    f = target(a)
    A = onp.hstack([onp.vander(a, DEG_P + 1, increasing=True), -f[:, None] * onp.vander(a, DEG_R, increasing=True)])
    rhs = f * a ** DEG_R
    R, w = onp.ones_like(a), onp.ones_like(a)
    for _ in range(ITERS):
        W = w / (f * R)
        sol = onp.linalg.lstsq(A * W[:, None], rhs * W, rcond=None)[0]
        p, r = sol[:DEG_P + 1], sol[DEG_P + 1:]
        R = onp.polyval(onp.r_[1.0, r[::-1]], a)
        err = onp.polyval(p[::-1], a) / R / f - 1.0
        w = w * (onp.abs(err) / onp.abs(err).max() + 1e-3) ** 0.5
    return p, r, float(onp.abs(err).max())


def main():
    p, r, err = fit()
    f32 = lambda c: ", ".join(repr(float(onp.float32(v))) for v in c)  # noqa: E731
    print(f"_PHI_P = ({f32(p)})")
    print(f"_PHI_R = ({f32(r)})")
    print(f"max relative error of the fit on [0, {A_MAX}] (float64): {err:.2e}")


if __name__ == "__main__":
    main()

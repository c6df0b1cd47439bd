"""GEMM rates of the shapes a step runs, and two layouts we measured before deciding against them.

    python benchmarks/gemm_rates.py [--out benchmarks/gemm_rates.md]

One BLAS thread, float32, NumPy's BLAS (the kernel is printed). For each size — the
benchmark's ViT (batch 64, T = 17 or 65 tokens: M = 64·T rows, d ∈ {64, 128, 256}) and
all-MiniLM-L6-v2 (batch 8 × 32 or × 128 tokens, d = 384) — it times, interleaved (median CPU
time of the rounds, each timed call repeating its products to about 5 ms; benchmarks/measure.py):

  q/k/v      the three projections of one input as three GEMMs x W_iᵀ + b_i, against one GEMM
             x [W_q; W_k; W_v]ᵀ + [b_q b_k b_v] (the stack built once): what stacking could save
             in a forward pass (the backward's dX = Σ g_i W_i is three products either way
             unless the three cotangents are first copied side by side)
  x Wᵀ       ``linear``'s forward as it is (W stored d_out × d_in, so BLAS gets a transposed
             operand), against the same product with a contiguous copy of Wᵀ (kept beside W:
             one more copy of every frozen weight)

and prints GFLOP/s (2·M·K·N per product over the median time), the ratio of each pair and
whether the two layouts give the same bits. A ratio below 1: the alternative is faster.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # before NumPy loads its BLAS

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as onp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402

#: (label, M rows, d): the ViT of bench.py (batch 64) and MiniLM (batch 8, d = 384)
SIZES = [(f"ViT d={d}, T={T}", 64 * T, d) for d in (64, 128, 256) for T in (17, 65)] + \
        [(f"MiniLM 8×{n}", 8 * n, 384) for n in (32, 128)]


def gflops(flop, seconds):
    return flop / seconds / 1e9


def one_size(M, d, budget, rng):
    """Both comparisons at M rows and width d: {"qkv"|"xWT": (GFLOP/s as is, GFLOP/s of the
    alternative, its ratio (measure.ratio), same bits)}."""
    x = rng.standard_normal((M, d)).astype("float32")
    Ws = [rng.standard_normal((d, d)).astype("float32") * d ** -0.5 for _ in range(3)]
    bs = [rng.standard_normal(d).astype("float32") for _ in range(3)]
    W3, b3 = onp.concatenate(Ws), onp.concatenate(bs)
    WT = onp.ascontiguousarray(Ws[0].T)
    reps = max(1, int(5e-3 / (6.0 * M * d * d / 80e9)))  # each timed call ≈ 5 ms: repeated products
    fns = {"qkv three": lambda: [[x @ W.T + b for W, b in zip(Ws, bs)] for _ in range(reps)],
           "qkv stacked": lambda: [x @ W3.T + b3 for _ in range(reps)],
           "xWT as is": lambda: [x @ Ws[0].T for _ in range(3 * reps)],
           "xWT contiguous": lambda: [x @ WT for _ in range(3 * reps)]}
    res = measure.interleave(fns, measure.rounds_for(4 * 5e-3, budget, lo=9, hi=61), warmup=1)
    t = {k: v["cpu"]["median"] / reps for k, v in res.items()}
    three = onp.concatenate([x @ W.T + b for W, b in zip(Ws, bs)], axis=1)
    return {"qkv": (gflops(6 * M * d * d, t["qkv three"]), gflops(6 * M * d * d, t["qkv stacked"]),
                    measure.ratio(res, "qkv stacked", "qkv three"), bool((three == x @ W3.T + b3).all())),
            "xWT": (gflops(6 * M * d * d, t["xWT as is"]), gflops(6 * M * d * d, t["xWT contiguous"]),
                    measure.ratio(res, "xWT contiguous", "xWT as is"), bool((x @ Ws[0].T == x @ WT).all()))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=1.5, help="CPU seconds of timed rounds per size")
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    a = ap.parse_args(argv)
    from minipeft import runtime
    out = measure.Report()
    blas = "; ".join(f"{b['api']} {b['version']}, kernel {b['architecture']}" for b in runtime.blas_libraries())
    out(f"float32, one thread, NumPy {onp.__version__} ({blas}); {measure.load_line('at the start')}")
    out(f"NumPy GEMM peak (one 2048³ product, best of 5): {measure.blas_peak('float32'):.0f} GFLOP/s")
    out("")
    out("| size | M × d | q/k/v: three GEMMs GFLOP/s | one stacked | stacked / three (IQR) | same bits "
        "| x Wᵀ as stored GFLOP/s | with contiguous Wᵀ | contiguous / as stored (IQR) | same bits |")
    out("|---|---|---:|---:|---|---|---:|---:|---|---|")
    rng = onp.random.default_rng(0)
    for label, M, d in SIZES:
        r = one_size(M, d, a.budget, rng)
        cells = []
        for k in ("qkv", "xWT"):
            g1, g2, q, same = r[k]
            cells.append(f"{g1:.0f} | {g2:.0f} | {q['cpu']:.3f} ({q['iqr'][0]:.2f}–{q['iqr'][1]:.2f}) | "
                         f"{'yes' if same else 'no'}")
        out(f"| {label} | {M} × {d} | " + " | ".join(cells) + " |")
    out("")
    out(measure.load_line("at the end"))
    if a.out:
        out.write(a.out, "gemm_rates.py")


if __name__ == "__main__":
    main()

"""Attention's per-head products A Bᵀ (Q Kᵀ, G Vᵀ) two ways, side by side, over a grid of head
widths d_h and key counts S, float32 and float64, one thread:

    view   np.matmul(A, B.swapaxes(-1, -2))       BLAS's kernel for a transposed operand
    copy   Bᵀ copied into C order, then np.matmul   its plain kernel, plus the copy

A, B are heads of (batch, n, h·d_h) activations (strided views, as in ``nn.attention``), batch
64, h = 4, T = S. ``nn.attention._transposed`` takes "copy" where d_h ≤ _NN_MAX_DH and
S ≥ _NN_MIN_KEYS; the table says, for each cell, which was faster here and whether that rule
picked it, so the rule can be checked on another machine or BLAS build.

    python benchmarks/transpose_bench.py --out benchmarks/transpose_results.md
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # before NumPy loads its BLAS

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as onp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402

At = importlib.import_module("minipeft.nn.attention")
BATCH, HEADS = 64, 4
D_H = (16, 32, 64)
KEYS = (9, 17, 33, 65, 129)


def pair(dtype, d_h, S, rng):
    """{"view": fn, "copy": fn}: the product Q Kᵀ per head at (BATCH, HEADS, S, d_h), each into one
    preallocated output; the two results are checked to agree first."""
    Q, K = (rng.standard_normal((BATCH, S, HEADS * d_h)).astype(dtype) for _ in range(2))
    Qh, Kh = (X.reshape(BATCH, S, HEADS, d_h).transpose(0, 2, 1, 3) for X in (Q, K))  # (B, h, S, d_h) views
    out, Kt = onp.empty((BATCH, HEADS, S, S), dtype), onp.empty((BATCH, HEADS, d_h, S), dtype)

    def view():
        onp.matmul(Qh, Kh.swapaxes(-1, -2), out=out)

    def copy():
        onp.copyto(Kt, Kh.swapaxes(-1, -2))
        onp.matmul(Qh, Kt, out=out)

    want = onp.matmul(Qh, Kh.swapaxes(-1, -2))
    copy()
    tol = 1e-4 if dtype == "float32" else 1e-12
    if not onp.allclose(out, want, rtol=tol, atol=tol * onp.abs(want).max()):
        raise SystemExit(f"d_h={d_h}, S={S}, {dtype}: the two ways disagree")
    return {"view": view, "copy": copy}


def repeated(fn, reps):
    """fn called ``reps`` times in a row, as one timed call (CPU-clock granularity)."""
    def run():
        for _ in range(reps):
            fn()
    return run


def cell(dtype, d_h, S, rounds, rng):
    """One cell of the grid, timed: {"dtype", "d_h", "S", "view_ms", "copy_ms", "ratio" (copy / view,
    median of the per-round ratios), "iqr", "faster", "picks" (the rule's way), "verdict"}. The
    verdict is "yes" when the rule picks the faster way, "tie" when it does not but the ratio's
    interquartile range straddles 1, else "NO"."""
    fns = pair(dtype, d_h, S, rng)
    reps = max(1, int(0.005 / max(measure.interleave({"x": fns["view"]}, 3)["x"]["cpu"]["median"], 1e-6)))
    res = measure.interleave({k: repeated(f, reps) for k, f in fns.items()}, rounds)
    r = measure.ratio(res, "copy", "view")
    faster = "copy" if r["cpu"] < 1 else "view"
    picks = "copy" if At.copies_transposed(S, d_h) else "view"
    tie = r["iqr"][0] <= 1 <= r["iqr"][1]
    return {"dtype": dtype, "d_h": d_h, "S": S, "view_ms": res["view"]["cpu"]["median"] / reps * 1e3,
            "copy_ms": res["copy"]["cpu"]["median"] / reps * 1e3, "ratio": r["cpu"], "iqr": list(r["iqr"]),
            "faster": faster, "picks": picks, "verdict": "yes" if faster == picks else ("tie" if tie else "NO")}


def main(argv=None):
    """Time the grid (module docstring), print the table, and with --out write it (--json: the
    cells' exact figures too); returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    ap.add_argument("--json", default=None, help="also write the cells to this JSON file")
    a = ap.parse_args(argv)
    from minipeft import runtime
    runtime.apply()
    out = measure.Report()
    out(f"numpy {onp.__version__}; BLAS {runtime.blas_libraries()}; one thread; batch {BATCH}, h = {HEADS}, "
        f"T = S; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {measure.load_line('at the start')}")
    out(f"copy / view = CPU time of the copied-operand product over the transposed-view product (median of "
        f"{a.rounds} interleaved rounds, IQR after it; < 1: copying pays). Rule: copy where d_h ≤ "
        f"{At._NN_MAX_DH} and S ≥ {At._NN_MIN_KEYS}.")
    out()
    out("| dtype | d_h | S | view ms | copy ms | copy / view (IQR) | faster | rule picks | rule right |")
    out("|---|---:|---:|---:|---:|---|---|---|---|")
    rng = onp.random.default_rng(0)
    cells = []
    for dtype in ("float32", "float64"):
        for d_h in D_H:
            for S in KEYS:
                c = cell(dtype, d_h, S, a.rounds, rng)
                cells.append(c)
                out(f"| {dtype} | {d_h} | {S} | {c['view_ms']:.3f} | {c['copy_ms']:.3f} | {c['ratio']:.3f} "
                    f"({c['iqr'][0]:.3f}-{c['iqr'][1]:.3f}) | {c['faster']} | {c['picks']} | {c['verdict']} |")
    out()
    right = sum(c["verdict"] != "NO" for c in cells)
    out(f"the rule picks the faster way, or one of two that tie (IQR of the ratio around 1), in {right} of "
        f"{len(cells)} cells; {measure.load_line('at the end')}")
    if a.out:
        out.write(a.out, "transpose_bench.py")
    if a.json:
        Path(a.json).write_text(json.dumps(cells, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

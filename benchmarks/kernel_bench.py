"""minipeft's element-wise kernels side by side with PyTorch's, forward + backward, at
all-MiniLM-L6-v2's shapes (d = 384, h = 12, d_ff = 1536, batch 8), float32, one thread.

    python benchmarks/kernel_bench.py --out benchmarks/kernel_results.md

Each kernel is timed as one forward and one backward (the VJP of a fixed cotangent g):
  layer_norm   LN(x) over rows of 384 (ε = 1e-12, BERT's), x (8·n, 384)
  softmax      over the last axis of scores (8, 12, n, n)
  gelu_erf     ½ x (1 + erf(x/√2)), x (8·n, 1536);  gelu_tanh the tanh form
  attention    A = softmax(Q Kᵀ/√d_h) per head, Q, K (8, n, 384) -> (8, 12, n, n)
               (minipeft's fused ``attention_weights``; in torch the same equations)
minipeft: ``autograd.make_vjp`` of the primitive (what a training step runs); torch: the
op with ``requires_grad`` inputs and ``.backward(g)``. Before timing, each pair's output and
input gradient are checked to agree (relative error, float32). Timing interleaves the two
(measure.py, CPU time, median of per-round ratios); below 1 means minipeft is faster.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # before NumPy loads its BLAS

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as onp  # noqa: E402
from autograd import make_vjp  # noqa: E402

from minipeft.nn import primitives as P  # noqa: E402
from minipeft.nn.attention import attention_weights  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402

BATCH, D, H, D_FF = 8, 384, 12, 1536
#: agreement required before timing (float32; the two sides round differently)
RTOL = 1e-5


def cases(torch, n, rng):
    """[(name, minipeft fn of x, torch fn of x, [inputs])] at n tokens; fns of several inputs
    take them all (gradients of the first are checked; of all, computed)."""
    F = torch.nn.functional
    g1, b1 = (rng.standard_normal(D).astype("float32") for _ in range(2))
    tg, tb = torch.tensor(g1), torch.tensor(b1)
    scale = 1.0 / math.sqrt(D // H)

    def heads(X):
        return X.view(BATCH, n, H, D // H).transpose(1, 2)

    return [
        ("layer_norm", lambda x: P.layer_norm(x, g1, b1, 1e-12), lambda x: F.layer_norm(x, (D,), tg, tb, 1e-12),
         [rng.standard_normal((BATCH * n, D)).astype("float32")]),
        ("softmax", P.softmax, lambda z: torch.softmax(z, -1),
         [(3 * rng.standard_normal((BATCH, H, n, n))).astype("float32")]),
        ("gelu_erf", P.gelu_erf, F.gelu, [rng.standard_normal((BATCH * n, D_FF)).astype("float32")]),
        ("gelu_tanh", P.gelu, lambda x: F.gelu(x, approximate="tanh"),
         [rng.standard_normal((BATCH * n, D_FF)).astype("float32")]),
        ("attention weights", lambda q, k: attention_weights(q, k, H),
         lambda q, k: torch.softmax(heads(q) @ heads(k).transpose(-1, -2) * scale, -1),
         [rng.standard_normal((BATCH, n, D)).astype("float32") for _ in range(2)]),
    ]


def pair(torch, f_mp, f_t, xs, g):
    """(minipeft step, torch step, worst relative error of output and first input's gradient)."""
    argnums = tuple(range(len(xs)))

    def run_mp():
        vjp, y = make_vjp(f_mp, argnums)(*xs)
        return y, vjp(g)

    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    gt = torch.tensor(g)

    def run_t():
        for t in ts:
            t.grad = None
        y = f_t(*ts)
        y.backward(gt)
        return y, [t.grad for t in ts]

    y, gx = run_mp()
    yt, gxt = run_t()
    err = max(rel(y, yt.detach().numpy()), rel(gx[0], gxt[0].numpy()))
    return run_mp, run_t, err


def rel(a, b):
    a, b = onp.asarray(a, dtype=onp.float64), onp.asarray(b, dtype=onp.float64)
    return float(onp.linalg.norm(a - b) / max(onp.linalg.norm(b), 1e-30))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    a = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        raise SystemExit(f"needs the crosscheck extra ({e}): python -m pip install -e \".[crosscheck]\"")
    torch.set_num_threads(1)
    from minipeft import runtime
    runtime.apply()
    out = measure.Report()  # prints each line and keeps it for --out

    out(f"float32, batch {BATCH}, one thread; torch {torch.__version__}, numpy {onp.__version__}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {measure.load_line('at the start')}")
    out("ratio = minipeft / torch, forward + backward of one kernel (CPU time, median of interleaved rounds; "
        "< 1: minipeft faster)")
    out()
    out("| tokens | kernel | shape | minipeft / torch | IQR | agreement (max rel. err.) |")
    out("|---:|---|---|---:|---|---:|")
    rng = onp.random.default_rng(0)
    for n in a.tokens:
        for name, f_mp, f_t, xs in cases(torch, n, rng):
            y = f_mp(*xs)
            g = rng.standard_normal(y.shape).astype("float32")
            run_mp, run_t, err = pair(torch, f_mp, f_t, xs, g)
            if err > RTOL:
                raise SystemExit(f"{name} at {n} tokens: minipeft and torch disagree, relative error {err:.2e}")
            res = measure.interleave({"minipeft": run_mp, "torch": run_t}, a.rounds)
            r = measure.ratio(res, "minipeft", "torch")
            shape = " × ".join(str(s) for s in xs[0].shape)
            out(f"| {n} | {name} | {shape} | {r['cpu']:.2f} | {r['iqr'][0]:.2f}-{r['iqr'][1]:.2f} | {err:.1e} |")
    out()
    out(measure.load_line("at the end"))
    if a.out:
        out.write(a.out, "kernel_bench.py")


if __name__ == "__main__":
    main()

"""minipeft's element-wise kernels side by side with PyTorch's, forward + backward, float32,
one thread, at the shapes the models run them: all-MiniLM-L6-v2 (d = 384, h = 12,
d_ff = 1536, batch 8 × 32 and 8 × 128 tokens) and the toy ViT (d = 128, h = 4, d_ff = 2d,
T = 65, batch 64 and 256).

    python benchmarks/kernel_bench.py --out benchmarks/kernel_results.md
    python benchmarks/kernel_bench.py --baseline ../main   # also another checkout's kernels

Each kernel is timed as one forward and one backward (the VJP of a fixed cotangent g):
  layer_norm   LN(x) over rows of d, x (batch·n, d) (ε = 1e-12 for MiniLM, 1e-5 for the toy)
  softmax      over the last axis of scores (batch, h, n, n)
  gelu_erf     ½ x (1 + erf(x/√2)), x (batch·n, d_ff) (MiniLM);  gelu_tanh the tanh form
  attention    A = softmax(Q Kᵀ/√d_h) per head, Q, K (batch, n, d) -> (batch, h, n, n)
               (minipeft's fused ``attention_weights``; in torch the same equations)
  attention Z  Z = concat_heads(A V), Q, K, V (batch, n, d) -> (batch, n, d) (minipeft's
               ``attention``, traced: one node, forward and backward; in torch the same equations)
minipeft: ``autograd.make_vjp`` of the primitive (what a training step runs); torch: the
op with ``requires_grad`` inputs and ``.backward(g)``. Before timing, each pair's output and
input gradient are checked to agree (relative error, float32). Timing interleaves the sides
(measure.py, CPU time, median of per-round ratios, each round a few calls); below 1 means
minipeft is faster. ``--baseline DIR`` loads DIR/minipeft/nn/primitives.py and attention.py as
a second, standalone package and times its kernels in the same rounds, so "before / after" is
measured side by side too.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # before NumPy loads its BLAS

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as onp  # noqa: E402
from autograd import make_vjp  # noqa: E402

from minipeft.nn import primitives as P  # noqa: E402
from minipeft.nn.attention import attention, attention_weights  # noqa: E402

ATTENTION = {P: attention_weights}  # primitives module -> the attention_weights built on it
ATTENTION_Z = {P: attention}  # primitives module -> the attention built on it

sys.path.insert(0, str(Path(__file__).resolve().parent))
import headline  # noqa: E402
import measure  # noqa: E402

#: (model, batch, tokens n, d, heads h, d_ff, LayerNorm ε, activation)
SHAPES = [("MiniLM", 8, 32, 384, 12, 1536, 1e-12, "erf"), ("MiniLM", 8, 128, 384, 12, 1536, 1e-12, "erf"),
          ("toy ViT", 64, 65, 128, 4, 256, 1e-5, "tanh"), ("toy ViT", 256, 65, 128, 4, 256, 1e-5, "tanh")]
#: agreement required before timing (float32; the two sides round differently)
RTOL = 1e-5
#: each timed call repeats the kernel until it takes about this long (CPU-clock granularity, noise)
CALL_S = 0.005


def cases(torch, shape, rng, base=None):
    """[(name, {side: fn}, torch fn, [inputs])] at one shape; fns of several inputs take them
    all (gradients of the first are checked; of all, computed). ``base``: a second primitives
    module (``load_base``), timed as the side "base"."""
    _, B, n, D, H, D_FF, eps, act = shape
    F = torch.nn.functional
    g1, b1 = (rng.standard_normal(D).astype("float32") for _ in range(2))
    tg, tb = torch.tensor(g1), torch.tensor(b1)
    scale = 1.0 / math.sqrt(D // H)

    def heads(X):
        return X.view(B, n, H, D // H).transpose(1, 2)

    def sides(name, f):
        out = {"minipeft": f(P)}
        if base is not None:
            out["base"] = f(base)
        return out

    act_case = (("gelu_erf", lambda M: M.gelu_erf, F.gelu) if act == "erf" else
                ("gelu_tanh", lambda M: M.gelu, lambda x: F.gelu(x, approximate="tanh")))
    return [
        ("layer_norm", sides("layer_norm", lambda M: lambda x: M.layer_norm(x, g1, b1, eps)),
         lambda x: F.layer_norm(x, (D,), tg, tb, eps), [rng.standard_normal((B * n, D)).astype("float32")]),
        ("softmax", sides("softmax", lambda M: M.softmax), lambda z: torch.softmax(z, -1),
         [(3 * rng.standard_normal((B, H, n, n))).astype("float32")]),
        (act_case[0], sides(act_case[0], act_case[1]), act_case[2],
         [rng.standard_normal((B * n, D_FF)).astype("float32")]),
        ("attention weights", sides("attention weights", lambda M: lambda q, k: ATTENTION[M](q, k, H)),
         lambda q, k: torch.softmax(heads(q) @ heads(k).transpose(-1, -2) * scale, -1),
         [rng.standard_normal((B, n, D)).astype("float32") for _ in range(2)]),
        ("attention Z", sides("attention Z", lambda M: lambda q, k, v: ATTENTION_Z[M](q, k, v, H)),
         lambda q, k, v: (torch.softmax(heads(q) @ heads(k).transpose(-1, -2) * scale, -1) @ heads(v))
         .transpose(1, 2).reshape(B, n, D),
         [rng.standard_normal((B, n, D)).astype("float32") for _ in range(3)]),
    ]


def step_mp(f, xs, g):
    argnums = tuple(range(len(xs)))

    def run():
        vjp, y = make_vjp(f, argnums)(*xs)
        return y, vjp(g)

    return run


def step_torch(f_t, xs, g):
    ts = [torch_.tensor(x, requires_grad=True) for x in xs]
    gt = torch_.tensor(g)

    def run():
        for t in ts:
            t.grad = None
        y = f_t(*ts)
        y.backward(gt)
        return y, [t.grad for t in ts]

    return run


def rel(a, b):
    a, b = onp.asarray(a, dtype=onp.float64), onp.asarray(b, dtype=onp.float64)
    return float(onp.linalg.norm(a - b) / max(onp.linalg.norm(b), 1e-30))


def repeated(fn, reps):
    def run():
        for _ in range(reps):
            fn()
    return run


def load_base(root):
    """DIR/minipeft/nn/primitives.py and attention.py as the standalone package ``baseline_nn``
    (they import only NumPy, SciPy, autograd, math and each other; nn/__init__.py is not run);
    returns its primitives module, its attention_weights and attention registered in ``ATTENTION``, ``ATTENTION_Z``."""
    folder = Path(root) / "minipeft" / "nn"
    pkg = types.ModuleType("baseline_nn")
    pkg.__path__ = [str(folder)]
    sys.modules["baseline_nn"] = pkg
    mods = {}
    for name in ("primitives", "attention"):
        path = folder / f"{name}.py"
        if not path.is_file():
            raise SystemExit(f"--baseline: no {path}")
        spec = importlib.util.spec_from_file_location(f"baseline_nn.{name}", path)
        mods[name] = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[name])
    ATTENTION[mods["primitives"]] = mods["attention"].attention_weights
    ATTENTION_Z[mods["primitives"]] = mods["attention"].attention
    return mods["primitives"]


torch_ = None


def main():
    global torch_
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--baseline", default=None,
                    help="another checkout whose minipeft/nn/primitives.py and attention.py are timed too")
    ap.add_argument("--only", default=None, help="only shapes of this model (MiniLM or toy)")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    a = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        raise SystemExit(f"needs the crosscheck extra ({e}): python -m pip install -e \".[crosscheck]\"")
    torch_ = torch
    torch.set_num_threads(1)
    from minipeft import runtime
    runtime.apply()
    base = load_base(a.baseline) if a.baseline else None
    out = measure.Report()  # prints each line and keeps it for --out

    out(f"float32, one thread; torch {torch.__version__}, numpy {onp.__version__}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {measure.load_line('at the start')}")
    for side, libs in headline.blas_kernels(torch).items():
        out(f"BLAS, {side}: {'; '.join(libs)}")
    out("ratio = minipeft / torch, forward + backward of one kernel (CPU time, median of interleaved rounds; "
        "< 1: minipeft faster)" + ("; base = the kernels of " + str(a.baseline) + ", timed in the same rounds"
                                   if base is not None else ""))
    out()
    extra = " base / torch | minipeft / base |" if base is not None else ""
    out("| model | batch × tokens | kernel | shape | minipeft / torch | IQR |" + extra + " agreement (max rel. err.) |")
    out("|---|---|---|---|---:|---|" + ("---:|---:|" if base is not None else "") + "---:|")
    rng = onp.random.default_rng(0)
    for shape in SHAPES:
        if a.only and not shape[0].lower().startswith(a.only.lower()):
            continue
        for name, fs, f_t, xs in cases(torch, shape, rng, base):
            y = fs["minipeft"](*xs)
            g = rng.standard_normal(y.shape).astype("float32")
            runs = {k: step_mp(f, xs, g) for k, f in fs.items()}
            runs["torch"] = step_torch(f_t, xs, g)
            (y, gx), (yt, gxt) = runs["minipeft"](), runs["torch"]()
            err = max(rel(y, yt.detach().numpy()), rel(gx[0], gxt[0].numpy()))
            if err > RTOL:
                raise SystemExit(f"{name} at {shape}: minipeft and torch disagree, relative error {err:.2e}")
            t0 = time.process_time()
            runs["minipeft"]()
            reps = max(1, int(CALL_S / max(time.process_time() - t0, 1e-6)))
            res = measure.interleave({k: repeated(f, reps) for k, f in runs.items()}, a.rounds)
            r = measure.ratio(res, "minipeft", "torch")
            cols = ""
            if base is not None and "base" in runs:
                cols = (f" {measure.ratio(res, 'base', 'torch')['cpu']:.2f} |"
                        f" {measure.ratio(res, 'minipeft', 'base')['cpu']:.2f} |")
            elif base is not None:
                cols = " – | – |"
            shp = " × ".join(str(s) for s in xs[0].shape)
            out(f"| {shape[0]} | {shape[1]} × {shape[2]} | {name} | {shp} | {r['cpu']:.2f} | "
                f"{r['iqr'][0]:.2f}-{r['iqr'][1]:.2f} |{cols} {err:.1e} |")
    out()
    tiny = [onp.float32([[0.5, -0.5]])]  # the fixed cost each timed call carries: autograd's trace, torch's graph
    reps = 200
    res = measure.interleave({"minipeft": repeated(step_mp(P.softmax, tiny, tiny[0]), reps),
                              "torch": repeated(step_torch(lambda z: torch.softmax(z, -1), tiny, tiny[0]), reps)},
                             a.rounds)
    us = {k: res[k]["cpu"]["median"] / reps * 1e6 for k in res}
    out(f"fixed cost in each kernel's figure (softmax of a 1 × 2 array, forward + backward, CPU time per call): "
        f"minipeft {us['minipeft']:.0f} µs (autograd's make_vjp and backward pass), torch {us['torch']:.0f} µs; "
        f"a training step pays autograd's trace once, not once per kernel")
    out(measure.load_line("at the end"))
    if a.out:
        out.write(a.out, "kernel_bench.py")


if __name__ == "__main__":
    main()

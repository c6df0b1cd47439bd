"""Before / after of one training step: this checkout's minipeft against another checkout's, each
in a worker process of its own, the two driven alternately.

    python benchmarks/ab_step.py --baseline /work/wt/base --d 64 128 --kinds full lora

Two checkouts cannot be imported into one process (both are the package ``minipeft``), so each
side is a long-lived worker (``python benchmarks/ab_step.py worker``, PYTHONPATH set to its
checkout) that builds the benchmark's step (cases.py ``mp_step(Case(d, T, dtype), kind)``, after
``minipeft.runtime.apply()`` as every entry point does) and, on each request, runs a few steps and
answers their CPU time (``time.process_time``: its own threads only). The controller asks the two
in turn, this side first in even rounds and the baseline first in odd ones, so a slow spell of a
shared machine lands on both; a ratio is the median of the per-round ratios (this / baseline),
with their interquartile range. ``--bits`` also compares the step's loss and every gradient (of
θ, before Adam's update) between the two sides, bit for bit.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # before NumPy loads its BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as onp  # noqa: E402

HERE = Path(__file__).resolve().parent


def worker():
    """Answer one JSON request a line: {"case": [d, T, dtype, kind]} builds the step,
    {"run": n} runs n steps and answers their CPU time, {"bits": path} saves loss and gradients."""
    sys.path.insert(0, str(Path.cwd() / "benchmarks"))  # the side's own cases.py (cwd: its checkout)
    from minipeft import runtime
    runtime.apply()
    import minipeft as mp
    from minipeft import tree

    import cases
    step = case = kind = None
    for line in sys.stdin:
        req = json.loads(line)
        if "case" in req:
            d, T, dtype, kind = req["case"]
            case = cases.Case(d, T, dtype)
            step = cases.mp_step(case, kind)
            step()  # untimed: first-touch costs
            out = {"ok": mp.__file__}
        elif "run" in req:
            c0 = time.process_time()
            for _ in range(req["run"]):
                step()
            out = {"cpu": time.process_time() - c0}
        else:  # bits: the loss and θ's gradients of one step, before any update
            params, methods, pred = case.setup(kind)
            theta, phi = mp.split(params, pred)
            loss, g = mp.value_and_grad(lambda th: mp.loss(th, phi, case.x, case.y, case.cfg, methods,
                                                           checked=True), theta)
            arrays = {"loss": onp.asarray(loss)}
            arrays.update({"/".join(map(str, p)): onp.asarray(v) for p, v in tree.leaves_with_paths(g)})
            onp.savez(req["bits"], **arrays)
            out = {"saved": len(arrays)}
        print(json.dumps(out), flush=True)


class Side:
    def __init__(self, root):
        env = dict(os.environ, PYTHONPATH=str(root))
        self.p = subprocess.Popen([sys.executable, __file__, "worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=str(root))

    def ask(self, **req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit("a worker died")
        return json.loads(line)

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="the other checkout (its root)")
    ap.add_argument("--d", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--T", type=int, default=65)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--kinds", nargs="+", default=["full", "lora"])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--steps", type=int, default=3, help="steps per side per round")
    ap.add_argument("--bits", action="store_true", help="also compare loss and gradients bit for bit")
    a = ap.parse_args()
    this = HERE.parent
    sides = {"this": Side(this), "base": Side(Path(a.baseline).resolve())}
    sys.path[:0] = [str(HERE), str(this)]
    import cases
    print(f"this = {this}, base = {Path(a.baseline).resolve()}; toy ViT, batch {cases.BATCH}, T = {a.T}, "
          f"{a.dtype}; {a.rounds} rounds of {a.steps} steps per side")
    print("| d | step | this / base (CPU, median of rounds) | IQR | bits (loss, gradients) |")
    print("|---:|---|---:|---|---|")
    try:
        for d in a.d:
            for kind in a.kinds:
                for k, s in sides.items():
                    where = s.ask(case=[d, a.T, a.dtype, kind])["ok"]
                    if not where.startswith(str(Path(a.baseline).resolve() if k == "base" else this)):
                        raise SystemExit(f"{k}: imported minipeft from {where}")
                bits = "–"
                if a.bits:
                    paths = {k: f"/tmp/ab_step_{os.getpid()}_{k}.npz" for k in sides}
                    for k, s in sides.items():
                        s.ask(bits=paths[k])
                    x, y = onp.load(paths["this"]), onp.load(paths["base"])
                    same = sorted(x.files) == sorted(y.files) and all(onp.array_equal(x[f], y[f]) for f in x.files)
                    if same:
                        bits = f"identical ({len(x.files)} arrays)"
                    else:
                        worst = max(float(onp.abs(x[f].astype(float) - y[f]).max() / max(onp.abs(y[f]).max(), 1e-30))
                                    for f in x.files)
                        bits = f"differ: max |Δ|/max|value| {worst:.1e}"
                    for p in paths.values():
                        os.remove(p)
                ratios = []
                for r in range(a.rounds):
                    order = ["this", "base"] if r % 2 == 0 else ["base", "this"]
                    t = {k: sides[k].ask(run=a.steps)["cpu"] for k in order}
                    ratios.append(t["this"] / t["base"])
                q = onp.percentile(ratios, [25, 50, 75])
                print(f"| {d} | {kind} | {q[1]:.3f} | {q[0]:.3f}-{q[2]:.3f} | {bits} |", flush=True)
    finally:
        for s in sides.values():
            s.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
    else:
        main()

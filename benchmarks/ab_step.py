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
θ, before Adam's update) between the two sides, bit for bit; ``--minilm-bits 32 128`` the same for
all-MiniLM-L6-v2 (forward logits, LoRA and full steps, some keys padded).
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
        elif "minilm" in req:  # bits on all-MiniLM-L6-v2: forward logits, LoRA and full loss and gradients
            n, path = req["minilm"]
            arrays = minilm_bits(n)
            onp.savez(path, **arrays)
            out = {"saved": len(arrays)}
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


def minilm_bits(n):
    """{name: array}: all-MiniLM-L6-v2 (float32) at 8 × n tokens of minilm_bench.py's batch, half the
    texts ending in 5 padding tokens: the forward's logits, and the loss and every gradient of a
    LoRA (r = 8 on q, v, B ≠ 0) step and of a full fine-tuning step."""
    import minipeft as mp
    from minipeft import tree
    from minipeft.methods import method_class
    from minipeft.models import minilm as M

    import minilm_bench as mb
    params, cfg, tok = M.load(n_classes=mb.CLASSES, pool="mean", dtype="float32")
    x, y = mb.batch(tok, n)
    x[::2, 2, -5:] = 0  # padding: hidden keys
    out = {"forward": onp.asarray(mp.forward(params, x, cfg))}
    lora = method_class("lora")(r=mb.RANK, alpha=float(mb.RANK), targets=("q", "v"))
    p = mp.attach(params, [lora], cfg, seed=0)
    rng = onp.random.default_rng(0)
    for blk in p["lora"]["blocks"]:
        for t in blk.values():
            t["B"] = (0.01 * rng.standard_normal(t["B"].shape)).astype("float32")
    for name, prm, methods in (("lora", p, [lora]), ("full", params, [mp.FullFineTune()])):
        _, grads = mb.mp_step(prm, cfg, methods, x, y)
        loss, g = grads()
        out[f"{name}/loss"] = onp.asarray(loss)
        out.update({f"{name}/" + "/".join(map(str, q)): onp.asarray(v) for q, v in tree.leaves_with_paths(g)})
    return out


def compare(x, y):
    """'identical (k arrays)' or the largest max |Δ| / max |value| over the arrays."""
    if sorted(x.files) == sorted(y.files) and all(onp.array_equal(x[f], y[f]) for f in x.files):
        return f"identical ({len(x.files)} arrays)"
    worst = max(float(onp.abs(x[f].astype(float) - y[f]).max() / max(onp.abs(y[f]).max(), 1e-30)) for f in x.files)
    return f"differ: max |Δ|/max|value| {worst:.1e}"


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
    ap.add_argument("--minilm-bits", type=int, nargs="*", default=[], metavar="TOKENS",
                    help="also compare all-MiniLM-L6-v2's logits, loss and gradients at 8 × TOKENS (installed weights)")
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
                    bits = compare(onp.load(paths["this"]), onp.load(paths["base"]))
                    for p in paths.values():
                        os.remove(p)
                ratios = []
                for r in range(a.rounds):
                    order = ["this", "base"] if r % 2 == 0 else ["base", "this"]
                    t = {k: sides[k].ask(run=a.steps)["cpu"] for k in order}
                    ratios.append(t["this"] / t["base"])
                q = onp.percentile(ratios, [25, 50, 75])
                print(f"| {d} | {kind} | {q[1]:.3f} | {q[0]:.3f}-{q[2]:.3f} | {bits} |", flush=True)
        for n in a.minilm_bits:
            paths = {k: f"/tmp/ab_step_{os.getpid()}_minilm_{k}.npz" for k in sides}
            for k, s in sides.items():
                s.ask(minilm=[n, paths[k]])
            print(f"all-MiniLM-L6-v2, 8 × {n} tokens (half padded): forward logits, LoRA and full loss and gradients: "
                  f"{compare(onp.load(paths['this']), onp.load(paths['base']))}", flush=True)
            for p in paths.values():
                os.remove(p)
    finally:
        for s in sides.values():
            s.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
    else:
        main()

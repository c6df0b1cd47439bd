"""Before / after: this checkout's minipeft against another checkout's (``--baseline DIR``), each
in a worker process of its own, driven in the same interleaved rounds; for the MiniLM forward,
transformers' BertModel under torch.no_grad as a third worker in those rounds.

    python benchmarks/ab.py --baseline /work/wt/base --d 64 128 --kinds full lora   # toy ViT steps
    python benchmarks/ab.py --baseline /work/wt/base --minilm 32 128                # MiniLM forward + torch
    python benchmarks/ab.py --baseline /work/wt/base --minilm 32 --no-torch         # no crosscheck extra
    python benchmarks/ab.py --baseline /work/wt/base --minilm 32 --minilm-kinds forward lora full
    python benchmarks/ab.py --baseline /work/wt/base --minilm-bits 32 128           # bits only, no timing
    python benchmarks/ab.py --baseline .  --d 64 --minilm 32                        # the noise floor

What is timed (a "work"; each row of the table is one, calls per round in its second column):
  toy ViT step   cases.py ``mp_step(Case(d, T, dtype), kind)``: loss, gradients of θ, one Adam
                 update, as ``fit`` runs it (batch cases.BATCH; ``--d``, ``--T``, ``--dtype``,
                 ``--kinds``; the default when no MiniLM option is given: d 64 and 128, full, lora)
  MiniLM         all-MiniLM-L6-v2 (installed weights; mean pooling, a 4-class head, float32) on
                 minilm_bench.py's batch: 8 real texts cut to exactly n tokens (``--minilm n ...``):
                 ``forward`` is ``mp.forward(params, x, cfg)``, and, unless ``--no-torch``,
                 BertModel's forward (minilm_bench.py ``torch_forward``: the crosscheck extra) as
                 a third worker; ``lora`` / ``full`` (``--minilm-kinds``) minilm_bench.py's steps.
How: two checkouts cannot be imported into one process (both are the package ``minipeft``), so
each side is a long-lived worker (``python benchmarks/ab.py worker``, PYTHONPATH set to its
checkout; the torch worker runs this checkout's) that answers one JSON request a line: build a
work, save its bits, run it k times and answer the CPU time (``time.process_time``: its own
threads only) and the wall time of those k calls, the garbage collector off while it runs them.
Each worker runs ``minipeft.runtime.apply()`` first, as every entry point does; both sides use
this checkout's benchmark code (cases.py, minilm_bench.py), so only the package differs. The
controller is measure.py's ``interleave`` (self-timed calls): the workers in turn, the order
reversed every round, one untimed warm-up round, so a slow spell of a shared machine lands on
all of them; a ratio is measure.py's ``ratio``: the median of the per-round CPU-time ratios with
their interquartile range (< 1: the first is faster), beside the ratio of wall-clock medians.
Bits: before any timed call (so before any Adam update), the two minipefts are compared bit for
bit (unless ``--no-bits``): a toy step's loss and every gradient of θ; the MiniLM forward's last
hidden states and logits in float32 and in float64; a MiniLM step's loss and gradients. The
column says "identical (k arrays)" or the largest max |Δ| / max |value|. ``--minilm-bits n``
compares, without timing, MiniLM's forward (hidden states, logits) and the loss and every
gradient of a LoRA (r = 8 on q, v, B ≠ 0) and a full step at 8 × n tokens, half the texts
ending in 5 padding tokens (hidden keys).
Reading it: two workers of the same code need not time alike (each process gets its own memory
layout): timing a checkout against an unchanged copy of itself (``--baseline`` this checkout, or
a copy of it) shows this setup's noise floor, and a "this / base" within it is no gain.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # before NumPy loads its BLAS

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as onp  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: a padded text of ``--minilm-bits`` ends in this many hidden keys
PAD = 5


# --------------------------------------------------------------------------- the worker
def vit_work(d, T, dtype, kind):
    """(step, bits) of a toy ViT step; bits: {name: array}, the loss and θ's gradients at the
    case's θ (no update)."""
    import minipeft as mp

    import cases
    case = cases.Case(d, T, dtype)

    def bits():
        params, methods, pred = case.setup(kind)
        theta, phi = mp.split(params, pred)
        loss, g = mp.value_and_grad(lambda th: mp.loss(th, phi, case.x, case.y, case.cfg, methods, checked=True),
                                    theta)
        return named(loss, g)

    return cases.mp_step(case, kind), bits


def minilm_work(n, dtype, kind, padded=False):
    """(fn, bits) of all-MiniLM-L6-v2 at 8 × n tokens of minilm_bench.py's batch (``padded``: every
    other text's last PAD tokens hidden). kind "forward": fn the logits (8, CLASSES), bits the
    last hidden states (8, n, d) and logits; "torch": BertModel's forward, bits its logits;
    "lora" (minilm_bench.py ``lora_params``) or "full": a training step, bits its loss and gradients."""
    import minipeft as mp
    from minipeft.models import minilm as M

    import minilm_bench as mb
    params, cfg, tok = M.load(n_classes=mb.CLASSES, pool="mean", dtype=dtype)
    x, y = mb.batch(tok, n)  # (8, 3, n): ids, token types, mask
    if padded:
        x[::2, 2, -PAD:] = 0
    if kind == "forward":
        def fwd():
            return mp.forward(params, x, cfg)

        return fwd, lambda: {"logits": onp.asarray(fwd()), "hidden": onp.asarray(mp.transformer.hidden(params, x, cfg)[0])}
    if kind == "torch":
        import torch
        from transformers.utils import logging
        torch.set_num_threads(1)
        logging.disable_progress_bar()  # "Loading weights" on the worker's stderr
        model, head = mb.torch_model(torch, params, full=False)
        fwd = mb.torch_forward(torch, model, head, mb.torch_inputs(torch, x))
        return fwd, lambda: {"logits": fwd().numpy()}
    if kind == "lora":
        lora, params = mb.lora_params(params, cfg)
        methods = [lora]
    else:
        methods = [mp.FullFineTune()]
    step, grads = mb.mp_step(params, cfg, methods, x, y)
    return step, lambda: named(*grads())


def named(loss, g):
    """{"loss": loss, "a/b/c": leaf of g at path (a, b, c), ...}."""
    from minipeft import tree
    out = {"loss": onp.asarray(loss)}
    out.update({"/".join(map(str, p)): onp.asarray(v) for p, v in tree.leaves_with_paths(g)})
    return out


def worker():
    """Answer one JSON request a line:
        {"build": ["vit", d, T, dtype, kind] or ["minilm", n, dtype, kind, padded], "bits": path or null}
            builds the work (and saves its bits to the .npz ``path``): {"ok": minipeft's __file__},
            or {"error": message} when the work refuses its spec (a ValueError: d, T, n, dtype)
        {"run": k}  runs the work k times: {"cpu": s, "wall": s}"""
    from minipeft import runtime
    runtime.apply()
    import minipeft as mp
    fn = None
    for line in sys.stdin:
        req = json.loads(line)
        if "build" in req:
            what, *spec = req["build"]
            try:
                fn, bits = (vit_work if what == "vit" else minilm_work)(*spec)
                if req.get("bits"):
                    onp.savez(req["bits"], **bits())
                out = {"ok": mp.__file__}
            except ValueError as e:  # a spec the code refuses, in its own words
                out = {"error": str(e)}
        else:
            gc.disable()  # a collection inside the timed calls would land on one side only (measure.py)
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(req["run"]):
                fn()
            out = {"cpu": time.process_time() - c0, "wall": time.perf_counter() - w0}
            gc.enable()
            gc.collect()
        print(json.dumps(out), flush=True)


# ----------------------------------------------------------------------- the controller
class Side:
    """One worker: ``root``'s minipeft on its path."""

    def __init__(self, name, root):
        self.name, self.root = name, Path(root).resolve()
        env = dict(os.environ, PYTHONPATH=str(self.root))
        self.p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=str(self.root))

    def ask(self, **req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.name} worker died")
        return json.loads(line)

    def build(self, spec, bits=None):
        got = self.ask(build=list(spec), bits=bits)
        if "error" in got:
            raise SystemExit(f"ab.py: {self.name} cannot build {tuple(spec)}: {got['error']}")
        where = got["ok"]
        if not Path(where).resolve().is_relative_to(self.root):
            raise SystemExit(f"{self.name}: imported minipeft from {where}, not from {self.root}")

    def run(self, k):
        t = self.ask(run=k)
        return t["cpu"], t["wall"]

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def same(a, b):
    """True when a and b are equal bit for bit (dtype, shape and bytes: −0.0 ≠ +0.0)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def compare(x, y):
    """Two {name: array}: 'identical (k arrays)', else the largest max |Δ| / max |value| over them."""
    if sorted(x) != sorted(y):
        return f"differ: arrays {sorted(set(x) ^ set(y))} on one side only"
    if all(same(x[f], y[f]) for f in x):
        return f"identical ({len(x)} arrays)"
    worst = max(float(onp.abs(x[f].astype(float) - y[f]).max() / max(onp.abs(y[f]).max(), 1e-300)) for f in x)
    return f"differ: max |Δ|/max|value| {worst:.1e}"


def build_and_compare(sides, specs, tmp, bits=True):
    """Each side builds its spec ({name: spec}); with ``bits``, this vs base ('identical (k arrays)' …)."""
    paths = {k: (os.path.join(tmp, f"{k}.npz") if bits and k in ("this", "base") else None) for k in specs}
    for k, spec in specs.items():
        sides[k].build(spec, paths[k])
    if not bits:
        return "–"
    got = {k: dict(onp.load(paths[k])) for k in ("this", "base")}
    for k in ("this", "base"):
        os.remove(paths[k])
    return compare(got["this"], got["base"])


def minilm_bits(sides, n, tmp):
    """this vs base: MiniLM's forward, LoRA and full step at 8 × n tokens, half the texts padded."""
    got = {"this": {}, "base": {}}
    for kind in ("forward", "lora", "full"):
        for k in got:
            path = os.path.join(tmp, f"{k}.npz")
            sides[k].build(("minilm", n, "float32", kind, True), path)
            got[k].update({f"{kind}/{f}": v for f, v in onp.load(path).items()})
            os.remove(path)
    return compare(got["this"], got["base"])


def cell(r):
    return f"{r['cpu']:.3f} ({r['iqr'][0]:.3f}-{r['iqr'][1]:.3f})"


def positive(text):
    """argparse type: a whole number ≥ 1."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1 or str(v) != text.strip():
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, got {text!r}")
    return v


#: the toy ViT steps: full, or one of cases.py's METHODS (tests/test_ab.py checks they agree)
KINDS = ("full", "lora", "prompt", "ia3")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="the other checkout (its root: DIR/minipeft)")
    ap.add_argument("--d", type=positive, nargs="+", default=None,
                    help="toy ViT widths, multiples of cases.py's HEADS (default 64 128 when no MiniLM option "
                         "is given, else none)")
    ap.add_argument("--T", type=positive, default=65, help="toy ViT tokens: 1 + g² (CLS + g×g patches)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="the toy ViT's dtype")
    ap.add_argument("--kinds", nargs="+", default=["full", "lora"], choices=KINDS, help="toy ViT steps")
    ap.add_argument("--minilm", type=positive, nargs="+", default=[], metavar="TOKENS",
                    help="also time all-MiniLM-L6-v2 at 8 × TOKENS (installed weights)")
    ap.add_argument("--minilm-kinds", nargs="+", default=["forward"], choices=["forward", "lora", "full"])
    ap.add_argument("--no-torch", action="store_true", help="no BertModel worker beside the MiniLM forward")
    ap.add_argument("--rounds", type=positive, default=21)
    ap.add_argument("--calls", type=positive, default=None,
                    help="calls per worker per round (default: 3 toy steps; MiniLM 2 at ≤ 32 tokens, else 1)")
    ap.add_argument("--no-bits", action="store_true", help="skip the bit-for-bit comparisons of the timed works")
    ap.add_argument("--minilm-bits", type=positive, nargs="+", default=[], metavar="TOKENS",
                    help="compare (no timing) all-MiniLM-L6-v2's forward, LoRA and full gradients at 8 × TOKENS, "
                         "half the texts padded")
    a = ap.parse_args(argv)
    if not (Path(a.baseline) / "minipeft").is_dir():
        ap.error(f"--baseline: no {Path(a.baseline) / 'minipeft'}")
    if any(n <= PAD for n in a.minilm_bits):
        ap.error(f"--minilm-bits: more than {PAD} tokens (a padded text ends in {PAD} hidden keys and keeps its "
                 f"[CLS]), got {a.minilm_bits}")
    if a.d is None:
        a.d = [] if a.minilm or a.minilm_bits else [64, 128]
    a.torch = bool(a.minilm) and "forward" in a.minilm_kinds and not a.no_torch
    missing = [m for m in ("torch", "transformers") if a.torch and importlib.util.find_spec(m) is None]
    if missing:
        ap.error(f"the BertModel worker needs {', '.join(missing)} (the crosscheck extra: "
                 f"python -m pip install -e \".[crosscheck]\"), or pass --no-torch")
    return a


def works(a):
    """[(label, {worker: spec}, calls per round, [(label, spec) of an extra bit check])] to time, in order."""
    out = []
    for d in a.d:
        for kind in a.kinds:
            spec = ("vit", d, a.T, a.dtype, kind)
            out.append((f"ViT d = {d}, T = {a.T}, {a.dtype}, {kind} step", {"this": spec, "base": spec},
                        a.calls or 3, []))
    for n in a.minilm:
        for kind in a.minilm_kinds:
            spec = ("minilm", n, "float32", kind, False)
            specs = {"this": spec, "base": spec}
            extra = []
            if kind == "forward":
                extra = [("float64", ("minilm", n, "float64", kind, False))]
                if a.torch:
                    specs["torch"] = ("minilm", n, "float32", "torch", False)
            out.append((f"MiniLM 8 × {n}, float32, {kind}", specs, a.calls or (2 if n <= 32 else 1), extra))
    return out


def main(argv=None):
    import measure
    a = parse(argv)
    this, base = ROOT, Path(a.baseline).resolve()
    print(f"this = {this}, base = {base}; {a.rounds} interleaved rounds (order reversed every round), "
          f"CPU-time ratios: median (interquartile range) of the per-round ratios, < 1: the first is faster; "
          f"{measure.load_line('at the start')}", flush=True)
    todo = works(a)
    if todo:
        print("| work | calls / round | this / base | wall-clock this / base | this / torch | base / torch "
              "| bits: this vs base |\n|---|---:|---:|---:|---:|---:|---|", flush=True)
    sides = {"this": Side("this", this), "base": Side("base", base)}
    if a.torch:
        sides["torch"] = Side("torch", this)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label, specs, k, extra in todo:
                checks = [f"{dt}: {build_and_compare(sides, {'this': s, 'base': s}, tmp)}"
                          for dt, s in extra if not a.no_bits]
                bits = build_and_compare(sides, specs, tmp, bits=not a.no_bits)
                bits = "; ".join(checks + [f"float32: {bits}"]) if checks else bits
                res = measure.interleave({w: (lambda s=sides[w]: s.run(k)) for w in specs}, a.rounds, warmup=1,
                                         self_timed=True)
                r = measure.ratio(res, "this", "base")
                t = [cell(measure.ratio(res, w, "torch")) if "torch" in specs else "–" for w in ("this", "base")]
                print(f"| {label} | {k} | {cell(r)} | {r['wall']:.3f} | {t[0]} | {t[1]} | {bits} |", flush=True)
            for n in a.minilm_bits:
                print(f"all-MiniLM-L6-v2, 8 × {n} tokens (half the texts padded): forward hidden states and logits, "
                      f"LoRA and full loss and gradients: {minilm_bits(sides, n, tmp)}", flush=True)
    finally:
        for s in sides.values():
            s.close()
    print(measure.load_line("at the end"))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))  # measure.py, cases.py, minilm_bench.py: this checkout's, for every worker
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
    else:
        main()

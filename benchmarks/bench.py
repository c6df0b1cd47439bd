"""minipeft vs PyTorch eager on the same ViT, the same weights and the same batch.

    python benchmarks/bench.py              # the full table (≈ 10 min on a 2-core VM)
    python benchmarks/bench.py --quick      # d = 64, T = 17, float32 only (≈ 20 s)
    python benchmarks/bench.py --profile 128 65   # where a minipeft step spends its time
    python benchmarks/bench.py --memory-only      # the memory table and its targets alone (fresh processes)
    python benchmarks/bench.py --gemm-only        # the GEMM section, what is reachable and its targets alone

For every size (d ∈ {64, 128, 256}, T ∈ {17, 65} tokens, batch 64, N = 4 layers, h = 4,
d_ff = 2d) and dtype (float32, float64) it builds the model once in minipeft and once in
PyTorch (benchmarks/torch_model.py) from the same parameter dict, checks that loss and
every gradient agree, then times them interleaved (A B, B A, …) and prints medians and
ratios for: forward; LoRA step; prompt-tuning step; full fine-tuning step (a step is
loss, gradients and one Adam update). Inside minipeft: LoRA step / full step,
merged-LoRA inference / backbone inference, autograd.grad over the parameter dict vs
minipeft.value_and_grad (full fine-tuning), GEMM GFLOP/s of the steps against this
machine's BLAS peak (measured here), and the peak memory of a PEFT step vs a full step.

One BLAS thread (OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = MKL_NUM_THREADS = 1,
torch.set_num_threads(1)): two threads on a shared VM stall when another process runs.
PyTorch is optional: ``python -m pip install -e ".[crosscheck]"``; without it the
minipeft half still runs.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # before NumPy loads its BLAS

import argparse  # noqa: E402
import cProfile  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import autograd  # noqa: E402
import numpy as onp  # noqa: E402

import minipeft as mp  # noqa: E402
from minipeft import tree  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fresh  # noqa: E402
import headline  # noqa: E402
import measure  # noqa: E402

try:
    import torch
    import torch.nn.functional as F

    import torch_model as tm
except ImportError:
    torch = None

INSTALL = 'python -m pip install -e ".[crosscheck]"'
HERE = Path(__file__).resolve().parent
from cases import BATCH, CLASSES, HEADS, N_LAYERS, Case, config, method, mp_forward, mp_step  # noqa: E402,F401
from cases import torch_forward, torch_step  # noqa: E402,F401
#: relative error allowed between minipeft and PyTorch (‖a − b‖ / ‖b‖, per leaf)
TOL = {"float32": 1e-4, "float64": 1e-10}
KINDS = ("forward", "lora", "prompt", "full")
#: the steps of the fresh-process memory table
MEM_KINDS = ("forward", "lora", "lora+recompute", "prompt", "prompt+recompute", "ia3", "full")  # fresh.RECOMPUTE
#: sizes where PyTorch's fused attention (F.scaled_dot_product_attention) is timed too
SDPA_SIZES = ((64, 17, "float32"), (128, 65, "float32"))


def pin_threads():
    """One BLAS/OpenMP thread for NumPy and PyTorch, also when NumPy was loaded before us."""
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=1)
    except ImportError:  # the environment variables above still hold for a fresh process
        pass
    if torch is not None:
        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set (or parallel work already started)
            pass


# ------------------------------------------------------------------- correctness
def _rel(a, b, floor=0.0):
    """‖a − b‖ / max(‖b‖, floor)."""
    return float(onp.linalg.norm(onp.ravel(a - b)) / max(onp.linalg.norm(onp.ravel(b)), floor, 1e-30))


def check(case, kind, torch_params=None, sdpa=False):
    """minipeft vs PyTorch on one case: logits (forward) or loss and every gradient of θ.

    torch_params: the tree the twin is built from (default: the same as minipeft's; the
    smoke test passes a perturbed one to see the check fail). Returns {"kind", "err" (the
    worst relative error ‖a − b‖/‖b‖ over loss/logits and every leaf), "where", "ok"}.
    """
    x, y = case.x, case.y
    if kind == "forward":
        params = case.params if torch_params is None else torch_params
        a = mp.forward(case.params, x, case.cfg)
        with torch.no_grad():
            b = tm.forward(tm.to_torch(params, lambda p, l: False), torch.from_numpy(x), case.cfg, sdpa=sdpa).numpy()
        errs = {"logits": _rel(a, b)}
    else:
        params, methods, pred = case.setup(kind)
        theta, phi = mp.split(params, pred)
        loss, g = mp.value_and_grad(lambda th: mp.loss(th, phi, x, y, case.cfg, methods), theta)
        src = params if torch_params is None else torch_params
        P = tm.to_torch(src, pred)
        tl = F.cross_entropy(tm.forward(P, torch.from_numpy(x), case.cfg, sdpa=sdpa, **case.torch_args(kind)),
                             torch.from_numpy(y))
        tl.backward()
        errs = {"loss": _rel(onp.asarray(loss), tl.detach().numpy())}
        # a leaf whose true gradient is ~0 (b_k: softmax ignores a shift of a whole score
        # row) is compared against 10⁻³ of the largest leaf gradient, not its own noise
        floor = 1e-3 * max(float(onp.linalg.norm(P[path].grad.numpy())) for path, _ in tree.leaves_with_paths(g))
        for path, leaf in tree.leaves_with_paths(g):
            if leaf.dtype != onp.dtype(case.dtype):
                errs[tree.path_str(path) + " (dtype)"] = float("inf")
            errs[tree.path_str(path)] = _rel(leaf, P[path].grad.numpy(), floor)
    where = max(errs, key=errs.get)
    return {"kind": kind, "err": errs[where], "where": where, "ok": errs[where] <= TOL[case.dtype]}


# ------------------------------------------------------------------------ one size
def run_case(d, T, dtype, args, have_torch, log):
    """Check, then time every measurement of one size and dtype, interleaved."""
    case = Case(d, T, dtype, batch=args.batch)
    kinds = [k for k in ("lora", "prompt") if k in case.methods] + ["full"]
    out = {"d": d, "T": T, "dtype": dtype, "batch": args.batch, "kinds": kinds, "checks": []}
    if have_torch:
        for k in ["forward"] + kinds:
            c = check(case, k)
            out["checks"].append(c)
            if not c["ok"]:
                log(f"  CHECK FAILED d={d} T={T} {dtype} {k}: {c['where']} rel err {c['err']:.2e} > {TOL[dtype]:.0e}")
    # forwards (cheap: more rounds, so merged vs backbone is resolved to ~1 %) and steps
    # are two interleaved sets; within each, every call runs back to back with its twin
    fwd = {"mp forward": mp_forward(case)}
    if "lora" in case.methods:
        m, p = case.methods["lora"]
        fwd["mp forward merged-LoRA"] = mp_forward(case, m.merge(p))
        fwd["mp forward LoRA hooks"] = mp_forward(case, p, [m])
    steps = {f"mp {k}": mp_step(case, k) for k in kinds}
    if have_torch:
        fwd["torch forward"] = torch_forward(case)
        for k in kinds:
            steps[f"torch {k}"] = torch_step(case, k)
        if (d, T, dtype) in SDPA_SIZES:
            steps["torch full (SDPA)"] = torch_step(case, "full", sdpa=True)
            c = check(case, "full", sdpa=True)
            out["checks"].append({**c, "kind": "full (SDPA)"})
    if args.grad_compare and dtype == "float32":
        steps["mp full (autograd.grad)"] = mp_step(case, "full", grad="autograd.grad")
    res = {}
    for label, fns, share, lo in (("forwards", fwd, 0.3, 13), ("steps", steps, 0.7, 5)):
        est = 0.0  # one untimed call of each: the round estimate (it also warms caches)
        for f in fns.values():
            t0 = time.process_time()
            f()
            est += time.process_time() - t0
        rounds = args.rounds or measure.rounds_for(est, share * args.budget, lo=lo)
        log(f"  d={d} T={T} {dtype} {label}: {len(fns)} timings × {rounds} rounds (≈ {est:.1f} s CPU a round)")
        res.update(measure.interleave(fns, rounds, warmup=0))
    out["times"] = {k: {"cpu": v["cpu"], "wall": v["wall"]} for k, v in res.items()}
    r = {}
    for k in ["forward"] + kinds:
        if have_torch:
            r[f"{k} mp/torch"] = measure.ratio(res, f"mp {k}", f"torch {k}")
    for k in kinds:
        if k != "full":
            r[f"{k}/full (mp)"] = measure.ratio(res, f"mp {k}", "mp full")
    if "lora" in case.methods:
        r["merged/backbone inference"] = measure.ratio(res, "mp forward merged-LoRA", "mp forward")
        r["LoRA hooks/backbone inference"] = measure.ratio(res, "mp forward LoRA hooks", "mp forward")
    if "torch full (SDPA)" in res:
        r["full mp/torch(SDPA)"] = measure.ratio(res, "mp full", "torch full (SDPA)")
    if "mp full (autograd.grad)" in res:
        r["autograd.grad/value_and_grad"] = measure.ratio(res, "mp full (autograd.grad)", "mp full")
    out["ratios"] = r
    for kind in ("forward", "full", "lora"):
        out[f"gflop {kind}"] = measure.gemm_flops(case.cfg, args.batch, T, kind) / 1e9
    if args.memory and dtype == "float32":
        out["peak MB"] = {k: measure.peak_bytes(mp_step(case, k)) / 2 ** 20 for k in kinds}
    return out


# ------------------------------------------------------------------ GEMM targets
def gemm_steps(args, peaks, log, have_torch=False):
    """Issue 16's GEMM targets, and what is reachable. Per size, float32, batch ``--batch``:

    * minipeft's full and LoRA step, each in fresh processes under minipeft's entry-point policy
      (``fresh.run_worker``; ``--fresh-pairs`` interleaved pairs): each step's CPU ms (median over
      processes), the full step's GEMM share (``measure.gemm_flops`` / time / the NumPy peak) and
      LoRA / full (median of the per-pair ratios) beside its GEMM-FLOP floor (LoRA's FLOPs / full's);
    * with PyTorch, the same of its twin (``torch_model.py``), in fresh processes of its own in the
      same interleaved rounds: its full step's share of *its* peak (the same FLOP count) and its
      LoRA / full against the same floor (``"torch"``);
    * "GEMMs alone" (``"alone"``): the products of ``measure.gemm_products`` — the list
      ``gemm_flops`` sums — timed alone in this process (``measure.gemm_seconds``: NumPy, one
      thread): their share of the NumPy peak bounds what the full step could reach if everything
      else cost nothing, and LoRA's GEMM seconds / the full step's is a time floor for LoRA / full.
    """
    fws = ("mp", "torch") if have_torch and peaks["float32"].get("torch") else ("mp",)
    order = [(fw, k) for fw in fws for k in ("full", "lora")]
    out = []
    for d in args.d:
        for T in args.T:
            runs = {o: [] for o in order}
            for i in range(args.fresh_pairs):
                for fw, k in (order if i % 2 == 0 else order[::-1]):
                    runs[fw, k].append(fresh.run_worker({"framework": fw, "mode": "steps", "kind": k, "d": d, "T": T,
                                                         "batch": args.batch, "dtype": "float32",
                                                         "steps": args.fresh_steps})["cpu_ms"])
            cfg = config(d, T)
            products = {k: measure.gemm_products(cfg, args.batch, T, k) for k in ("full", "lora")}
            flops = {k: measure.gemm_flops(cfg, args.batch, T, k) for k in products}
            ms = {o: float(onp.median(v)) for o, v in runs.items()}

            def share(fw, seconds):
                return flops["full"] / seconds / (peaks["float32"]["numpy" if fw == "mp" else fw] * 1e9)

            def lora_full(fw):
                return float(onp.median(onp.asarray(runs[fw, "lora"]) / onp.asarray(runs[fw, "full"])))

            alone = measure.gemm_seconds(products, "float32")
            r = {"d": d, "T": T, "batch": args.batch, "pairs": args.fresh_pairs, "steps": args.fresh_steps,
                 "warmup": fresh.WARMUP,
                 "full_ms": ms["mp", "full"], "lora_ms": ms["mp", "lora"],
                 "share": share("mp", ms["mp", "full"] / 1e3), "lora_full": lora_full("mp"),
                 "floor": flops["lora"] / flops["full"],
                 "alone": {"full_ms": 1e3 * alone["full"], "lora_ms": 1e3 * alone["lora"],
                           "share": share("mp", alone["full"]), "time_floor": alone["lora"] / alone["full"]}}
            if "torch" in fws:
                r["torch"] = {"full_ms": ms["torch", "full"], "lora_ms": ms["torch", "lora"],
                              "share": share("torch", ms["torch", "full"] / 1e3), "lora_full": lora_full("torch")}
            a = r["alone"]
            log(f"  GEMM d={d} T={T}: full {r['full_ms']:.1f} ms ({100 * r['share']:.0f} % of the NumPy peak), "
                f"LoRA/full {r['lora_full']:.2f} (floor {r['floor']:.2f}); GEMMs alone {a['full_ms']:.1f} ms "
                f"({100 * a['share']:.0f} %), time floor {a['time_floor']:.2f}"
                + (f"; torch full {r['torch']['full_ms']:.1f} ms ({100 * r['torch']['share']:.0f} % of its peak), "
                   f"LoRA/full {r['torch']['lora_full']:.2f}" if "torch" in r else ""))
            out.append(r)
    return out


def lowest_layer(d, T):
    """LoRA on the last block only, one step of the benchmark's case (batch 4): the linear (and
    fused MLP) VJPs (``measure.vjp_runs``) that ran in each block. Below that block there should be none."""
    from minipeft.nn import primitives
    from minipeft.nn.ff import frozen_mlp, linear_gelu
    from minipeft.transformer.schema import LINEARS, linears
    case = Case(d, T, "float32", batch=4)
    cfg = case.cfg
    m = mp.method_class("lora")(layers=(cfg.N - 1,))
    params = mp.attach(case.params, [m], cfg)
    theta, phi = mp.split(params, mp.trainable([m]))
    runs = measure.vjp_runs(lambda: mp.value_and_grad(lambda th: mp.loss(th, phi, case.x, case.y, cfg, [m]), theta),
                            (primitives.linear, linear_gelu, frozen_mlp))
    per_block = [sum(runs.get(id(bp[mod][W]), 0) for mod, W, _ in (LINEARS[n] for n in linears(cfg)))
                 for bp in params["blocks"]]
    return {"d": d, "T": T, "N": cfg.N, "layer": cfg.N - 1, "vjps_per_block": per_block}


# --------------------------------------------------------------------------- report
def machine():
    """Date, CPU, cores, memory, load, versions, BLAS libraries."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2 ** 20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    blas = []
    try:
        from threadpoolctl import threadpool_info
        blas = [f"{i.get('internal_api')} {i.get('version') or ''} ({Path(i['filepath']).name})".strip()
                for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        pass
    info = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu}, {os.cpu_count()} logical cores{mem}, {platform.system()} {platform.release()}",
        "python": platform.python_version(), "numpy": onp.__version__, "autograd": _version("autograd"),
        "numpy BLAS": ", ".join(blas) or "unknown", "torch": torch.__version__ if torch is not None else "not installed",
        "load": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch is not None:
        cfg = torch.__config__.show()
        info["torch BLAS"] = "MKL" if "BLAS_INFO=mkl" in cfg else ("OpenBLAS" if "open" in cfg.lower() else "see torch.__config__")
    return info


def _version(pkg):
    try:
        from importlib.metadata import version
        return version(pkg)
    except Exception:  # noqa: BLE001
        return "unknown"


def _ms(res, name, clock="cpu"):
    return res["times"][name][clock]["median"] * 1e3 if name in res["times"] else float("nan")


def _cell(res, kind, have_torch):
    a = _ms(res, f"mp {kind}")
    if not have_torch:
        return f"{a:.1f}"
    b = _ms(res, f"torch {kind}")
    r = res["ratios"][f"{kind} mp/torch"]
    return f"{a:.1f} / {b:.1f} (**{r['cpu']:.2f}**, {r['iqr'][0]:.2f}–{r['iqr'][1]:.2f})"


def report(results, info, peaks, args, have_torch, wall_s, head=""):
    """The markdown: header, the headline (fresh processes, memory, BLAS, targets: ``head``), then
    the in-process tables: main table, inside-minipeft table, GEMM, memory, O(P²), targets."""
    L = []
    cmd = "python benchmarks/bench.py" + (" " + " ".join(args.argv) if args.argv else "")
    L.append(f"Measured {info['date']} with `{cmd}` ({wall_s / 60:.1f} min).  ")
    L.append(f"Machine: {info['machine']}; load average at start {_load(info['load'])}, "
             f"at end {_load(os.getloadavg() if hasattr(os, 'getloadavg') else None)}.  ")
    L.append(f"Python {info['python']}, NumPy {info['numpy']} ({info['numpy BLAS']}), autograd {info['autograd']}, "
             f"PyTorch {info['torch']}" + (f" ({info['torch BLAS']})" if have_torch else "") + ".  ")
    L.append("One BLAS/OpenMP thread everywhere (OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=MKL_NUM_THREADS=1, "
             f"torch.set_num_threads(1)); allocator: glibc {args.malloc}"
             + (" (minipeft.runtime's: mmap threshold 32 MiB, trim threshold 1 GiB, for both frameworks)"
                if args.malloc == "tuned"
                else " settings") + ". Times are medians of the process's CPU time over interleaved rounds "
             "(A B, B A, …); a ratio is the median of the per-round ratios, its interquartile range after it. "
             f"Batch {args.batch}, N = {N_LAYERS} layers, h = {HEADS}, d_ff = 2d, patch 4 "
             "(T = 17: 16×16 images, T = 65: 32×32); LoRA r = 4 on W_q, W_v (+ head); prompt tuning p = 8 (+ head); "
             "a step = loss + gradients + one Adam update.")
    L.append("")
    if head:
        L += ["### Headline: fresh processes, memory, BLAS", "", head, "### In one process (the second table)", "",
              "Both frameworks in this one process, after the BLAS-peak GEMMs and the correctness checks: the "
              "process's history (glibc's adaptive thresholds raised by large frees) favours whoever allocates "
              "per step, so these ratios are not what a fresh `minipeft train` gets; the fresh-process table is.", ""]
    if have_torch:
        checks = [c for r in results for c in r["checks"]]
        bad = [c for c in checks if not c["ok"]]
        worst = "; ".join(
            f"{dt} {max(c['err'] for r in results if r['dtype'] == dt for c in r['checks']):.1e} "
            f"(allowed {TOL[dt]:.0e})" for dt in args.dtype)
        L.append(f"**Agreement with PyTorch:** {len(checks) - len(bad)}/{len(checks)} checks passed (logits, loss "
                 f"and every gradient leaf; worst relative error ‖Δ‖/‖g‖, a leaf's ‖g‖ floored at 10⁻³ of the "
                 f"largest: {worst}).")
        for c in bad:
            L.append(f"- FAILED: {c['kind']} {c['where']} {c['err']:.2e}")
        L.append("")
        L.append("| d | T | dtype | forward ms: minipeft / torch (ratio, IQR) | LoRA step | prompt step | full step |")
        L.append("|---|---|---|---|---|---|---|")
    else:
        L.append(f"**PyTorch is not installed** (`{INSTALL}`): minipeft times only.")
        L.append("")
        L.append("| d | T | dtype | forward ms | LoRA step ms | prompt step ms | full step ms |")
        L.append("|---|---|---|---|---|---|---|")
    for r in results:
        cells = [_cell(r, k, have_torch) if (k == "forward" or k in r["kinds"]) else "–" for k in KINDS]
        L.append(f"| {r['d']} | {r['T']} | {r['dtype']} | " + " | ".join(cells) + " |")
    sd = [r for r in results if "full mp/torch(SDPA)" in r["ratios"]]
    if sd:
        L.append("")
        L.append("PyTorch with its fused attention kernel (`F.scaled_dot_product_attention`) instead of the explicit "
                 "softmax(QKᵀ/√d_h)V: full step " + "; ".join(
                     f"d={r['d']}, T={r['T']}: torch {_ms(r, 'torch full (SDPA)'):.1f} ms, minipeft/torch "
                     f"{r['ratios']['full mp/torch(SDPA)']['cpu']:.2f}" for r in sd) + ".")
    L.append("")
    L.append("Inside minipeft (medians of per-round ratios):")
    L.append("")
    L.append("| d | T | dtype | LoRA step / full step | its GEMM-FLOP ratio (the floor) | prompt step / full step "
             "| merged-LoRA / backbone inference | unmerged LoRA (hooks) / backbone inference |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in results:
        g = lambda k: f"{r['ratios'][k]['cpu']:.2f}" if k in r["ratios"] else "–"  # noqa: E731
        L.append(f"| {r['d']} | {r['T']} | {r['dtype']} | {g('lora/full (mp)')} | {r['gflop lora'] / r['gflop full']:.2f} "
                 f"| {g('prompt/full (mp)')} | {g('merged/backbone inference')} | {g('LoRA hooks/backbone inference')} |")
    L.append("")
    L.append("The GEMM-FLOP ratio is `measure.gemm_flops(..., 'lora') / gemm_flops(..., 'full')`: what LoRA/full would "
             "be if only the matrix products cost time. LoRA skips every frozen dW, but still needs every dX above "
             "layer 1 to reach A and B, so about 2/3 of the full step's products remain.")
    L.append("")
    L.append("GEMM throughput: the FLOPs of the matrix products a step must do (`measure.gemm_flops`: "
             "2·m·k·n per product; a full step is 3× the forward's products, the patch embedding 2×) divided by "
             f"the step's median CPU time, against the BLAS peak measured here (one {args.peak_n}³ GEMM, best of 5, 1 thread): "
             + ", ".join(f"NumPy {dt} {p['numpy']:.0f} GFLOP/s" + (f", PyTorch {dt} {p['torch']:.0f} GFLOP/s"
                                                                  if p.get("torch") else "")
                         for dt, p in peaks.items()) + ".")
    L.append("")
    L.append("| d | T | dtype | GFLOP / full step | minipeft full step GFLOP/s (% of NumPy peak) | "
             "forward GFLOP/s (%) | PyTorch full step GFLOP/s (% of its peak) |")
    L.append("|---|---|---|---|---|---|---|")
    for r in results:
        pk = peaks[r["dtype"]]
        gf, gfw = r["gflop full"], r["gflop forward"]
        a = gf / (_ms(r, "mp full") / 1e3)
        f = gfw / (_ms(r, "mp forward") / 1e3)
        t = (f"{gf / (_ms(r, 'torch full') / 1e3):.0f} ({100 * gf / (_ms(r, 'torch full') / 1e3) / pk['torch']:.0f} %)"
             if have_torch and pk.get("torch") else "–")
        L.append(f"| {r['d']} | {r['T']} | {r['dtype']} | {gf:.2f} | {a:.0f} ({100 * a / pk['numpy']:.0f} %) | "
                 f"{f:.0f} ({100 * f / pk['numpy']:.0f} %) | {t} |")
    mem = [r for r in results if "peak MB" in r]
    if mem:
        L.append("")
        L.append("Peak memory of one step (tracemalloc: the high-water mark of NumPy buffers allocated during the "
                 "step — activations kept for the backward pass, gradients, Adam's new moments; exact and "
                 "deterministic, unlike the process RSS; float32):")
        L.append("")
        L.append("| d | T | LoRA step MB | prompt step MB | full step MB | LoRA / full | prompt / full |")
        L.append("|---|---|---|---|---|---|---|")
        for r in mem:
            m = r["peak MB"]
            g = lambda k: f"{m[k]:.1f}" if k in m else "–"  # noqa: E731
            q = lambda k: f"{m[k] / m['full']:.2f}" if k in m else "–"  # noqa: E731
            L.append(f"| {r['d']} | {r['T']} | {g('lora')} | {g('prompt')} | {g('full')} | {q('lora')} | {q('prompt')} |")
    ag = [r for r in results if "autograd.grad/value_and_grad" in r["ratios"]]
    if ag:
        L.append("")
        L.append("Full fine-tuning gradients over the 72-tensor parameter dict: `autograd.grad` (boxes the dict: "
                 "O(P²) bookkeeping) vs `minipeft.value_and_grad` (one root per leaf: O(P)); whole step, float32:")
        L.append("")
        L.append("| d | T | autograd.grad step ms | value_and_grad step ms | difference ms | ratio |")
        L.append("|---|---|---|---|---|---|")
        for r in ag:
            a, b = _ms(r, "mp full (autograd.grad)"), _ms(r, "mp full")
            L.append(f"| {r['d']} | {r['T']} | {a:.1f} | {b:.1f} | {a - b:+.1f} | "
                     f"{r['ratios']['autograd.grad/value_and_grad']['cpu']:.2f} |")
    L.append("")
    L.extend(targets(results, peaks, have_torch))
    return "\n".join(L) + "\n"


def _load(la):
    return "n/a" if la is None else "/".join(f"{v:.1f}" for v in la)


def targets(results, peaks, have_torch):
    """The issue's targets, each marked met / not met / not measured."""
    def find(d, T, dt):
        return next((r for r in results if (r["d"], r["T"], r["dtype"]) == (d, T, dt)), None)

    def mark(ok):
        return "met" if ok else "**not met**"

    L = ["Targets:", ""]
    for (d, T, lim) in ((128, 65, 1.0), (64, 17, 1.3)):
        r = find(d, T, "float32")
        if r is None or not have_torch:
            L.append(f"- minipeft/PyTorch train step ≤ {lim} at d={d}, T={T}, float32: not measured")
            continue
        for k in ("lora", "full"):
            if f"{k} mp/torch" in r["ratios"]:
                v = r["ratios"][f"{k} mp/torch"]["cpu"]
                L.append(f"- minipeft/PyTorch {k} step ≤ {lim} at d={d}, T={T}, float32: {v:.2f} — {mark(v <= lim)}")
    lf = [(r, r["ratios"]["lora/full (mp)"]["cpu"]) for r in results if "lora/full (mp)" in r["ratios"]]
    if lf:
        ok = sum(v <= 0.6 for _, v in lf)
        floor = [r["gflop lora"] / r["gflop full"] for r, _ in lf]
        L.append(f"- LoRA step / full step ≤ 0.6 in minipeft: {ok}/{len(lf)} sizes "
                 f"(range {min(v for _, v in lf):.2f}–{max(v for _, v in lf):.2f}; the GEMM-FLOP floor of this "
                 f"LoRA is {min(floor):.2f}–{max(floor):.2f}) — {mark(ok == len(lf))}")
    mg = [(r, r["ratios"]["merged/backbone inference"]["cpu"]) for r in results if "merged/backbone inference" in r["ratios"]]
    if mg:
        ok = sum(v <= 1.02 for _, v in mg)
        med = float(onp.median([v for _, v in mg]))
        L.append(f"- merged-LoRA / backbone inference ≤ 1.02: {ok}/{len(mg)} sizes "
                 f"(range {min(v for _, v in mg):.2f}–{max(v for _, v in mg):.2f}, median over sizes {med:.2f}) — "
                 f"{mark(ok == len(mg))}")
    big = [r for r in results if r["d"] == 256]
    for r in big:
        pk = peaks[r["dtype"]]["numpy"]
        u = r["gflop full"] / (_ms(r, "mp full") / 1e3) / pk
        L.append(f"- ≥ 60 % of the BLAS peak in a d=256 step (T={r['T']}, {r['dtype']}, full): {100 * u:.0f} % — "
                 f"{mark(u >= 0.6)}")
    return L


# -------------------------------------------------------------------------- profile
def profile(d, T, dtype, kinds=("full", "lora"), steps=5, top=18):
    """cProfile (CPU-time clock) of minipeft steps, and torch.profiler of PyTorch's: where the time goes."""
    case = Case(d, T, dtype)
    for k in kinds:
        if k != "full" and k not in case.methods:
            continue
        step = mp_step(case, k)
        step()
        pr = cProfile.Profile(time.process_time)
        pr.enable()
        for _ in range(steps):
            step()
        pr.disable()
        print(f"\n### minipeft {k} step, d={d} T={T} {dtype}: {steps} steps, sorted by own time")
        st = pstats.Stats(pr, stream=sys.stdout)
        st.strip_dirs().sort_stats("tottime").print_stats(top)
        if torch is not None:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile
            tstep = torch_step(case, k)
            tstep()
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    tstep()
            print(f"\n### PyTorch {k} step, d={d} T={T} {dtype}: {steps} steps, sorted by own CPU time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def memory_kinds(args):
    """The steps of the memory table: --mem-kinds, in MEM_KINDS' order, full always (the ratios divide by it)."""
    return [k for k in MEM_KINDS if k in args.mem_kinds or k == "full"]


def memory_only(args, info, have_torch, log, t_start):
    """``--memory-only``: the fresh-process memory table of every dtype and its targets, printed
    (and written to --out with the raw numbers beside it, when given)."""
    D, T = args.fresh_size
    fws = ("mp", "torch") if have_torch else ("mp",)
    head = {"blas": headline.blas_kernels(torch),
            "memory": [fresh.memory(memory_kinds(args), D, T, args.mem_batch, dt, log, fws) for dt in args.dtype]}
    return _write_partial(args, info, {"info": info, "peaks": {}, "headline": head, "results": []}, log, t_start)


def gemm_only(args, info, have_torch, log, t_start):
    """``--gemm-only``: the float32 BLAS peaks, the GEMM section (``gemm_steps``: every --d, --T;
    ``lowest_layer``) and its targets with what is reachable, printed (and written to --out with
    the raw numbers beside it, when given)."""
    peaks = {"float32": {"numpy": measure.blas_peak("float32", n=args.peak_n)}}
    if have_torch:
        peaks["float32"]["torch"] = measure.blas_peak("float32", n=args.peak_n, matmul=torch.matmul)
    log("BLAS peak float32: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks["float32"].items()))
    head = {"blas": headline.blas_kernels(torch), "gemm": gemm_steps(args, peaks, log, have_torch),
            "lowest": lowest_layer(args.d[0], args.T[0])}
    return _write_partial(args, info, {"info": info, "peaks": peaks, "headline": head, "results": []}, log, t_start)


def _write_partial(args, info, data, log, t_start):
    """Print one part's headline (``--memory-only``, ``--gemm-only``) under the run's header; with
    --out, write it and the raw numbers (.json)."""
    wall = time.perf_counter() - t_start
    text = (f"Measured {info['date']} with `{info['command']}` ({wall / 60:.1f} min).  \n"
            f"Machine: {info['machine']}; load average at start {_load(info['load'])}, at end "
            f"{_load(os.getloadavg() if hasattr(os, 'getloadavg') else None)}.  \n"
            f"NumPy {info['numpy']} ({info['numpy BLAS']}), PyTorch {info['torch']}.\n\n" + headline.render(data))
    print(text)
    if args.out is not None:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
        log(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


# ----------------------------------------------------------------------------- main
def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="d=64, T=17, float32 only, 5 rounds (the smoke test's subset)")
    ap.add_argument("--d", type=int, nargs="+", default=[64, 128, 256], help="model widths d (multiples of h=4)")
    ap.add_argument("--T", type=int, nargs="+", default=[17, 65], help="tokens 1 + g² (17: 16×16 images, 65: 32×32)")
    ap.add_argument("--dtype", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--batch", type=int, default=BATCH, help="batch size (default 64)")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds per size (default: fit --budget, 5..31)")
    ap.add_argument("--budget", type=float, default=12.0, help="CPU seconds of timed rounds per size and dtype")
    ap.add_argument("--malloc", choices=["default", "tuned"], default="default",
                    help="tuned: raise glibc's mmap/trim thresholds for the whole process (both frameworks), "
                         "so freed activations are not page-faulted in again every step (minipeft.runtime.tune_allocator)")
    ap.add_argument("--peak-n", type=int, default=2048, help="size n of the n×n GEMM that measures the BLAS peak")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the tracemalloc peak-memory runs")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the fresh-process memory table (--mem-kinds at --fresh-size, --mem-batch, every "
                         "--dtype) and its targets: no timing, no BLAS peak; writes --out only when given")
    ap.add_argument("--gemm-only", action="store_true",
                    help="only the GEMM section (fresh full and LoRA steps of both frameworks and the products "
                         "alone at every --d, --T; float32, --batch, --fresh-pairs, --fresh-steps) and its targets; "
                         "writes --out only when given")
    ap.add_argument("--no-grad-compare", dest="grad_compare", action="store_false",
                    help="skip timing autograd.grad over the dict")
    ap.add_argument("--no-fresh", dest="fresh", action="store_false",
                    help="skip the fresh-process step pairs and memory (the headline)")
    ap.add_argument("--no-train", dest="train", action="store_false",
                    help="skip timing the whole `minipeft train` process against the PyTorch script")
    ap.add_argument("--fresh-size", type=int, nargs=2, default=[128, 65], metavar=("D", "T"),
                    help="model size of the fresh-process steps and of the memory table (default 128 65)")
    ap.add_argument("--fresh-batch", type=int, nargs="+", default=[16, 64, 256], help="batches of the fresh steps")
    ap.add_argument("--fresh-pairs", type=int, default=3, help="interleaved process pairs per fresh measurement")
    ap.add_argument("--fresh-steps", type=int, default=8, help="timed steps per fresh process")
    ap.add_argument("--mem-batch", type=int, default=256, help="batch of the memory table")
    ap.add_argument("--mem-kinds", nargs="+", default=list(MEM_KINDS), choices=MEM_KINDS,
                    help="steps of the memory table (full is always measured: the ratios divide by it)")
    ap.add_argument("--no-gemm", dest="gemm", action="store_false",
                    help="skip the GEMM targets (fresh full and LoRA steps at every size, float32, both frameworks; "
                         "the products alone)")
    ap.add_argument("--train-epochs", type=int, default=20, help="epochs of the timed `minipeft train` process")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the markdown here (and the raw numbers beside it as .json); "
                         "default benchmarks/results.md for a full run, nothing for --quick")
    ap.add_argument("--profile", type=int, nargs=2, metavar=("D", "T"),
                    help="print a cProfile of minipeft's full and LoRA steps at this size and exit")
    args = ap.parse_args(argv)
    if args.quick:
        args.d, args.T, args.dtype, args.rounds = [64], [17], ["float32"], args.rounds or 5
        args.peak_n = min(args.peak_n, 1024)
        args.fresh_size, args.fresh_batch, args.fresh_pairs, args.fresh_steps = [64, 17], [16], 1, 3
        args.mem_batch, args.train_epochs = 64, 1
    for name in ("fresh_pairs", "fresh_steps", "mem_batch", "train_epochs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive int, got {getattr(args, name)}")
    if any(b < 1 for b in args.fresh_batch):
        ap.error(f"--fresh-batch must be positive ints, got {args.fresh_batch}")
    try:
        config(*args.fresh_size)
    except ValueError as e:
        ap.error(f"--fresh-size: {e}")
    for T in args.T:
        try:
            config(args.d[0], T)
        except ValueError as e:
            ap.error(f"--T: {e}")
    for d in args.d:
        if d < HEADS or d % HEADS:
            ap.error(f"--d: d must be a positive multiple of h = {HEADS}, got {d}")
    if args.batch < 1:
        ap.error(f"--batch must be a positive int, got {args.batch}")
    if args.peak_n < 16:
        ap.error(f"--peak-n must be at least 16, got {args.peak_n}")
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv=None):
    args = parse(argv)
    pin_threads()
    if args.malloc == "tuned":
        from minipeft import runtime
        state = runtime.tune_allocator()
        if not state.startswith("keep"):
            print(f"--malloc tuned: the allocator was not tuned ({state}); running with its settings", file=sys.stderr)
            args.malloc = f"default ({state})"
    if args.profile:
        profile(*args.profile, args.dtype[0])
        return 0
    have_torch = torch is not None
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if not have_torch:
        log(f"PyTorch is not installed, so only the minipeft half runs. Install it with:\n    {INSTALL}")
    info = machine()
    info["command"] = "python benchmarks/bench.py" + (" " + " ".join(args.argv) if args.argv else "")
    t_start = time.perf_counter()
    if args.memory_only:
        return memory_only(args, info, have_torch, log, t_start)
    if args.gemm_only:
        return gemm_only(args, info, have_torch, log, t_start)
    peaks = {}
    for dt in args.dtype:
        peaks[dt] = {"numpy": measure.blas_peak(dt, n=args.peak_n)}
        if have_torch:
            peaks[dt]["torch"] = measure.blas_peak(dt, n=args.peak_n, matmul=torch.matmul)
        log(f"BLAS peak {dt}: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks[dt].items()))
    head = {"blas": headline.blas_kernels(torch)}
    if args.fresh and have_torch:  # the headline: each framework in its own fresh process
        D, T = args.fresh_size
        head["fresh"] = [fresh.step_pairs(k, D, T, b, "float32", args.fresh_pairs, args.fresh_steps, log)
                         for b in args.fresh_batch for k in ("lora", "full")]
        if args.memory:
            head["memory"] = [fresh.memory(memory_kinds(args), D, T, args.mem_batch, dt, log) for dt in args.dtype]
    if args.train and have_torch:
        head["train"] = fresh.train_pairs(args.train_epochs, args.fresh_pairs, log)
    if args.gemm:  # minipeft's half needs no PyTorch; with it, its twin's figures beside
        if args.fresh and "float32" in peaks:
            head["gemm"] = gemm_steps(args, peaks, log, have_torch)
        head["lowest"] = lowest_layer(args.d[0], args.T[0])
    results = []
    for dt in args.dtype:
        for d in args.d:
            for T in args.T:
                results.append(run_case(d, T, dt, args, have_torch, log))
    data = {"info": info, "peaks": peaks, "headline": head, "results": results}
    text = report(results, info, peaks, args, have_torch, time.perf_counter() - t_start, headline.render(data))
    print(text)
    out = args.out if args.out is not None else (None if args.quick else HERE / "results.md")
    if out is not None:
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
        log(f"wrote {out} and {out.with_suffix('.json')}")
    failed = [c for r in results for c in r["checks"] if not c["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

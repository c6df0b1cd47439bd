"""Fresh-process measurements: each framework in a new Python process of its own, as a user runs it.

A process's history changes its speed: large frees raise glibc's adaptive mmap/trim
thresholds, after which later steps stop returning (and page-faulting back) their
activations. An in-process benchmark that first ran big GEMMs therefore flatters whoever
runs after. Here every measurement starts a new interpreter:

* steps: one worker process builds a case (cases.py), runs ``WARMUP`` untimed steps, then
  times ``steps`` steps (CPU time, wall time, minor page faults and system time per step). The
  minipeft worker first applies ``minipeft.runtime.apply()``, as every minipeft entry point
  does (one BLAS thread, the allocator keeping freed memory); the PyTorch worker sets
  ``torch.set_num_threads(1)`` and nothing else. Workers run in interleaved pairs
  (minipeft then PyTorch, then PyTorch then minipeft, …); a ratio is the median of the
  per-pair ratios of the per-step CPU-time medians.
* memory: one worker per (framework, kind, dtype) runs a first step, hands the freed heap
  back to the kernel (glibc ``malloc_trim``), then reports the peak RSS of a second step
  above the RSS before it (Linux: ``/proc/self/clear_refs`` resets the high-water mark,
  ``VmHWM`` reads it); the minipeft worker then reports tracemalloc's peak of a third step
  (the exact high-water mark of NumPy buffers; PyTorch's are not traced).
* train: the whole ``minipeft train --method lora --task digits --epochs N`` process
  against ``benchmarks/torch_train.py --epochs N`` (the same job in PyTorch), CPU time
  (user + system, from the children's rusage) and wall time, in interleaved pairs.

Why ``WARMUP`` untimed steps, not one: timing every step of a fresh process shows the
first step paying for the process's first touches (imports, page faults of every buffer,
optimiser state), the second still faulting in part of what the first step left unmapped
and slower than the rest, and the steps after it flat (no page faults) up to a rare
full garbage collection. A ``minipeft train`` of many steps spends almost all of its time
in that flat part, so the timed steps start after the warm-up; the same warm-up is applied
to the PyTorch worker, whose own first steps also fault and run slower. The per-step median
keeps an occasional full collection out of the figure, as it is out of most steps of a
long run.

The worker is this file: ``python benchmarks/fresh.py worker '<json>'`` prints one JSON line.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as onp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: variables a parent benchmark sets for itself; a fresh worker starts without them, as a user's shell would
_STRIP = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: untimed steps before the timed ones, in every steps worker of both frameworks (module docstring)
WARMUP = 2
#: a step kind ending in this ("lora+recompute") is that step under MINIPEFT_RECOMPUTE=mlp
#: (minipeft only: PyTorch has no such step, and its memory worker skips it)
RECOMPUTE = "+recompute"


def _env():
    env = {k: v for k, v in os.environ.items() if k not in _STRIP}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["MINIPEFT_PROGRESS"] = "0"
    return env


# ----------------------------------------------------------------------- the worker
def _rss_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _reset_hwm():
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _malloc_trim():
    """glibc's malloc_trim(0): return every free page of the heap to the kernel (no-op elsewhere)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except (OSError, TypeError):
        pass


def worker(spec):
    """Run one measurement described by ``spec`` (see the module docstring); returns a dict."""
    sys.path.insert(0, str(HERE))
    fw, mode, kind = spec["framework"], spec["mode"], spec["kind"]
    if fw == "mp":
        if kind.endswith(RECOMPUTE):
            kind = kind[:-len(RECOMPUTE)]
            os.environ["MINIPEFT_RECOMPUTE"] = "mlp"
        from minipeft import runtime
        policy = runtime.apply()
    else:
        import torch
        torch.set_num_threads(1)
        policy = {"torch_threads": torch.get_num_threads()}
    import cases
    case = cases.Case(spec["d"], spec["T"], spec["dtype"], batch=spec["batch"])
    if fw == "mp":
        fn = cases.mp_forward(case) if kind == "forward" else cases.mp_step(case, kind)
    else:
        fn = cases.torch_forward(case) if kind == "forward" else cases.torch_step(case, kind)
    out = {"spec": spec, "policy": policy}
    if mode == "memory":
        import gc
        fn()  # a first step: one-time allocations (optimiser state, caches) happen here
        gc.collect()
        _malloc_trim()  # hand the freed memory back, so the measured step must fault in what it uses
        _reset_hwm()
        base = _rss_kib("VmRSS")
        fn()
        out["rss_mb"] = (_rss_kib("VmHWM") - base) / 1024
        if fw == "mp":  # then the exact count of NumPy buffers (a second step)
            import tracemalloc
            gc.collect()
            tracemalloc.start()
            t0 = tracemalloc.get_traced_memory()[0]
            fn()
            out["traced_mb"] = (tracemalloc.get_traced_memory()[1] - t0) / 2 ** 20
            tracemalloc.stop()
        return out
    for _ in range(WARMUP):  # untimed: the first steps (imports, first touches, page faults)
        fn()
    cpu, wall, faults, sys_t = [], [], [], []
    for _ in range(spec["steps"]):
        r0, c0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
        fn()
        c1, w1, r1 = time.process_time(), time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(c1 - c0)
        wall.append(w1 - w0)
        faults.append(r1.ru_minflt - r0.ru_minflt)
        sys_t.append(r1.ru_stime - r0.ru_stime)
    out.update(cpu_ms=1e3 * float(onp.median(cpu)), wall_ms=1e3 * float(onp.median(wall)),
               faults=float(onp.median(faults)), sys_ms=1e3 * float(onp.median(sys_t)),
               torch_loaded="torch" in sys.modules)
    return out


def run_worker(spec, timeout=600):
    """``worker(spec)`` in a fresh interpreter; its result dict."""
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "worker", json.dumps(spec)],
                       capture_output=True, text=True, env=_env(), timeout=timeout, cwd=str(ROOT))
    if p.returncode != 0:
        raise RuntimeError(f"fresh worker {spec} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- the runners
def _pair_ratio(a, b):
    r = onp.asarray(a, dtype=float) / onp.asarray(b, dtype=float)
    return {"ratio": float(onp.median(r)), "iqr": (float(onp.percentile(r, 25)), float(onp.percentile(r, 75))),
            "n": int(r.size)}


def step_pairs(kind, d, T, batch, dtype, pairs=3, steps=8, log=print):
    """Interleaved fresh-process pairs of one step ``kind``: per-step medians and their ratio."""
    runs = {"mp": [], "torch": []}
    for i in range(pairs):
        for fw in (("mp", "torch") if i % 2 == 0 else ("torch", "mp")):
            runs[fw].append(run_worker({"framework": fw, "mode": "steps", "kind": kind, "d": d, "T": T,
                                        "batch": batch, "dtype": dtype, "steps": steps}))
    med = lambda fw, k: float(onp.median([r[k] for r in runs[fw]]))  # noqa: E731
    out = {"kind": kind, "d": d, "T": T, "batch": batch, "dtype": dtype, "pairs": pairs, "steps": steps,
           "warmup": WARMUP,
           **_pair_ratio([r["cpu_ms"] for r in runs["mp"]], [r["cpu_ms"] for r in runs["torch"]])}
    for fw in runs:
        out[fw] = {k: med(fw, k) for k in ("cpu_ms", "wall_ms", "faults", "sys_ms")}
    out["mp_policy"] = runs["mp"][0]["policy"]
    log(f"  fresh {kind} d={d} T={T} batch {batch} {dtype}: minipeft {out['mp']['cpu_ms']:.1f} ms "
        f"({out['mp']['faults']:.0f} faults/step), torch {out['torch']['cpu_ms']:.1f} ms "
        f"({out['torch']['faults']:.0f}); ratio {out['ratio']:.2f}")
    return out


def memory(kinds, d, T, batch, dtype, log=print, frameworks=("mp", "torch")):
    """Peak memory of one step of each kind, each framework in a fresh process (``frameworks``:
    without "torch", minipeft's half only)."""
    out = {"d": d, "T": T, "batch": batch, "dtype": dtype, "kinds": list(kinds), "mp": {}, "torch": {}}
    for kind in kinds:
        for fw in frameworks:
            if fw == "torch" and kind.endswith(RECOMPUTE):
                continue
            r = run_worker({"framework": fw, "mode": "memory", "kind": kind, "d": d, "T": T, "batch": batch,
                            "dtype": dtype, "steps": 1})
            out[fw][kind] = {k: r[k] for k in ("rss_mb", "traced_mb") if k in r}
        theirs = f"; torch RSS {out['torch'][kind]['rss_mb']:.0f} MB" if kind in out["torch"] else ""
        log(f"  memory {kind} d={d} T={T} batch {batch} {dtype}: minipeft traced {out['mp'][kind]['traced_mb']:.0f} MB, "
            f"RSS {out['mp'][kind]['rss_mb']:.0f} MB{theirs}")
    return out


def _timed_process(cmd):
    """(CPU s = user + system of the child, wall s) of one command run to completion."""
    r0, w0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=str(ROOT), timeout=1800)
    wall, r1 = time.perf_counter() - w0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return {"cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "sys_s": r1.ru_stime - r0.ru_stime, "wall_s": wall, "stdout_tail": p.stdout.strip().splitlines()[-2:]}


def train_pairs(epochs=20, pairs=3, log=print):
    """``minipeft train --method lora --task digits --epochs N`` vs torch_train.py, whole processes,
    after one untimed minipeft run that leaves the pretrained backbone in the cache."""
    runs = {"mp": [], "torch": []}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = {"mp": [sys.executable, "-m", "minipeft", "train", "--method", "lora", "--task", "digits",
                       "--epochs", str(epochs), "--out", os.path.join(tmp, "a.npz")],
                "torch": [sys.executable, str(HERE / "torch_train.py"), "--epochs", str(epochs),
                          "--out", os.path.join(tmp, "t.npz")]}
        # one untimed run first: it builds the pretrained backbone in the cache if it is not
        # there yet (a user's first run only), so every timed run finds it, as torch_train.py does
        _timed_process(cmds["mp"][:-4] + ["--epochs", "1"] + cmds["mp"][-2:])
        for i in range(pairs):
            for fw in (("mp", "torch") if i % 2 == 0 else ("torch", "mp")):
                runs[fw].append(_timed_process(cmds[fw]))
    out = {"epochs": epochs, "pairs": pairs,
           "command": "minipeft train --method lora --task digits --epochs " + str(epochs),
           **_pair_ratio([r["cpu_s"] for r in runs["mp"]], [r["cpu_s"] for r in runs["torch"]])}
    for fw in runs:
        out[fw] = {k: float(onp.median([r[k] for r in runs[fw]])) for k in ("cpu_s", "sys_s", "wall_s")}
        out[fw]["last_lines"] = runs[fw][-1]["stdout_tail"]
    log(f"  train process, {epochs} epochs: minipeft {out['mp']['cpu_s']:.1f} s CPU ({out['mp']['sys_s']:.1f} s system), "
        f"torch {out['torch']['cpu_s']:.1f} s ({out['torch']['sys_s']:.1f} s); ratio {out['ratio']:.2f}")
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python benchmarks/fresh.py worker '<json spec>'  (run by bench.py)")

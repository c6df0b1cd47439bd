"""How the benchmark measures: interleaved timing, the BLAS peak, GEMM FLOPs, peak memory.

Timing. Two callables A (minipeft) and B (PyTorch) run in rounds, A B in even rounds
and B A in odd ones, after warm-up calls; each call is timed by the process's CPU time
(``time.process_time``: all threads of this process, none of another) and by the wall
clock. On a shared machine the CPU time is the fairer clock — time the scheduler gives
to other processes does not count — so the ratios use it; wall-clock medians are kept
beside them. A ratio is the median of the per-round ratios A/B, its spread their
interquartile range.
"""
from __future__ import annotations

import gc
import time
import tracemalloc

import numpy as onp


def _stats(xs):
    xs = onp.asarray(xs, dtype=float)
    return {"median": float(onp.median(xs)), "p25": float(onp.percentile(xs, 25)),
            "p75": float(onp.percentile(xs, 75)), "n": int(xs.size)}


def interleave(fns, rounds, warmup=1):
    """Run the callables ``fns`` (name -> fn) in interleaved rounds; order reversed every round.

    Returns {name: {"cpu": stats, "wall": stats, "cpu_raw": [...]}} with times in seconds.
    """
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    raw = {k: {"cpu": [], "wall": []} for k in names}
    gc_was = gc.isenabled()
    gc.disable()  # a collection inside one timed call would land on one side only
    try:
        for r in range(rounds):
            for k in (names if r % 2 == 0 else names[::-1]):
                c0, w0 = time.process_time(), time.perf_counter()
                fns[k]()
                raw[k]["cpu"].append(time.process_time() - c0)
                raw[k]["wall"].append(time.perf_counter() - w0)
            gc.collect()
    finally:
        if gc_was:
            gc.enable()
    return {k: {"cpu": _stats(v["cpu"]), "wall": _stats(v["wall"]), "cpu_raw": v["cpu"]} for k, v in raw.items()}


def ratio(res, a, b):
    """a/b: the median of the per-round ratios (CPU time; each round ran a and b back to
    back, so slow spells of the machine cancel), their interquartile range, and the
    ratio of the wall-clock medians."""
    ra = onp.asarray(res[a]["cpu_raw"]) / onp.asarray(res[b]["cpu_raw"])
    return {"cpu": float(onp.median(ra)),
            "wall": res[a]["wall"]["median"] / res[b]["wall"]["median"],
            "iqr": (float(onp.percentile(ra, 25)), float(onp.percentile(ra, 75)))}


def rounds_for(seconds_per_call, budget, lo=5, hi=31):
    """How many rounds fit ``budget`` seconds for a call of ``seconds_per_call``, in [lo, hi]."""
    return int(max(lo, min(hi, budget // max(seconds_per_call, 1e-6))))


# ------------------------------------------------------------------------ BLAS peak
def blas_peak(dtype, n=2048, reps=5, matmul=None):
    """GFLOP/s of one large square GEMM (2n³ FLOPs), the best of ``reps`` timed calls.

    matmul: (a, b) -> a @ b for another library (PyTorch); default NumPy's BLAS.
    """
    rng = onp.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    mm = matmul or (lambda x, y: x @ y)
    args = (a, b)
    if matmul is not None:
        import torch
        args = (torch.from_numpy(a), torch.from_numpy(b))
    mm(*args)
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        mm(*args)
        best = min(best, time.process_time() - t0)
    return 2.0 * n ** 3 / best / 1e9


# ---------------------------------------------------------------------- GEMM FLOPs
def gemm_flops(cfg, B, T, kind, r=4):
    """FLOPs of the matrix products of one forward or one full fine-tuning step.

    Counted per product: 2·m·k·n. T tokens (CLS + patches), M = B·T rows.
        forward  = N·[2M(4d² + 2·d·d_ff) + 4·B·T²·d] + 2·B·m·patch_dim·d + 2·B·d·C
                   (q, k, v, o, W₁, W₂; Q Kᵀ and A V over all heads; patch embedding; head)
        full     = 3·(forward − embedding) + 2·embedding
                   (each product's backward is two products of its size — dX and dW, or
                   for attention ∂Q, ∂K from ∂S and ∂A, ∂V from ∂Z — except the patch
                   embedding, whose input is data: dW only)
        lora     = the forward + LoRA's branches (r on W_q and W_v of every layer), then
                   only what the gradients of A, B and the head need: every dX of layers
                   2..N and all of their attention backward; in layer 1, whose input is
                   frozen, only the dX of W_o, W₁, W₂ and ∂Q, ∂V (no ∂K); per adapted
                   projection 4 rank-r products (3 in layer 1: no dX); the head's dW and dX
    kind: "forward", "full" or "lora" (with rank ``r``).
    """
    d, N, C, dff = cfg.d, cfg.N, cfg.n_classes, cfg.d_ff
    M = B * T
    lin = 2 * M * (4 * d * d + 2 * d * dff)  # q, k, v, o, W₁, W₂ of one layer
    att = 4 * B * T * T * d  # Q Kᵀ and A V of one layer, all heads
    embed = 2 * B * (T - 1) * cfg.patch_dim * d
    head = 2 * B * d * C
    fwd = N * (lin + att) + embed + head
    if kind == "forward":
        return fwd
    if kind == "full":
        return 3 * (fwd - embed) + 2 * embed
    if kind == "lora":
        rank = 2 * M * r * d  # one product of a rank-r branch (x Aᵀ, (·) Bᵀ, or one of their VJPs)
        upper = lin + 2 * att + 2 * 4 * rank
        first = 2 * M * (d * d + 2 * d * dff) + 3 * att // 2 + 2 * 3 * rank
        return fwd + N * 2 * 2 * rank + (N - 1) * upper + first + 2 * head
    raise ValueError(f"kind must be 'forward', 'full' or 'lora', got {kind!r}")


def vjp_runs(fn, prims):
    """{id(argument 1): how many VJP closures ran} while ``fn()`` runs, for the autograd
    primitives ``prims`` (``linear`` and friends: argument 1 is W), so a caller can tell, per
    weight matrix, where the backward pass did work. Counts closures that actually ran, not
    nodes that were only built."""
    from autograd.core import primitive_vjps
    runs, saved = {}, {f: primitive_vjps[f] for f in prims}

    def wrap(maker):
        def wrapped(argnums, ans, args, kwargs):
            vjp, key = maker(argnums, ans, args, kwargs), id(args[1])

            def counted(g):
                runs[key] = runs.get(key, 0) + 1
                return vjp(g)

            return counted

        return wrapped

    try:
        primitive_vjps.update({f: wrap(m) for f, m in saved.items()})
        fn()
    finally:
        primitive_vjps.update(saved)
    return runs


# --------------------------------------------------------------------------- memory
def peak_bytes(fn):
    """Peak bytes of NumPy memory allocated while ``fn()`` runs, beyond what was live before.

    tracemalloc sees every NumPy array buffer (NumPy reports them to it), so this is the
    exact high-water mark of activations, gradients and temporaries of one call —
    deterministic, unlike the process RSS, which the allocator's caching blurs. It
    slows Python down, so it never runs while timing.
    """
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------- page faults
def page_faults():
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except ImportError:
        return 0


# ---------------------------------------------------------------------- machine load
def load_line(when):
    """``load average <when> a / b / c (1 / 5 / 15 min) on n cores`` (+ a note when the 1-minute
    load exceeds the core count: other processes shared the CPU, so wall-clock times stretch
    and the interleaved CPU-time ratios are the fairer figure)."""
    import os
    if not hasattr(os, "getloadavg"):
        return f"load average {when}: not available"
    a, b, c = os.getloadavg()
    n = os.cpu_count() or 1
    note = "; above the core count: other processes shared the CPU" if a > n else ""
    return f"load average {when} {a:.1f} / {b:.1f} / {c:.1f} (1 / 5 / 15 min) on {n} cores{note}"


# ---------------------------------------------------------------------- generated tables
class Report:
    """The lines of a benchmark's report: ``out(line)`` prints one as it comes and keeps it;
    ``out.write(path, script)`` writes them all to the markdown file ``path`` under the header
    "# `python benchmarks/<script>` (generated)"."""

    def __init__(self):
        self.lines = []

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(line)

    def write(self, path, script):
        from pathlib import Path
        Path(path).write_text(f"# `python benchmarks/{script}` (generated)\n\n" + "\n".join(self.lines) + "\n")
        print(f"wrote {path}")


#: the real English paragraph the text benchmarks tokenize into their batches (minilm_bench, smollm2_bench)
TEXT = ("Parameter-efficient fine-tuning adapts a large pretrained language model to a new task by "
        "training a small number of new parameters while the pretrained weights stay frozen. Prompt "
        "tuning learns a few input embeddings, prefix tuning learns keys and values at every layer, "
        "adapters insert small bottleneck networks, and LoRA learns a low-rank update of the attention "
        "projections that can be merged into the weights after training, so inference costs nothing "
        "extra. BitFit trains only the biases, and (IA)3 learns vectors that rescale keys, values and "
        "the feed-forward activations. Each method trades accuracy, memory and speed differently. ")

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
import math
import time
import tracemalloc
from typing import NamedTuple

import numpy as onp


def _stats(xs):
    xs = onp.asarray(xs, dtype=float)
    return {"median": float(onp.median(xs)), "p25": float(onp.percentile(xs, 25)),
            "p75": float(onp.percentile(xs, 75)), "n": int(xs.size)}


def interleave(fns, rounds, warmup=1, self_timed=False):
    """Run the callables ``fns`` (name -> fn) in interleaved rounds; order reversed every round.

    self_timed: each fn times itself and returns (CPU seconds, wall seconds) — a call that
    has a worker process do the work, timed by that process's own clocks (ab.py); else each
    call is timed here.
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
                got = fns[k]()
                cpu, wall = got if self_timed else (time.process_time() - c0, time.perf_counter() - w0)
                raw[k]["cpu"].append(cpu)
                raw[k]["wall"].append(wall)
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
class Gemm(NamedTuple):
    """One matrix product of a step, ``count`` times: C = op(A) op(B), op(A) (m, k), op(B) (k, n),
    once per index of ``stack`` (() for one 2-D product; (B, h) for one per batch element and head).

    Each operand's layout, as the step stores it (``gemm_operands`` builds exactly these):
        "N"   a C-contiguous (..., rows, cols) array
        "T"   the transpose of a C-contiguous (..., cols, rows) array (Wᵀ of a W stored d_out × d_in, gᵀ)
        "H"   one head of a (B, rows, h·cols) activation: the strided view (B, h, rows, cols)
        "HT"  the transpose of a head view: Kᵀ, Vᵀ
    ``c``: the output's, "N" (a new C-contiguous array) or "H" (written straight into the
    concat-heads layout (B, m, h·n)). FLOPs: 2·m·k·n per product.
    """
    name: str
    count: int
    stack: tuple
    m: int
    k: int
    n: int
    a: str = "N"
    b: str = "N"
    c: str = "N"

    @property
    def flops(self):
        """2 · count · |stack| · m · k · n."""
        return 2 * self.count * math.prod(self.stack) * self.m * self.k * self.n

    @property
    def key(self):
        """What its time depends on: everything but the name and the count."""
        return tuple(self)[2:]


def _linear(name, rows, d_in, d_out, dx=True, dw=True):
    """The products of y = x Wᵀ (x (rows, d_in), W (d_out, d_in)): the forward, and of its VJPs
    dX = g W and dW = gᵀ x, those asked for."""
    out = [Gemm(f"{name}: x Wᵀ", 1, (), rows, d_in, d_out, "N", "T")]
    if dx:
        out.append(Gemm(f"{name}: dX = g W", 1, (), rows, d_out, d_in, "N", "N"))
    if dw:
        out.append(Gemm(f"{name}: dW = gᵀ x", 1, (), d_out, rows, d_in, "T", "N"))
    return out


def _attention(B, T, h, d_h, grads=("A", "V", "Q", "K")):
    """The per-head products of attention (nn/attention.py), S = T keys: the forward's Q Kᵀ and
    A V, and of the backward those asked for: ∂A = G Vᵀ, ∂V = Aᵀ G, ∂Q = ∂S K, ∂K = ∂Sᵀ Q.
    Kᵀ and Vᵀ are transposed head views, or C-contiguous copies where the step makes them
    (``nn.attention.copies_transposed``; the copy itself is not a product)."""
    from minipeft.nn.attention import copies_transposed
    st = (B, h)
    qk = Gemm("Q Kᵀ", 1, st, T, d_h, T, "H", "N" if copies_transposed(T, d_h) else "HT")
    av = Gemm("A V", 1, st, T, T, d_h, "N", "H", "H")
    back = {"A": qk._replace(name="∂A = G Vᵀ"), "V": Gemm("∂V = Aᵀ G", 1, st, T, T, d_h, "T", "H", "H"),
            "Q": av._replace(name="∂Q = ∂S K"), "K": Gemm("∂K = ∂Sᵀ Q", 1, st, T, T, d_h, "T", "H", "H")}
    return [qk, av] + [back[g] for g in grads]


def _rank(name, rows, d, r, dx=True):
    """LoRA's rank-r products on a projection (nn/lowrank.py; x (rows, d), A (r, d), B (d, r)):
    the forward u = x Aᵀ, u Bᵀ; the backward ∂B = gᵀ u, ∂u = g B, ∂A = ∂uᵀ x and (``dx``) ∂u A."""
    out = [Gemm(f"LoRA {name}: u = x Aᵀ", 1, (), rows, d, r, "N", "T"),
           Gemm(f"LoRA {name}: u Bᵀ", 1, (), rows, r, d, "N", "T"),
            Gemm(f"LoRA {name}: ∂B = gᵀ u", 1, (), d, rows, r, "T", "N"),
            Gemm(f"LoRA {name}: ∂u = g B", 1, (), rows, d, r, "N", "N"),
            Gemm(f"LoRA {name}: ∂A = ∂uᵀ x", 1, (), r, rows, d, "T", "N")]
    if dx:
        out.append(Gemm(f"LoRA {name}: dX = ∂u A", 1, (), rows, r, d, "N", "N"))
    return out


def gemm_products(cfg, B, T, kind, r=4):
    """The matrix products one forward, full fine-tuning step or LoRA step must do, at their
    shapes and layouts: a list of ``Gemm`` (equal products merged, ``count`` times).

    T tokens (CLS + patches), M = B·T rows, d_h = d / h. Per block: q, k, v, o (d × d), W₁
    (d_ff × d), W₂ (d × d_ff) on M rows; per head Q Kᵀ and A V. Then the patch embedding
    (B·(T − 1) rows of patch_dim) and the head (B pooled rows; a strided view in the step,
    counted here as a contiguous one: its products are a tiny share of the FLOPs).
        forward  every product once
        full     + every dX and dW and the attention backward (∂A, ∂V, ∂Q, ∂K), except the
                 patch embedding's dX (its input is data: dW only)
        lora     (r on W_q and W_v of every block, + the head) the forward with LoRA's
                 branches, then only what the gradients of A, B and the head need: every dX
                 and all of the attention backward of blocks 2..N; in block 1, whose input is
                 frozen, only the dX of W_o, W₁, W₂ and ∂A, ∂V, ∂Q (no ∂K); per adapted
                 projection 4 rank-r products (3 in block 1: no dX); the head's dW and dX
    kind: "forward", "full" or "lora" (with rank ``r``).
    """
    if kind not in ("forward", "full", "lora"):
        raise ValueError(f"kind must be 'forward', 'full' or 'lora', got {kind!r}")
    d, N, C, dff, h = cfg.d, cfg.N, cfg.n_classes, cfg.d_ff, cfg.h
    M, full, lora = B * T, kind == "full", kind == "lora"
    shapes = [(t, d, d) for t in "qkvo"] + [("W₁", d, dff), ("W₂", dff, d)]  # (name, d_in, d_out)
    out = _linear("embed", B * (T - 1), cfg.patch_dim, d, dx=False, dw=full)
    for layer in range(N):
        first = layer == 0
        for name, d_in, d_out in shapes:
            out += _linear(name, M, d_in, d_out, dx=full or (lora and not (first and name in ("q", "k", "v"))),
                           dw=full)
            if lora and name in ("q", "v"):
                out += _rank(name, M, d, r, dx=not first)
        grads = ("A", "V", "Q", "K") if full or (lora and not first) else (("A", "V", "Q") if lora else ())
        out += _attention(B, T, h, d // h, grads=grads)
    out += _linear("head", B, d, C, dx=kind != "forward", dw=kind != "forward")
    counts, first_of = {}, {}
    for g in out:  # equal products (the same name and shape in every block) merged, in order of appearance
        counts[g.name, g.key] = counts.get((g.name, g.key), 0) + g.count
        first_of.setdefault((g.name, g.key), g)
    return [g._replace(count=counts[k]) for k, g in first_of.items()]


def gemm_flops(cfg, B, T, kind, r=4):
    """FLOPs of the matrix products of one forward, full or LoRA step: Σ 2·m·k·n over
    ``gemm_products`` (so the two cannot drift apart). In closed form, M = B·T rows:
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
    return sum(g.flops for g in gemm_products(cfg, B, T, kind, r))


def gemm_operands(g, dtype="float32", rng=None):
    """(A, B, C) for one product ``g``, in its layouts (``Gemm``), so that
    ``numpy.matmul(A, B, out=C)`` is the product as the step runs it.  A: (*stack, m, k),
    B: (*stack, k, n), C: (*stack, m, n) (views where the layout says so)."""
    rng = onp.random.default_rng(0) if rng is None else rng

    def make(layout, rows, cols, fill=True):
        new = (lambda shape: rng.standard_normal(shape).astype(dtype)) if fill else (lambda s: onp.empty(s, dtype))
        if layout in ("H", "HT"):
            if len(g.stack) != 2:
                raise ValueError(f"{g.name}: a head layout needs stack (B, h), got {g.stack}")
            Bt, h = g.stack
            r_, c_ = (rows, cols) if layout == "H" else (cols, rows)
            v = new((Bt, r_, h * c_)).reshape(Bt, r_, h, c_).transpose(0, 2, 1, 3)  # (B, h, r_, c_)
            return v if layout == "H" else v.swapaxes(-1, -2)
        if layout == "N":
            return new(g.stack + (rows, cols))
        if layout == "T":
            return new(g.stack + (cols, rows)).swapaxes(-1, -2)
        raise ValueError(f"{g.name}: unknown layout {layout!r}")

    return make(g.a, g.m, g.k), make(g.b, g.k, g.n), make(g.c, g.m, g.n, fill=False)


def gemm_seconds(products, dtype="float32", reps=5, min_call=1e-3):
    """CPU seconds of the matrix products alone: {kind: Σ count · t} for each list in
    ``products`` ({kind: [Gemm]}), t the best of ``reps`` timed calls of ``numpy.matmul`` on
    operands in the step's layouts (``gemm_operands``; output preallocated: no allocation, no
    page faults; operands warm in cache), each timed call repeating the product to at least
    ``min_call`` s. A product shared by several lists is timed once. NumPy's BLAS, with the
    threads the caller set (bench.py: one)."""
    t = {}
    for g in (g for gs in products.values() for g in gs):
        if g.key in t:
            continue
        a, b, c = gemm_operands(g, dtype)
        c0 = time.process_time()
        onp.matmul(a, b, out=c)  # warm-up, and a first estimate
        inner = max(1, int(min_call / max(time.process_time() - c0, 1e-7)))
        best = float("inf")
        for _ in range(reps):
            c0 = time.process_time()
            for _ in range(inner):
                onp.matmul(a, b, out=c)
            best = min(best, (time.process_time() - c0) / inner)
        t[g.key] = best
    return {kind: sum(g.count * t[g.key] for g in gs) for kind, gs in products.items()}


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

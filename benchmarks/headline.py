"""The benchmark's headline: fresh-process step and whole-command ratios, peak memory, the GEMM
share of a step and LoRA / full against its floor (with what is reachable: the products alone
and PyTorch's same figures), the BLAS kernels, and the targets of issue 16 — measured by
bench.py (through fresh.py), rendered here from the results dict, so that bench.py's report
and the README's generated table (readme_table.py) are one text.

Ratios are minipeft / PyTorch: below 1 minipeft is faster (or smaller).
"""
from __future__ import annotations

import re

#: the issue's targets (issue 16): fresh-process step ratios, the whole command, memory
STEP_TARGET = 1.0  # minipeft / PyTorch, fresh processes, LoRA and full steps, every batch
TRAIN_TARGET = 1.0  # `minipeft train` process / the PyTorch script's, CPU time
MEM_TARGETS = {"lora": 0.7, "prompt": 0.8}  # traced peak of the step / the full step's
#: the GEMM targets: a full step's share of the NumPy float32 GEMM peak, by width d; LoRA / full
#: at most this far above its GEMM-FLOP floor, at every size
GEMM_SHARE_TARGETS = {64: 0.55, 256: 0.75}
FLOOR_GAP = 0.05


def _untimed(r):
    """The untimed warm-up of a fresh-process result: "one untimed step" (results from before
    fresh.WARMUP) or "N untimed steps"."""
    n = r.get("warmup", 1)
    return "one untimed step" if n == 1 else f"{n} untimed steps"


def blas_kernels(torch=None) -> dict:
    """Which BLAS kernel each side uses: NumPy's libraries from threadpoolctl (with the CPU
    kernel OpenBLAS picked), PyTorch's BLAS and CPU capability from ``torch.__config__``."""
    out = {}
    try:
        from minipeft import runtime
        out["numpy"] = [f"{b['api']} {b['version']}, kernel {b['architecture']}, {b['threads']} thread(s)"
                        for b in runtime.blas_libraries()]
    except ImportError:  # pragma: no cover
        out["numpy"] = ["unknown"]
    if torch is not None:
        cfg = torch.__config__.show()
        blas = re.search(r"BLAS_INFO=(\w+)", cfg)
        cap = re.search(r"CPU capability usage: (\S+)", cfg)
        try:
            cap_now = torch.backends.cpu.get_cpu_capability()
        except AttributeError:  # pragma: no cover
            cap_now = cap.group(1) if cap else "unknown"
        out["torch"] = [f"{blas.group(1) if blas else 'unknown BLAS'}, CPU capability {cap_now}, "
                        f"{torch.get_num_threads()} thread(s)"]
    return out


def _mark(ok):
    return "pass" if ok else "**FAIL**"


def _vs(v, lim, sign=""):
    """v to 2 decimals, or more where 2 would print the limit itself on the failing side
    (1.004 against ≤ 1.0 reads "1.004", not "1.00 — FAIL"); ``sign``: "+" to sign it."""
    k = 2
    while k < 5 and v > lim and f"{v:.{k}f}" == f"{lim:.{k}f}":
        k += 1  # one more decimal until v no longer prints as the limit it fails
    return f"{v:{sign}.{k}f}"


def _iqr(r):
    return f"{r['iqr'][0]:.2f}–{r['iqr'][1]:.2f}"


def fresh_table(fresh, train) -> list:
    """Markdown lines: the fresh-process step table and the whole-command line."""
    L = []
    if fresh:
        f0 = fresh[0]
        L += [f"Each framework in a fresh process of its own (`benchmarks/fresh.py`; interleaved process pairs, "
              f"{f0['pairs']} pair(s), {f0['steps']} timed steps each after {_untimed(f0)}; d = {f0['d']}, "
              f"T = {f0['T']}, {f0['dtype']}; minipeft under its entry points' policy "
              f"`{f0['mp_policy'].get('allocator')}`, PyTorch as it comes):", "",
              "| step | batch | minipeft ms | PyTorch ms | minipeft / PyTorch (IQR) | page faults / step: "
              "minipeft, PyTorch | system ms / step: minipeft, PyTorch |",
              "|---|---|---|---|---|---|---|"]
        for r in fresh:
            L.append(f"| {r['kind']} | {r['batch']} | {r['mp']['cpu_ms']:.1f} | {r['torch']['cpu_ms']:.1f} | "
                     f"**{r['ratio']:.2f}** ({_iqr(r)}) | {r['mp']['faults']:.0f}, {r['torch']['faults']:.0f} | "
                     f"{r['mp']['sys_ms']:.1f}, {r['torch']['sys_ms']:.1f} |")
        L.append("")
    if train:
        L += [f"Whole process: `{train['command']}` against `python benchmarks/torch_train.py --epochs "
              f"{train['epochs']}` (the same job in PyTorch), {train['pairs']} interleaved pair(s): CPU time "
              f"{train['mp']['cpu_s']:.1f} s vs {train['torch']['cpu_s']:.1f} s (of which system "
              f"{train['mp']['sys_s']:.1f} s vs {train['torch']['sys_s']:.1f} s), ratio **{train['ratio']:.2f}** "
              f"({_iqr(train)}); wall {train['mp']['wall_s']:.1f} s vs {train['torch']['wall_s']:.1f} s.", ""]
    return L


def memory_table(memory) -> list:
    """Markdown lines: peak memory of each step kind, both frameworks, every dtype measured."""
    if not memory:
        return []
    m0 = memory[0]
    L = [f"Peak memory of one step above what was live before it (d = {m0['d']}, T = {m0['T']}, batch "
         f"{m0['batch']}; each framework in a fresh process). *Traced*: tracemalloc's high-water mark of "
         "minipeft's NumPy buffers (exact); *RSS*: the process's resident-set high-water mark during a second "
         "step, after the first step's freed heap was handed back (both frameworks; blurred by the "
         "allocator). A step = loss + gradients + Adam; forward = inference, no gradient; *recompute*: the same "
         "step under `MINIPEFT_RECOMPUTE=mlp` (the frozen MLP keeps its input, not GELU′(U), and recomputes "
         "U = x W₁ᵀ + b₁ in the backward pass; minipeft only). The targets are the default policy's.", "",
         "| dtype | step | minipeft traced MB | / full step | minipeft RSS MB | PyTorch RSS MB | minipeft / PyTorch (RSS) |",
         "|---|---|---|---|---|---|---|"]
    for m in memory:
        full = m["mp"]["full"]["traced_mb"]
        for k in m["kinds"]:
            a, t = m["mp"][k], m["torch"].get(k, {})
            rel = f"{a['rss_mb'] / t['rss_mb']:.2f}" if t.get("rss_mb") else "–"
            theirs = f"{t['rss_mb']:.0f}" if t.get("rss_mb") else "–"
            label = k.replace("+recompute", ", recompute")
            L.append(f"| {m['dtype']} | {label} | {a['traced_mb']:.0f} | {a['traced_mb'] / full:.2f} | {a['rss_mb']:.0f} | "
                     f"{theirs} | {rel} |")
    L.append("")
    return L


def blas_lines(blas, peaks) -> list:
    """Markdown lines: the BLAS kernels and each side's GEMM peak."""
    gemm = ("GEMM peak (one large square GEMM, best of 5, one thread): " + ", ".join(
        f"{dt} NumPy {p['numpy']:.0f}" + (f" / PyTorch {p['torch']:.0f}" if p.get("torch") else "") + " GFLOP/s"
        for dt, p in peaks.items()) + ". Part of any ratio is the BLAS library, not the framework's code: "
        "compare the peaks.") if peaks else "(GEMM peaks not measured in this run.)"
    L = ["BLAS: NumPy " + "; ".join(blas.get("numpy", ["unknown"]))
         + (" — PyTorch " + "; ".join(blas["torch"]) if "torch" in blas else "") + ". " + gemm, ""]
    return L


def gemm_table(gemm, lowest) -> list:
    """Markdown lines: each size's fresh full and LoRA step, the full step's GEMM share, LoRA / full
    against its floor; and the LoRA-on-the-last-block count of linear VJPs per block."""
    L = []
    if gemm:
        g0 = gemm[0]
        L += [f"minipeft alone, float32, batch {g0['batch']}, each step in fresh processes under its entry points' "
              f"policy ({g0['pairs']} interleaved full/LoRA pair(s), {g0['steps']} timed steps each). GEMM share: the "
              "FLOPs of the full step's matrix products (`measure.gemm_flops`) per second of its CPU time, over the "
              "NumPy peak below. The floor: LoRA's GEMM FLOPs over the full step's, what LoRA / full would be if "
              "only the products cost time.", "",
              "| d | T | full step ms | GEMM share of the peak | LoRA step ms | LoRA / full | floor | above the floor |",
              "|---|---|---|---|---|---|---|---|"]
        for r in gemm:
            L.append(f"| {r['d']} | {r['T']} | {r['full_ms']:.1f} | {100 * r['share']:.0f} % | {r['lora_ms']:.1f} | "
                     f"{r['lora_full']:.2f} | {r['floor']:.2f} | {r['lora_full'] - r['floor']:+.2f} |")
        L.append("")
    L += reachable_table(gemm)
    if lowest:
        L += [f"LoRA on block {lowest['layer'] + 1} of {lowest['N']} only (d = {lowest['d']}, T = {lowest['T']}): linear "
              f"VJPs run in one step, block by block: {lowest['vjps_per_block']}.", ""]
    return L


def reachable_table(gemm) -> list:
    """Markdown lines: what the GEMM targets could reach, per size — the full step's GEMM share
    of the peak (as measured, and of its products alone), LoRA / full's time floor beside its
    FLOP floor, and PyTorch's same figures; nothing for a results file that has none."""
    rows = [r for r in gemm or [] if "alone" in r]
    if not rows:
        return []
    t = any("torch" in r for r in rows)
    L = ["What is reachable (same run). *GEMMs alone*: only the matrix products the step must do — "
         "`measure.gemm_products`, the list `measure.gemm_flops` counts — at the step's shapes and layouts, "
         "timed in NumPy, one thread, in the benchmark's own process (`measure.gemm_seconds`: each product "
         "the best of a few calls on warm operands into a preallocated output); their share of the peak is "
         "the most the full step could reach if everything else cost nothing, and LoRA's GEMM time over the "
         "full step's is a time floor for LoRA / full beside the FLOP floor (the products do not all run at "
         "one rate). A share above 100 % means the products ran faster than the one large square GEMM that "
         "defines the peak."
         + (" PyTorch: its twin model (`benchmarks/torch_model.py`) in fresh processes of its own, interleaved "
            "with minipeft's: its full step's GEMM share of *its own* peak (the same FLOP count) and its LoRA / "
            "full against the same FLOP floor." if t else " (PyTorch not measured.)"), "",
         "| d | T | full step: share of the peak | GEMMs alone: full ms, share of the peak | GEMMs alone: LoRA ms "
         "| time floor | FLOP floor | LoRA / full |"
         + (" PyTorch full step ms, share of its peak | PyTorch LoRA / full (above the FLOP floor) |" if t else ""),
         "|---|---|---|---|---|---|---|---|" + ("---|---|" if t else "")]
    for r in rows:
        a = r["alone"]
        line = (f"| {r['d']} | {r['T']} | {100 * r['share']:.0f} % | {a['full_ms']:.1f}, {100 * a['share']:.0f} % | "
                f"{a['lora_ms']:.1f} | {a['time_floor']:.2f} | {r['floor']:.2f} | {r['lora_full']:.2f} |")
        if t:
            p = r.get("torch")
            line += (f" {p['full_ms']:.1f}, {100 * p['share']:.0f} % | {p['lora_full']:.2f} "
                     f"({p['lora_full'] - r['floor']:+.2f}) |" if p else " – | – |")
        L.append(line)
    L.append("")
    return L


def _reachable_share(r) -> str:
    """The information line under a share target: the GEMMs-alone bound and PyTorch's share."""
    parts = []
    if "alone" in r:
        parts.append(f"the products alone reach {100 * r['alone']['share']:.0f} % of the NumPy peak (the most this "
                     "step could reach if everything else cost nothing)")
    if "torch" in r:
        parts.append(f"PyTorch's full step reaches {100 * r['torch']['share']:.0f} % of its own peak")
    return f"  - reachable (information, not a target): {'; '.join(parts)}" if parts else ""


def _reachable_floor(r) -> str:
    """The information line under a floor target: the time floor and PyTorch's LoRA / full."""
    parts = []
    if "alone" in r:
        tf = r["alone"]["time_floor"]
        parts.append(f"the products alone give a time floor of {tf:.2f} vs the FLOP floor's {r['floor']:.2f} "
                     f"({tf - r['floor']:+.2f})")
    if "torch" in r:
        tl = r["torch"]["lora_full"]
        parts.append(f"PyTorch's LoRA / full is {tl:.2f} vs the same FLOP floor ({tl - r['floor']:+.2f})")
    return f"  - reachable (information, not a target): {'; '.join(parts)}" if parts else ""


def gemm_targets(gemm, lowest) -> list:
    """The GEMM targets of issue 16, each pass/FAIL."""
    L = []
    for r in gemm or []:
        lim = GEMM_SHARE_TARGETS.get(r["d"])
        if lim is not None:
            L.append(f"- full step ≥ {100 * lim:.0f} % of the NumPy float32 GEMM peak at d = {r['d']}, T = {r['T']}: "
                     f"{100 * r['share']:.0f} % — {_mark(r['share'] >= lim)}")
            L += [x for x in [_reachable_share(r)] if x]
    for r in gemm or []:
        gap = r["lora_full"] - r["floor"]
        L.append(f"- LoRA / full within {FLOOR_GAP} of its GEMM-FLOP floor at d = {r['d']}, T = {r['T']}: "
                 f"{r['lora_full']:.2f} vs {r['floor']:.2f} ({_vs(gap, FLOOR_GAP, '+')}) — {_mark(gap <= FLOOR_GAP)}")
        L += [x for x in [_reachable_floor(r)] if x]
    if lowest:
        below = sum(lowest["vjps_per_block"][:lowest["layer"]])
        L.append(f"- no backward work below the lowest trainable block (LoRA on block {lowest['layer'] + 1} only): "
                 f"{below} linear VJPs below it — {_mark(below == 0)}")
    return L


def targets(fresh, train, memory) -> list:
    """Issue 16's targets, each pass/FAIL (or not measured)."""
    L = []
    for r in fresh:
        L.append(f"- fresh-process {r['kind']} step ≤ {STEP_TARGET}× PyTorch at batch {r['batch']} (d = {r['d']}, "
                 f"T = {r['T']}, {r['dtype']}): {_vs(r['ratio'], STEP_TARGET)} — {_mark(r['ratio'] <= STEP_TARGET)}")
    if train:
        L.append(f"- `{train['command']}` process ≤ {TRAIN_TARGET}× the PyTorch script (CPU time): "
                 f"{_vs(train['ratio'], TRAIN_TARGET)} — {_mark(train['ratio'] <= TRAIN_TARGET)}")
    for m in memory:
        full = m["mp"]["full"]["traced_mb"]
        for k, lim in MEM_TARGETS.items():
            if k not in m["mp"]:
                continue
            v = m["mp"][k]["traced_mb"] / full
            L.append(f"- {k} step traced peak ≤ {lim}× the full step's ({m['dtype']}, batch {m['batch']}): "
                     f"{_vs(v, lim)} — {_mark(v <= lim)}")
        for k in ("lora", "prompt"):
            a, t = m["mp"].get(k, {}).get("rss_mb"), m["torch"].get(k, {}).get("rss_mb")
            if a and t:
                L.append(f"- {k} step peak ≤ PyTorch's same step ({m['dtype']}, RSS): {a:.0f} vs {t:.0f} MB — "
                         f"{_mark(a <= t)}")
    return L


def render(res) -> str:
    """The headline block of a results dict (bench.py's results.json)."""
    h = res.get("headline", {})
    L = fresh_table(h.get("fresh", []), h.get("train"))
    L += memory_table(h.get("memory", []))
    L += gemm_table(h.get("gemm", []), h.get("lowest"))
    L += blas_lines(h.get("blas", {}), res.get("peaks", {}))
    t = targets(h.get("fresh", []), h.get("train"), h.get("memory", []))
    t += gemm_targets(h.get("gemm", []), h.get("lowest"))
    if t:
        L += ["Targets of issue 16 (fresh processes and memory):", ""] + t + [""]
    return "\n".join(L)

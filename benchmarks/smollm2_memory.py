"""Memory of SmolLM2-135M-Instruct's frozen base in minipeft: float32 arrays vs Q4_1 / Q8_0 blocks
(models/smollm2.py ``load(quantized=...)``), and the time of its linears on one batch.

    python benchmarks/smollm2_memory.py            # both modes, each in a fresh process
    python benchmarks/smollm2_memory.py --rows 256 # the linears' timing on 256 token rows

Each mode runs in its own fresh Python process (so one mode's freed memory cannot hide in
the other's heap) that imports minipeft, reads its resident set size (RSS), loads φ, drops
the parsed metadata and the file mapping (``gguf_read.clear_cache()``; the tokenizer stays),
and reads RSS again. Printed per mode: the bytes φ's leaves hold (arrays' ``nbytes``,
blocks' d, m, q bytes), RSS after loading minus RSS before (all of it, and its anonymous
part — what the process owns, not pages of mapped files), and the peak RSS of the process
(VmHWM: the load's own transient copies included). Then, with one BLAS thread: the time of
applying every linear of the 30 blocks to ``--rows`` token rows (y = x Wᵀ; the tied head
x W_tokᵀ too) and of the backward pass's dX = g W through them, float32 arrays vs
``nn.quant.qlinear`` on the blocks (which dequantizes every tile of W each time), median
of ``--repeat`` runs, process CPU time. Linux only (/proc/self/status).
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # before NumPy loads its BLAS

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {"float32": False, "Q4_1 blocks": True}


def status() -> dict:
    """VmRSS, RssAnon, VmHWM of this process in bytes (from /proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def leaf_bytes(params) -> int:
    from minipeft.tree import leaves_with_paths
    return sum(int(leaf.nbytes) for _, leaf in leaves_with_paths(params))


def linears(params):
    """[(W, is the tied head)] of every linear of φ: 7 per block, then W_tok as the head."""
    out = []
    for b in params["blocks"]:
        out += [(b["attn"][k], False) for k in ("W_q", "W_k", "W_v", "W_o")]
        out += [(b["mlp"][k], False) for k in ("W_g", "W_1", "W_2")]
    return out + [(params["embed"]["W_tok"], True)]


def time_linears(params, quantized: bool, rows: int, repeat: int) -> dict:
    """Median CPU seconds of y = x Wᵀ over every linear, and of dX = g W over them."""
    import numpy as onp
    from threadpoolctl import threadpool_limits

    from minipeft.nn import quant as Q

    rng = onp.random.default_rng(0)
    Ws = linears(params)
    xs = [rng.standard_normal((rows, W.shape[1])).astype(onp.float32) for W, _ in Ws]
    gs = [rng.standard_normal((rows, W.shape[0])).astype(onp.float32) for W, _ in Ws]
    if quantized:
        fwd = [lambda x, W=W: Q.qlinear(x, W) for W, _ in Ws]
        bwd = [lambda g, x, W=W: Q._qlinear_vjp_x(None, x, W)(g) for W, _ in Ws]
    else:
        fwd = [lambda x, W=W: x @ W.T for W, _ in Ws]
        bwd = [lambda g, x, W=W: g @ W for W, _ in Ws]
    times = {"forward": [], "dX": []}
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(repeat + 1):  # the first run is untimed (warm-up)
            t = time.process_time()
            for f, x in zip(fwd, xs):
                f(x)
            t1 = time.process_time()
            for b, g, x in zip(bwd, gs, xs):
                b(g, x)
            t2 = time.process_time()
            times["forward"].append(t1 - t)
            times["dX"].append(t2 - t1)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def child(mode: str, rows: int, repeat: int) -> None:
    import minipeft  # noqa: F401  (its imports count in the baseline)
    from minipeft.models import gguf_read, smollm2

    gc.collect()
    before = status()
    t = time.perf_counter()
    params, hp, tok = smollm2.load(dtype="float32", quantized=MODES[mode])
    seconds = time.perf_counter() - t
    gguf_read.clear_cache()
    gc.collect()
    after = status()
    out = {"mode": mode, "leaf_bytes": leaf_bytes(params), "rss": after["VmRSS"] - before["VmRSS"],
           "anon": after["RssAnon"] - before["RssAnon"], "peak": after["VmHWM"], "load_s": seconds}
    out.update(time_linears(params, MODES[mode], rows, repeat))
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64, help="token rows x of the linears' timing (default 64)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per mode (median; default 5)")
    ap.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.rows, a.repeat)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = []
    for mode in MODES:
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", mode, "--rows", str(a.rows),
                              "--repeat", str(a.repeat)], capture_output=True, text=True, env=env, cwd=ROOT)
        if run.returncode:
            sys.exit(f"{mode}: the child process failed:\n{run.stderr}")
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    mib = 2 ** 20
    print(f"SmolLM2-135M-Instruct base in minipeft; each mode in a fresh process; linears on {a.rows} rows, "
          f"1 BLAS thread, median of {a.repeat}, CPU s\n")
    print("| base | φ's leaves MiB | RSS added MiB | of it anonymous MiB | peak RSS MiB | load s "
          "| forward of the linears s | dX through them s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['mode']} | {r['leaf_bytes'] / mib:.1f} | {r['rss'] / mib:.1f} | {r['anon'] / mib:.1f} | "
              f"{r['peak'] / mib:.1f} | {r['load_s']:.2f} | {r['forward']:.3f} | {r['dX']:.3f} |")
    f32, q = results
    print(f"\nQ4_1 blocks / float32: φ's bytes {q['leaf_bytes'] / f32['leaf_bytes']:.3f}, anonymous RSS added "
          f"{q['anon'] / f32['anon']:.3f}, forward time {q['forward'] / f32['forward']:.2f}, "
          f"dX time {q['dX'] / f32['dX']:.2f}")


if __name__ == "__main__":
    main()

"""GPU (CuPy) vs CPU (NumPy): one training step of minipeft, float32, batch 64.

    python benchmarks/gpu_bench.py [--d 128 512] [--methods full lora] [--rounds 15] [--out DIR]

The step is what ``fit`` does per batch: ``value_and_grad`` of the mean cross-entropy
with respect to θ, then one ``adam_step``. The model is the default ViT scaled in width:
Config(d, h=4, N=4, d_ff=2d, 16×16 grey images, patch 4: 17 tokens), float32, B = 64.
"full" trains every leaf (the heaviest step); "lora" is LoRA with its defaults
(r = 4 on W_q, W_v) plus the head.

Both models start from the same seed. Timings are interleaved (one CPU step, one GPU
step, repeated) after warm-up steps (CuPy compiles its kernels on first use), and the
GPU clock stops after ``Device.synchronize()``. Reported: medians, the ratio
CPU median / GPU median, and the loss both reach after the same steps (a check that
the GPU computed the same thing). The CuPy issue's target: ≥ 30× at d = 512 (full).

Results go to $OUT (or --out) as gpu_bench.json and gpu_bench.md; the table is printed.
``--device fake`` runs the script on tests/fake_device.py's stand-in (no GPU; its
"GPU" times mean nothing): a check that the script itself works.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as onp

import minipeft as mp
from minipeft import backend


def make_step(cfg, method_name, B, seed=0):
    """A closure running one training step on the backend in use (θ and Adam state carried)."""
    methods = [] if method_name == "full" else [mp.method_class(method_name)()]
    params = mp.attach(mp.init_params(cfg, seed, "float32"), methods, cfg, seed)
    rng = onp.random.default_rng(seed)
    x = backend.to_device(rng.random((B, cfg.channels, cfg.image_size, cfg.image_size)).astype("float32"))
    y = backend.to_device(rng.integers(0, cfg.n_classes, B))
    theta, phi = mp.split(params, mp.trainable(methods or [mp.FullFineTune()]))
    state = {"theta": theta, "adam": mp.adam_init(theta), "loss": None}

    def step():
        value, grads = mp.value_and_grad(lambda th: mp.loss(th, phi, x, y, cfg, methods), state["theta"])
        state["theta"], state["adam"] = mp.adam_step(state["theta"], grads, state["adam"], lr=1e-4)
        state["loss"] = value

    return step, state


def timed(step, sync):
    t0 = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - t0


def device_module(name):
    if name == "fake":
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
        from fake_device import fake_xp

        return backend.use_backend(fake_xp), (lambda: None), {"device": "fake stand-in (CPU; times meaningless)"}
    cupy = backend.use_backend("cupy")  # BackendError saying why, if there is no usable GPU
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    info = {"device": props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
            "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}
    return cupy, dev.synchronize, info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, nargs="+", default=[128, 512], help="model widths")
    ap.add_argument("--methods", nargs="+", default=["full", "lora"], help="'full' and/or registry names")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timed steps per device")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", choices=("cupy", "fake"), default="cupy")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results", "gpu"))
    args = ap.parse_args(argv)

    mod, sync, info = device_module(args.device)
    info.update(python=platform.python_version(), numpy=onp.__version__, cpu_count=os.cpu_count(),
                blas_threads={k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                               "MKL_NUM_THREADS")},
                batch=args.batch, rounds=args.rounds, warmup=args.warmup, dtype="float32")
    rows = []
    for d in args.d:
        cfg = mp.Config(d=d, h=4, N=4, d_ff=2 * d)
        for method in args.methods:
            backend.use_backend("numpy")
            cpu_step, cpu_state = make_step(cfg, method, args.batch)
            backend.use_backend(mod)
            gpu_step, gpu_state = make_step(cfg, method, args.batch)
            for _ in range(args.warmup):
                timed(cpu_step, lambda: None)
                timed(gpu_step, sync)
            t_cpu, t_gpu = [], []
            for _ in range(args.rounds):  # interleaved: both see the same machine state
                t_cpu.append(timed(cpu_step, lambda: None))
                t_gpu.append(timed(gpu_step, sync))
            c, g = statistics.median(t_cpu), statistics.median(t_gpu)
            loss_cpu, loss_gpu = float(cpu_state["loss"]), float(gpu_state["loss"])
            rows.append({"d": d, "method": method, "n_trainable": mp.count(cpu_state["theta"]),
                "cpu_ms": 1e3 * c, "gpu_ms": 1e3 * g, "ratio": c / g,
                "cpu_ms_all": [1e3 * t for t in t_cpu], "gpu_ms_all": [1e3 * t for t in t_gpu],
                "loss_cpu": loss_cpu, "loss_gpu": loss_gpu})
            print(f"d={d:4d} {method:5s}: CPU {1e3 * c:8.2f} ms  GPU {1e3 * g:7.2f} ms  ratio {c / g:6.1f}x  "
                  f"(loss after {args.warmup + args.rounds} steps: CPU {loss_cpu:.5f}, GPU {loss_gpu:.5f})", flush=True)
    backend.use_backend("numpy")

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as fh:
        json.dump({"info": info, "rows": rows}, fh, indent=1)
    lines = [f"GPU vs CPU, one training step (value_and_grad + adam_step), float32, B = {args.batch}; "
             f"medians of {args.rounds} interleaved steps after {args.warmup} warm-up steps.",
             f"Device: {info['device']}; CPU: {info['cpu_count']} cores.", "",
             "| d | method | trainable | CPU (ms) | GPU (ms) | CPU/GPU | loss CPU / GPU |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['d']} | {r['method']} | {r['n_trainable']:,} | {r['cpu_ms']:.2f} | {r['gpu_ms']:.2f} | "
                     f"{r['ratio']:.1f}× | {r['loss_cpu']:.5f} / {r['loss_gpu']:.5f} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as fh:
        fh.write(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()

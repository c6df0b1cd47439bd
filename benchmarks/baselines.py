"""Baselines on the pretrained backbone: linear probe vs full fine-tuning on every
downstream task (and full training from a random init, to show what pretraining buys),
plus the training-step time per batch. Prints a markdown table.

    python benchmarks/baselines.py [--epochs 10]

Accuracies are deterministic (fixed seeds); times are medians over the run's steps
on this machine, one BLAS thread if OPENBLAS_NUM_THREADS=1 is set (say so when quoting).
"""
from __future__ import annotations

import argparse
import time

import minipeft as mp
from minipeft.pretrained import DEFAULT_CONFIG, load_backbone


def timed_fit(params, task, cfg, method, epochs, lr):
    """fit with a per-step timer (wall clock between progress updates)."""
    t0 = time.perf_counter()
    p, hist = mp.fit(params, task.train, cfg, [method], epochs=epochs, lr=lr, progress=False)
    per_step = (time.perf_counter() - t0) / len(hist["loss"])
    return p, per_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args(argv)
    cfg = DEFAULT_CONFIG
    backbone, info = load_backbone(cfg)
    print(f"pretrained backbone: mnist val acc {info['val_acc']:.3f}, test acc {info['test_acc']:.3f}, "
          f"built in {info['seconds']} s; {cfg.n_params:,} numbers\n")
    print(f"| task | method | trainable | test acc | step (ms/batch of 64) |")
    print("|---|---|---|---|---|")
    for name in mp.DOWNSTREAM:
        task = mp.load_task(name)
        start = mp.new_head(backbone, task.n_classes, seed=0)
        scratch = mp.new_head(mp.init_params(cfg, seed=0), task.n_classes, seed=0)
        runs = ((start, mp.LinearProbe(), 1e-2, "linear probe"), (start, mp.FullFineTune(), 1e-3, "full"),
                (scratch, mp.FullFineTune(), 1e-3, "from scratch (no pretraining)"))
        for init, method, lr, label in runs:
            p, step = timed_fit(init, task, cfg, method, args.epochs, lr)
            acc = mp.evaluate(p, task.test, cfg)["acc"]
            n = mp.count_trainable(init, [method])
            print(f"| {name} | {label} (lr {lr:g}, {args.epochs} ep) | {n:,} | {acc:.3f} | {1000 * step:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()

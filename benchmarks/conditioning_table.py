"""Conditioning methods beside the two baselines, on the pretrained backbone.

Same budget for every row: ``--epochs`` epochs of Adam (batch 64, constant lr, seed 0)
on each downstream task, a fresh head (trainable in every row), then test accuracy.
Learning rates: every method its ``suggested_lr`` (linear probe 1e-2, full fine-tuning
1e-3). Prints a markdown table: trainable numbers (head included), their
share of the backbone, and test accuracy per task.

    python benchmarks/conditioning_table.py                    # 10 epochs, digits + mnist-invert
    python benchmarks/conditioning_table.py --epochs 2 --tasks digits

One BLAS thread (set before NumPy loads): on a small shared CPU two threads can stall.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402

import minipeft as mp  # noqa: E402
from common import attach_new_head, parser  # noqa: E402
from minipeft.methods.prefix import PrefixTuning  # noqa: E402
from minipeft.methods.prompt import PromptTuning  # noqa: E402
from minipeft.methods.vpt import VPTDeep, VPTShallow  # noqa: E402
from minipeft.pretrained import DEFAULT_CONFIG, load_backbone  # noqa: E402


def rows(p: int):
    """(label, method) for every row of the table."""
    return [
        ("linear probe", mp.LinearProbe()),
        ("full fine-tuning", mp.FullFineTune()),
        (f"prompt tuning (p={p})", PromptTuning(p=p)),
        (f"VPT-Shallow (p={p})", VPTShallow(p=p)),
        (f"VPT-Deep (p={p})", VPTDeep(p=p)),
        (f"prefix (p={p})", PrefixTuning(p=p)),
        (f"prefix, MLP reparam. (p={p})", PrefixTuning(p=p, reparam=True)),
    ]


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--p", type=int, default=8, help="prompt / prefix length")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cfg = DEFAULT_CONFIG
    backbone, _ = load_backbone(cfg)
    tasks = {name: mp.load_task(name) for name in args.tasks}
    table = []
    for label, m in rows(args.p):
        lr = m.suggested_lr
        accs, n_train, secs = [], None, 0.0
        for name, task in tasks.items():
            params = attach_new_head(backbone, task, cfg, m, args.seed)
            n_train = mp.count_trainable(params, [m])
            t0 = time.perf_counter()
            params, _ = mp.fit(params, task.train, cfg, [m], epochs=args.epochs, lr=lr, seed=args.seed,
                               progress=False)
            secs += time.perf_counter() - t0
            accs.append(mp.evaluate(params, task.test, cfg, [m])["acc"])
        table.append((label, n_train, lr, accs, secs))
        print(f"  done: {label} {accs} ({secs:.0f} s)", flush=True)

    print(f"\n{args.epochs} epochs, batch 64, Adam, seed {args.seed}; backbone {cfg.n_params:,} numbers; "
          f"trainable numbers include the head ({cfg.d}·C + C).\n")
    print("| method | trainable | % of backbone | lr | " + " | ".join(f"test acc {t}" for t in tasks) + " | train s |")
    print("|---|---:|---:|---:|" + "---:|" * len(tasks) + "---:|")
    for label, n, lr, accs, secs in table:
        cells = " | ".join(f"{a:.3f}" for a in accs)
        print(f"| {label} | {n:,} | {100 * n / cfg.n_params:.2f}% | {lr:g} | {cells} | {secs:.0f} |")


if __name__ == "__main__":
    main()

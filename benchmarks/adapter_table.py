"""Adapters on the pretrained backbone: AdaptFormer's scale s and the serial placements.

    OPENBLAS_NUM_THREADS=1 python benchmarks/adapter_table.py [--epochs 10] [--lr 0.01 ...] [--tasks digits ...]

For each task and learning rate, fine-tunes from the same pretrained backbone and the
same new head (seed 0, head trainable) with: a linear probe (the reference), AdaptFormer
(equations.md "Adapters: AdaptFormer") at s ∈ {0, 0.1, 1, 4}, and serial adapters
(equations.md "Adapters: serial") in the Houlsby and Pfeiffer placements, d̂ = 8.
Prints a markdown table: trainable numbers the method adds (the head's C·d + C is
separate), their share of the backbone, test and validation accuracy, the mean training
loss of the last epoch, and the largest single-step loss after the first epoch (a crude
instability signal). Accuracies are deterministic (fixed seeds) on one machine.
The notes' claim checked here: s = 0 is the original model (with a trainable head it is
exactly the linear probe), s ≈ 0.1 is best, large s (≥ 1) trains unstably or worse.
"""
from __future__ import annotations

import minipeft as mp
from common import begin_table, fine_tune, parser, selected, size_cells
from minipeft.methods.adapter import AdaptFormer, SerialAdapter

METHODS = [
    ("linear probe", mp.LinearProbe()),
    ("AdaptFormer s=0", AdaptFormer(s=0.0)),
    ("AdaptFormer s=0.1", AdaptFormer(s=0.1)),
    ("AdaptFormer s=1", AdaptFormer(s=1.0)),
    ("AdaptFormer s=4", AdaptFormer(s=4.0)),
    ("serial, Houlsby", SerialAdapter(placement="houlsby")),
    ("serial, Pfeiffer", SerialAdapter(placement="pfeiffer")),
]


def run(backbone, task, cfg, method, epochs, lr):
    """Fine-tune ``method`` (head trainable); returns (test acc, val acc, last-epoch loss, max loss after epoch 1)."""
    p, hist = fine_tune(backbone, task, cfg, method, epochs, lr)
    per_epoch = len(hist["loss"]) // epochs
    last = sum(hist["loss"][-per_epoch:]) / per_epoch
    spike = max(hist["loss"][per_epoch:]) if epochs > 1 else float("nan")
    return mp.evaluate(p, task.test, cfg, [method])["acc"], mp.evaluate(p, task.val, cfg, [method])["acc"], last, spike


def main(argv=None):
    args = parser(__doc__, "Adam learning rates to run (default 0.01)", [1e-2]).parse_args(argv)
    cfg, backbone = begin_table(f"d̂ = 8, {args.epochs} epochs, batch 64, Adam, head trainable",
                                 ["test acc", "val acc", "last-epoch loss", "max loss after ep. 1"])
    for name in args.tasks:
        task = mp.load_task(name)
        for lr in args.lr:
            for label, method in selected(METHODS, args.only):
                test, val, last, spike = run(backbone, task, cfg, method, args.epochs, lr)
                print(f"| {name} | {label} | {lr:g} | {size_cells(method, cfg, task.n_classes)} | {test:.3f} | "
                      f"{val:.3f} | {last:.3f} | {spike:.3f} |", flush=True)


if __name__ == "__main__":
    main()

"""Reparameterisation methods on the pretrained backbone: size, accuracy, exact merges.

    OPENBLAS_NUM_THREADS=1 python benchmarks/reparam_table.py [--epochs 10] [--lr 0.01 ...] [--tasks digits ...]

For each task and method (LoRA, BitFit, (IA)³ in both variants, SSF; a linear probe as
the reference), fine-tunes from the same pretrained backbone and the same new head
(seed 0, head trainable, Adam, batch 64) at the method's ``suggested_lr`` (or each of
``--lr``), then merges θ into the weights (equations.md "LoRA", "BitFit", "(IA)³", "SSF")
and compares merged with unmerged logits on the whole test split, in float32 (as
trained) and in float64 (the trained params cast with ``backend.cast``).
Prints a markdown table: the numbers the method adds (the head's C·d + C is separate),
their share of the backbone, test and validation accuracy, and max |Δ logits|.
Accuracies are deterministic (fixed seeds) on one machine and BLAS build.
"""
from __future__ import annotations

import numpy as onp

import minipeft as mp
from common import begin_table, fine_tune, parser, selected, size_cells
from minipeft.methods.bitfit import BitFit
from minipeft.methods.ia3 import IA3
from minipeft.methods.lora import LoRA
from minipeft.methods.ssf import SSF
from minipeft.backend import cast

METHODS = [
    ("linear probe", mp.LinearProbe()),
    ("LoRA r=4, q v", LoRA()),
    ("BitFit, all biases", BitFit()),
    ("BitFit, b_q b_1", BitFit(biases=("b_q", "b_1"))),
    ("(IA)³ notes: l_q l_k l_v", IA3()),
    ("(IA)³ paper: l_k l_v l_ff", IA3(variant="paper")),
    ("SSF, all placements", SSF()),
]


def max_delta(params, method, task, cfg, dtype):
    """max |Δ| between merged and unmerged logits on the test split, params cast to ``dtype``."""
    p = cast(params, dtype)
    X = task.test[0].astype(dtype)
    return float(onp.abs(mp.predict(method.merge(p), X, cfg) - mp.predict(p, X, cfg, [method])).max())


def main(argv=None):
    args = parser(__doc__, "learning rates (default: each method's suggested_lr)").parse_args(argv)
    cfg, backbone = begin_table(f"{args.epochs} epochs, batch 64, Adam, head trainable",
                                 ["test acc", "val acc", "max \\|Δ\\| merged, float32", "float64"])
    for name in args.tasks:
        task = mp.load_task(name)
        for label, method in selected(METHODS, args.only):
            for lr in args.lr or [method.suggested_lr]:
                p, _ = fine_tune(backbone, task, cfg, method, args.epochs, lr)
                test, val = (mp.evaluate(p, s, cfg, [method])["acc"] for s in (task.test, task.val))
                if method.mergeable:
                    d32, d64 = (f"{max_delta(p, method, task, cfg, dt):.1e}" for dt in ("float32", "float64"))
                else:
                    d32 = d64 = "—"
                print(f"| {name} | {label} | {lr:g} | {size_cells(method, cfg, task.n_classes)} | {test:.3f} | "
                      f"{val:.3f} | {d32} | {d64} |", flush=True)


if __name__ == "__main__":
    main()

"""The tour: every registered method on one downstream task, same budget, one table.

For each method of ``methods.REGISTRY`` (linear probe, full fine-tuning and the ten PEFT
methods of the notes, each with its default options) the tour starts from the same
pretrained backbone φ and the same fresh head, trains θ (the method's numbers plus the
head) with Adam for the same number of epochs (batch 64, constant lr, seed 0), and
reports test accuracy:

    L(θ) = CE(Head(LN_f(x_N)), y),   θ = the method's numbers ∪ head,   φ frozen

Learning rates: every method its ``suggested_lr`` (the linear probe 10⁻², full
fine-tuning 10⁻³), the rate ``minipeft train`` uses too. "Trainable" counts what the optimiser updates, the head included
(C·d + C); for a PEFT method it equals ``method.n_params(cfg)`` + the head. "% of
backbone" divides by the backbone's own count (136,906 for the pretrained ViT).
"Mergeable" says whether θ folds into the weights (equations.md, "Reparameterisation:
the general form": W = W₀ + ΔW), leaving the original architecture and inference cost.

``quick`` (for tests and a first look): 1 epoch on the first ``QUICK_TRAIN`` training
examples (the test split stays whole), so the accuracies mean little.
"""
from __future__ import annotations

import contextlib
import sys
import time

from . import data, pretrained
from .methods import REGISTRY, attach, count_trainable, method_class
from .train import evaluate, fit
from .transformer import new_head
from .validate import int_at_least

#: default budget: epochs of the training split (chapters/README.md says how long it takes)
DEFAULT_EPOCHS = 10
#: --quick: training examples used (the first ones of the fixed training split)
QUICK_TRAIN = 256
BASELINES = ("linear-probe", "full")


def limit_blas_threads(n):
    """A context limiting BLAS to ``n`` threads (threadpoolctl, a scikit-learn dependency);
    a no-op when ``n`` is None or threadpoolctl is missing. On a small shared CPU, two BLAS
    threads on these small matrices stall each other (design.md). The limit applies when
    this is called; leaving the ``with`` block restores the previous one."""
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def run_tour(task: str = "digits", epochs: int | None = None, *, quick: bool = False, methods=None,
             n_train: int | None = None, seed: int = 0, batch_size: int = 64, progress=None,
             blas_threads: int | None = 1, log=None) -> list:
    """Fine-tune the pretrained backbone with every method on ``task``; one row per method.

    task: a downstream task (``data.DOWNSTREAM``). epochs: passes over the training data
    (default ``DEFAULT_EPOCHS``; 1 with ``quick``). quick: 1 epoch on the first
    ``QUICK_TRAIN`` examples. methods: registry names to run (default: all, in registry
    order). n_train: use only the first n_train training examples. progress: fit's bar
    (None: on a terminal, unless MINIPEFT_PROGRESS=0). log: a callable receiving one
    line per finished method (default: print to stderr).

    Returns a list of dicts with keys method, options, lr, epochs, n_train, trainable (the
    count the optimiser updates, head included), head (C·d + C), pct (100·trainable /
    backbone numbers), test_acc, val_acc, mergeable (True/False; None for the baselines,
    which add nothing to merge) and train_s (seconds in ``fit``).
    """
    if task not in data.DOWNSTREAM:
        raise ValueError(f"task must be one of {data.DOWNSTREAM}, got {task!r}")
    names = list(REGISTRY) if methods is None else list(methods)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown or not names:
        raise ValueError(f"methods must be a non-empty list of names among {list(REGISTRY)}, got {methods!r}")
    if epochs is None:
        epochs = 1 if quick else DEFAULT_EPOCHS
    int_at_least("epochs", epochs, 1)
    if quick and n_train is None:
        n_train = QUICK_TRAIN
    int_at_least("n_train", n_train, 1, optional=True)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    cfg = pretrained.DEFAULT_CONFIG  # read at call time (tests swap in a tiny backbone)
    backbone, _ = pretrained.load_backbone(cfg)
    t = data.load_task(task)
    X, y = t.train
    train = (X[:n_train], y[:n_train]) if n_train is not None else (X, y)
    head = t.n_classes * cfg.d + t.n_classes
    rows = []
    with limit_blas_threads(blas_threads):
        for i, name in enumerate(names, 1):
            m = method_class(name)()
            lr = float(m.suggested_lr)
            params = attach(new_head(backbone, t.n_classes, seed), [m], cfg, seed)
            n = count_trainable(params, [m], train_head=True)
            t0 = time.perf_counter()
            params, _ = fit(params, train, cfg, [m], epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                            progress=progress, desc=f"[{i}/{len(names)}] {name}")
            secs = time.perf_counter() - t0
            row = {"method": name, "options": m.options(), "lr": lr, "epochs": epochs, "n_train": len(train[1]),
                   "trainable": n, "head": head, "pct": 100.0 * n / cfg.n_params,
                   "test_acc": evaluate(params, t.test, cfg, [m])["acc"],
                   "val_acc": evaluate(params, t.val, cfg, [m])["acc"],
                   "mergeable": None if name in BASELINES else bool(m.mergeable), "train_s": secs}
            rows.append(row)
            log(f"[{i}/{len(names)}] {name}: test acc {row['test_acc']:.3f} ({secs:.1f} s)")
    return rows


def format_table(rows, task: str | None = None, backbone_params: int | None = None) -> str:
    """The tour's rows as a markdown table (one line per method), with a header line
    stating the budget, and a footnote on the counts."""
    if not rows:
        raise ValueError("rows: nothing to format (empty list)")
    n_bb = backbone_params if backbone_params is not None else pretrained.DEFAULT_CONFIG.n_params
    r0 = rows[0]
    lines = [f"Tour{' on ' + task if task else ''}: {r0['epochs']} epoch(s) on {r0['n_train']:,} training "
             f"examples, Adam, batch 64, seed 0, head trainable; backbone {n_bb:,} numbers.", "",
             "| method | trainable | % of backbone | lr | test acc | mergeable? | train s |",
             "|---|---:|---:|---:|---:|:---:|---:|"]
    for r in rows:
        merge = "—" if r["mergeable"] is None else ("yes" if r["mergeable"] else "no")
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['pct']:.2f}% | {r['lr']:g} | {r['test_acc']:.3f} "
                     f"| {merge} | {r['train_s']:.1f} |")
    lines += ["", f"trainable = the method's numbers + the head ({r0['head']:,} = C·d + C); "
                  "the linear probe trains the head alone, full fine-tuning everything. "
                  "mergeable: θ folds into the weights (no extra inference cost); — : a baseline, nothing to merge."]
    return "\n".join(lines)

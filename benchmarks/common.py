"""What the table scripts (adapter_table.py, reparam_table.py, conditioning_table.py) share.

Imported as ``common`` (run as ``python benchmarks/<script>.py``, the script's folder is on
sys.path). The recipe: the pretrained backbone φ, a fresh head (seed), θ attached with the
same seed, Adam (batch 64, constant lr, data order from the seed), the head trainable:

    L(θ) = CE(Head(LN_f(x_N)), y),   θ = the method's numbers ∪ head,   φ frozen
"""
from __future__ import annotations

import argparse

import minipeft as mp
from minipeft import pretrained

#: the tables' default tasks
TASKS = ["digits", "mnist-invert"]


def parser(doc: str, lr_help: str | None = None, lr_default=None) -> argparse.ArgumentParser:
    """An argument parser described by ``doc``'s first line, with --epochs and --tasks; given
    ``lr_help``, also --lr (one or more learning rates, default ``lr_default``) and --only
    (a row-label filter, see ``selected``)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    if lr_help:
        ap.add_argument("--lr", type=float, nargs="+", default=lr_default, help=lr_help)
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=mp.DOWNSTREAM)
    if lr_help:
        ap.add_argument("--only", nargs="+", default=None, help="run only the rows whose label contains one of these")
    return ap


def selected(rows, only):
    """The (label, method) rows whose label contains one of ``only`` (all of them when None)."""
    return [(label, m) for label, m in rows if not only or any(o in label for o in only)]


def begin_table(budget: str, columns):
    """Load the pretrained backbone, print its line (``budget`` appended) and a markdown table
    head: task, method, lr, the two ``size_cells`` columns, then ``columns`` (a list of
    names). Returns (cfg, backbone)."""
    cfg = pretrained.DEFAULT_CONFIG
    backbone, info = pretrained.load_backbone(cfg)
    print(f"pretrained backbone: mnist test acc {info['test_acc']:.3f}; {cfg.n_params:,} numbers; {budget}\n")
    print("| task | method | lr | trainable (+ head) | % of backbone | " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|" + "---|" * len(columns))
    return cfg, backbone


def size_cells(method, cfg, n_classes: int) -> str:
    """``n (+ head) | share %``: the numbers ``method`` adds (0 for a linear probe) with the
    head's C·d + C apart, and n as a percentage of the backbone's numbers."""
    n = 0 if isinstance(method, mp.LinearProbe) else method.n_params(cfg)
    return f"{n:,} (+ {n_classes * (cfg.d + 1)}) | {100 * n / cfg.n_params:.2f} %"


def attach_new_head(backbone, task, cfg, method, seed: int = 0):
    """The backbone with a fresh head for ``task`` and ``method``'s θ attached (both from ``seed``)."""
    return mp.attach(mp.new_head(backbone, task.n_classes, seed), [method], cfg, seed)


def fine_tune(backbone, task, cfg, method, epochs: int, lr: float, seed: int = 0):
    """``attach_new_head`` then Adam on ``task.train``; returns (params', history)."""
    p = attach_new_head(backbone, task, cfg, method, seed)
    return mp.fit(p, task.train, cfg, [method], epochs=epochs, lr=lr, seed=seed, progress=False)

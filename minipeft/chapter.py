"""What every chapter (chapters/NN_*.py) does first, in one call.

    from minipeft.chapter import setup
    ch = setup(globals().get("__file__"))   # figures: $CHAPTER_FIG_DIR, else <chapter folder>/figures
    ch.cfg, ch.backbone, ch.info, ch.task   # Config, pretrained params, load_backbone's info, "digits"
    params, hist, acc = ch.train(method, lr, epochs)
    ch.save(fig, "05_lora.png")

``setup`` applies the process policy of ``minipeft.runtime`` (the same as the command
line's): BLAS limited to $MINIPEFT_THREADS threads, 1 by default (threadpoolctl) — on a
small shared CPU two BLAS threads on these small matrices stall each other, and the thread
count is part of what decides the bits — and glibc's allocator keeping freed memory. It selects matplotlib's Agg backend (figures go to PNG
files) unless MPLBACKEND is set (a Jupyter kernel sets it, so notebooks keep their inline
plots), makes the figure folder, and loads the pretrained backbone (built on first use,
cached) and the downstream task.

Training in ``Chapter.train`` is the chapters' common recipe: the pretrained backbone φ,
a fresh head (seed 0), θ attached with seed 0, Adam (batch 64, constant lr, data order
from seed 0), the head trainable:

    L(θ) = CE(Head(LN_f(x_N)), y),   θ = the method's numbers ∪ head,   φ frozen
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import pretrained, runtime
from .data import Task, load_task
from .methods import attach
from .train import evaluate, fit
from .transformer import Config, new_head


@dataclass(frozen=True)
class Chapter:
    """A chapter's shared state: the config, the pretrained backbone and where figures go."""

    cfg: Config
    #: the pretrained parameters (with their own mnist head) and load_backbone's info
    #: (val_acc, test_acc, seconds, spec)
    backbone: dict
    info: dict
    #: the downstream task of the chapter (None when it uses several)
    task: Task | None
    fig_dir: Path
    #: the BLAS thread limit (``runtime.limit_blas``), kept so that it holds while the chapter runs
    blas_limit: object = field(repr=False, compare=False)
    #: the figure files ``save`` wrote, in order
    saved: list = field(default_factory=list, repr=False, compare=False)

    def with_new_head(self, seed: int = 0) -> dict:
        """The backbone with a fresh head for ``task``: W ~ N(0, 0.01²) (C, d), b = 0 (C,)."""
        if self.task is None:
            raise ValueError("with_new_head needs a task: call setup(file, task=<name>)")
        return new_head(self.backbone, self.task.n_classes, seed=seed)

    def train(self, method, lr: float, epochs: int, seed: int = 0):
        """Fine-tune ``method`` on ``task`` (module docstring's recipe, head trainable).

        Returns (params', history, test accuracy): params' holds the backbone, the trained
        head and θ; history["loss"] the loss of every step.
        """
        params = attach(self.with_new_head(seed), [method], self.cfg, seed=seed)
        params, hist = fit(params, self.task.train, self.cfg, [method], epochs=epochs, lr=lr, seed=seed,
                           progress=False)
        return params, hist, evaluate(params, self.task.test, self.cfg, [method])["acc"]

    def save(self, fig, name: str) -> Path:
        """Lay out ``fig``, write it to ``fig_dir / name`` (PNG, 100 dpi) and close it."""
        import matplotlib.pyplot as plt

        fig.tight_layout()
        path = self.fig_dir / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        self.saved.append(name)
        return path

    def figures(self) -> list:
        """The names of the figures saved so far, sorted."""
        return sorted(self.saved)


def setup(file: str | None = None, task: str | None = "digits") -> Chapter:
    """The process policy (one BLAS thread by default), the Agg backend, the figure folder, the pretrained backbone and ``task``.

    file: the chapter's path (``__file__``; None in a notebook, which then uses the current
    folder); figures go to $CHAPTER_FIG_DIR if set, else ``<its folder>/figures``. task: a
    name for ``load_task``, or None for a chapter that loads its own tasks.
    """
    limit = runtime.limit_blas()  # the process policy (runtime.py): 1 thread unless $MINIPEFT_THREADS
    runtime.tune_allocator()
    if not os.environ.get("MPLBACKEND"):
        import matplotlib

        matplotlib.use("Agg")  # switches pyplot too if a chapter imported it already
    here = Path(file).resolve().parent if file else Path.cwd()
    fig_dir = Path(os.environ.get("CHAPTER_FIG_DIR") or here / "figures")
    fig_dir.mkdir(parents=True, exist_ok=True)
    cfg = pretrained.DEFAULT_CONFIG
    backbone, info = pretrained.load_backbone(cfg)
    return Chapter(cfg=cfg, backbone=backbone, info=info, task=None if task is None else load_task(task),
                   fig_dir=fig_dir, blas_limit=limit)

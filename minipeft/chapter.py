"""What every chapter (chapters/NN_*.py) does first, in one call, and how it reports.

    from minipeft.chapter import setup
    ch = setup(globals().get("__file__"), name="05_lora")   # figures: $CHAPTER_FIG_DIR, else <folder>/figures
    ch.cfg, ch.backbone, ch.info, ch.task   # Config, pretrained params, load_backbone's info, "digits"
    accs, trained = ch.over_seeds("LoRA r=4", method, lr, epochs)   # one run per seed in ch.seeds
    ch.compare("LoRA beats the linear probe", "LoRA r=4", "linear probe")   # prints a verdict line
    ch.save(fig, "05_lora.png")             # PNG; shown inline too when run in a notebook
    ch.finish()                             # writes the results file, lists the figures

``setup`` applies the process policy of ``minipeft.runtime`` (the same as the command
line's): BLAS limited to $MINIPEFT_THREADS threads, 1 by default (threadpoolctl) — on a
small shared CPU two BLAS threads on these small matrices stall each other, and the thread
count is part of what decides the bits — and glibc's allocator keeping freed memory. It selects matplotlib's Agg backend (figures go to PNG
files) unless MPLBACKEND is set (a Jupyter kernel sets it, so notebooks keep their inline
plots), makes the figure folder, and loads the pretrained backbone (built on first use,
cached) and the downstream task.

Training in ``Chapter.train`` is the chapters' common recipe: the pretrained backbone φ,
a fresh head, θ attached and the data order all drawn from one seed, Adam (batch 64,
constant lr), the head trainable:

    L(θ) = CE(Head(LN_f(x_N)), y),   θ = the method's numbers ∪ head,   φ frozen

Seeds: ``ch.seeds`` (``SEEDS``, five) for every arm of a comparison, so seed s of arm A
and seed s of arm B differ only in the method (paired; minipeft/verdict.py decides).
Quick mode ($CHAPTER_QUICK=1, for tests): ``QUICK_SEEDS``, 1 epoch, the first
``QUICK_TRAIN`` training images; its results file is ``NN_name.quick.json``, which
chapters/make_tables.py ignores.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import pretrained, runtime, verdict
from .data import Task, load_task
from .methods import LinearProbe, attach, count_trainable
from .train import evaluate, fit
from .transformer import Config, new_head

SEEDS = (0, 1, 2, 3, 4)
QUICK_SEEDS = (0, 1)
QUICK_TRAIN = 128
def thread_policy() -> str:
    """The chapter's thread policy in words (minipeft.runtime: $MINIPEFT_THREADS, default 1)."""
    return f"BLAS limited to {runtime.threads()} thread(s) for the whole chapter (minipeft.runtime, set by setup)"


def load_1min():
    """The machine's 1-minute load average (``os.getloadavg``), None where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):  # pragma: no cover - not on every OS
        return None


def cpu_now() -> float:
    """CPU seconds (user + system) of this process and of its finished, waited-for children
    (``os.times``): a chapter that forks workers counts their time once they have exited."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def quick_mode() -> bool:
    """True when $CHAPTER_QUICK is set to anything but '', '0', 'false', 'no'."""
    return os.environ.get("CHAPTER_QUICK", "") not in ("", "0", "false", "no")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (an IPython shell with a kernel attached)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with the notebooks extra
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


@dataclass(frozen=True)
class Chapter:
    """A chapter's shared state: the config, the pretrained backbone, where figures and
    results go, and what it has measured so far (arms, claims, checks)."""

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
    name: str = "chapter"
    results_dir: Path | None = None
    quick: bool = False
    seeds: tuple = SEEDS
    #: what the chapter measured: per-arm values over seeds, verdicts, exact checks, notes on the budget
    arms: dict = field(default_factory=dict, repr=False, compare=False)
    claims: list = field(default_factory=list, repr=False, compare=False)
    checks: list = field(default_factory=list, repr=False, compare=False)
    budget: dict = field(default_factory=dict, repr=False, compare=False)
    #: deterministic measurements (no seeds needed): label -> {quantity: value}
    measured: dict = field(default_factory=dict, repr=False, compare=False)
    #: every over_seeds arm's training losses: label -> one history["loss"] list per seed
    histories: dict = field(default_factory=dict, repr=False, compare=False)
    started: float = field(default_factory=time.perf_counter, repr=False, compare=False)
    #: CPU time (user + system) of this process and its finished children (``cpu_now``) when the chapter started
    cpu_started: float = field(default_factory=cpu_now, repr=False, compare=False)
    #: the code the chapter runs: git commit and uncommitted tracked files at setup (``verdict.source_state``)
    source: dict = field(default_factory=dict, repr=False, compare=False)
    #: the machine's 1-minute load average, sampled at the start, after every arm and at the end
    loads: list = field(default_factory=lambda: [load_1min()], repr=False, compare=False)

    def with_new_head(self, seed: int = 0, task: Task | None = None) -> dict:
        """The backbone with a fresh head for ``task``: W ~ N(0, 0.01²) (C, d), b = 0 (C,)."""
        task = task or self.task
        if task is None:
            raise ValueError("with_new_head needs a task: call setup(file, task=<name>)")
        return new_head(self.backbone, task.n_classes, seed=seed)

    def epochs(self, full: int) -> int:
        """``full`` epochs, or 1 in quick mode."""
        return 1 if self.quick else full

    def train_split(self, task: Task | None = None):
        """The training split (X, y) the recipe uses: all of it, or its first QUICK_TRAIN in quick mode."""
        X, y = (task or self.task).train
        return (X[:QUICK_TRAIN], y[:QUICK_TRAIN]) if self.quick else (X, y)

    def train(self, method, lr: float, epochs: int, seed: int = 0, task: Task | None = None):
        """Fine-tune ``method`` on ``task`` (module docstring's recipe, head trainable, one seed).

        Returns (params', history, test accuracy): params' holds the backbone, the trained
        head and θ; history["loss"] the loss of every step.
        """
        task = task or self.task
        params = attach(self.with_new_head(seed, task), [method], self.cfg, seed=seed)
        params, hist = fit(params, self.train_split(task), self.cfg, [method], epochs=epochs, lr=lr, seed=seed,
                           progress=False)
        return params, hist, evaluate(params, task.test, self.cfg, [method])["acc"]

    def refit_head(self, params, task: Task, seed: int, n_train: int, epochs: int) -> float:
        """Test accuracy on ``task`` of ``params``' backbone with a refitted head: a fresh head
        (W ~ N(0, 0.01²), b = 0, drawn from ``seed``) trained alone (the linear probe, Adam lr
        10⁻², batch 64, the seed's data order) on the first ``n_train`` training images for
        ``epochs`` epochs. What a forgetting measurement uses to ask whether the features
        still hold the task, apart from the old head's alignment."""
        p = new_head(params, task.n_classes, seed=seed)
        data = (task.train[0][:n_train], task.train[1][:n_train])
        p, _ = fit(p, data, self.cfg, [LinearProbe()], epochs=epochs, lr=1e-2, seed=seed, progress=False)
        return evaluate(p, task.test, self.cfg)["acc"]

    def over_seeds(self, label: str, method, lr: float, epochs: int, task: Task | None = None, **info):
        """Train ``method`` once per seed of ``ch.seeds``; record the arm ``label``.

        Returns (test accuracies (one per seed), trained params (one per seed)). The arm's
        record keeps the accuracies, their mean and t interval, the trainable count, lr,
        epochs and ``info``.
        """
        accs, trained, losses = [], [], []
        for s in self.seeds:
            params, hist, acc = self.train(method, lr, epochs, seed=s, task=task)
            accs.append(acc)
            trained.append(params)
            losses.append(hist["loss"])
        self.histories[label] = losses
        self.loads.append(load_1min())
        n = count_trainable(trained[0], [method], train_head=True)
        self.record(label, accs, trainable=n, lr=lr, epochs=epochs, **info)
        return accs, trained

    def record(self, label: str, values, metric: str = "test accuracy", **info) -> None:
        """Keep per-seed ``values`` (one per seed of ``ch.seeds``) as the arm ``label``
        (``ch.arms[label]``). Like the other recorders, returns None (a notebook echoes no repr)."""
        values = [float(v) for v in values]
        if len(values) != len(self.seeds):
            raise ValueError(f"values: one per seed ({len(self.seeds)}), got {len(values)}")
        rec = {"metric": metric, "seeds": list(self.seeds), "values": values, **verdict.mean_ci(values), **info}
        self.arms[label] = rec

    def compare(self, claim: str, a: str, b: str, direction: str = ">", source: str = "") -> None:
        """Decide "arm a ``direction`` arm b" (minipeft/verdict.py), print its line, keep it
        (``ch.claims[-1]``)."""
        ra, rb = self.arms[a], self.arms[b]
        rec = verdict.compare(claim, a, ra["values"], b, rb["values"], direction, source, ra["metric"], self.seeds)
        self.claims.append(rec)
        print(verdict.format_verdict(rec))

    def measure(self, label: str, **values) -> None:
        """Keep deterministic measurements of ``label`` (counts, bytes): JSON numbers or text."""
        self.measured[label] = dict(values)

    def check(self, claim: str, holds: bool, detail: str = "") -> None:
        """An exact claim (no statistics): print its line, keep it (``ch.checks[-1]``)."""
        rec = verdict.check(claim, holds, detail)
        self.checks.append(rec)
        print(verdict.format_check(rec))

    def save(self, fig, name: str) -> Path:
        """Lay out ``fig``, write it to ``fig_dir / name`` (PNG, 100 dpi) and close it; in a
        notebook, show the saved PNG inline first."""
        import matplotlib.pyplot as plt

        if fig.get_layout_engine() is None:  # a figure made with layout="constrained" keeps its own
            fig.tight_layout()
        path = self.fig_dir / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        if in_notebook():
            from IPython.display import Image, display

            display(Image(filename=str(path)))
        self.saved.append(name)
        return path

    def figures(self) -> list:
        """The names of the figures saved so far, sorted."""
        return sorted(self.saved)

    def timing(self) -> dict:
        """What the chapter cost since setup: wall and CPU seconds (this process and its
        finished worker processes, user + system, ``cpu_now``; on an idle machine with one
        process of one BLAS thread cpu_s ≈ wall_s, on a loaded one wall_s grows and cpu_s
        does not) and the 1-minute load average sampled at the start, after every arm and
        now (min, mean, max, the number of samples)."""
        self.loads.append(load_1min())
        got = [v for v in self.loads if v is not None]
        load = ({"min": round(min(got), 2), "mean": round(sum(got) / len(got), 2), "max": round(max(got), 2),
                 "samples": len(got)} if got else None)
        return {"wall_s": round(time.perf_counter() - self.started, 1),
                "cpu_s": round(cpu_now() - self.cpu_started, 1), "load_1min": load}

    def results_path(self) -> Path:
        """Where ``finish`` writes: results_dir / NN_name.json (NN_name.quick.json in quick mode)."""
        return self.results_dir / f"{self.name}{'.quick' if self.quick else ''}.json"

    def finish(self) -> None:
        """Write the results file (minipeft/verdict.py's SCHEMA, at ``results_path()``) and
        print where it and the figures are."""
        rec = {"schema": verdict.SCHEMA, "chapter": self.name, "quick": self.quick,
               "budget": {"seeds": list(self.seeds), "n_train": len(self.train_split()[1]) if self.task else None,
                          **self.budget},
               "environment": verdict.environment(thread_policy()), "code": self.source,
               "backbone": {"id": verdict.backbone_id(self.backbone), "n_params": self.cfg.n_params,
                            "pretrain_test_acc": self.info.get("test_acc")},
               "wall_s": round(time.perf_counter() - self.started, 1),
               "timing": self.timing(),
               "arms": self.arms, "claims": self.claims, "checks": self.checks, "measurements": self.measured}
        path = self.results_path()
        verdict.write_results(path, rec)
        print(f"results: {path.name}; figures: {self.figures()}")


def show_maps(fig, axes, maps, titles, label: str, cmap: str = "viridis"):
    """Draw 2-D ``maps`` on ``axes`` on one shared colour scale [0, max], with one colorbar
    (``label``) for all of them; ticks off. maps: a list of (H, W) arrays."""
    import numpy as onp

    vmax = max(float(onp.max(m)) for m in maps)
    im = None
    for ax, m, t in zip(axes, maps, titles):
        im = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=vmax)
        ax.set_title(t, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), label=label, shrink=0.85)
    return im


def plot_arms(ax, arms: dict, labels, x=None, **kw):
    """Mean over seeds with its 95 % t interval as error bars, for the arms ``labels``
    (``Chapter.arms`` records) at positions ``x`` (default 0, 1, …); returns the container."""
    import numpy as onp

    x = onp.arange(len(labels)) if x is None else onp.asarray(x)
    mean = onp.array([arms[k]["mean"] for k in labels])
    lo = onp.array([arms[k]["ci"][0] for k in labels])
    hi = onp.array([arms[k]["ci"][1] for k in labels])
    return ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], capsize=4, **{"marker": "o", **kw})


def label_points(ax, points, fontsize: int = 9, gap: float = 4.0):
    """Write each label next to its point without covering another label, a marker or an
    error bar: for each (label, x, y, (lo, hi)) of ``points`` (data coordinates; lo..hi the
    point's error bar), the first of the candidate spots (right, left, above-right,
    below-right, above-left, below-left, then further out) inside the axes whose text box
    touches nothing drawn so far (nor the legend). Returns the Text objects. Draws the
    figure once to measure the text: lay the figure out first."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    taken = []  # (x0, y0, x1, y1) in pixels: error bars, markers, then placed labels
    for _, x, y, (lo, hi) in points:
        (px, plo), (_, phi) = to_px((x, lo)), to_px((x, hi))
        (_, py) = to_px((x, y))
        taken.append((px - 5, min(plo, phi) - 2, px + 5, max(plo, phi) + 2))
        taken.append((px - 6, py - 6, px + 6, py + 6))
    if ax.get_legend() is not None:
        e = ax.get_legend().get_window_extent(renderer)
        taken.append((e.x0, e.y0, e.x1, e.y1))
    inside = ax.get_window_extent(renderer)
    texts = []
    for label, x, y, _ in points:
        px, py = to_px((x, y))
        t = ax.text(x, y, label, fontsize=fontsize, va="center", ha="left")
        w, h = (lambda e: (e.width, e.height))(t.get_window_extent(renderer))
        spots = [(dx * k, dy * k) for k in (1, 2, 3, 4)
                 for dx, dy in ((gap + 6, 0), (-gap - 6 - w, 0), (gap, h), (gap, -h), (-gap - w, h), (-gap - w, -h))]
        for dx, dy in spots:
            box = (px + dx, py + dy - h / 2, px + dx + w, py + dy + h / 2)
            fits = inside.x0 <= box[0] and box[2] <= inside.x1 and inside.y0 <= box[1] and box[3] <= inside.y1
            if fits and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
                break
        else:  # nowhere free: the first spot
            dx, dy = spots[0]
            box = (px + dx, py + dy - h / 2, px + dx + w, py + dy + h / 2)
        back = ax.transData.inverted().transform
        t.set_position(back((px + dx, py + dy)))
        if abs(dy) > h / 2 or abs(dx) > 2 * (gap + 6) + w:  # moved away from the point: a thin leader line
            ax.annotate("", (x, y), xytext=back((px + dx + (0 if dx > 0 else w), py + dy)),
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})
        taken.append(box)
        texts.append(t)
    return texts


def acc_limits(arms: dict, labels, pad: float = 0.05):
    """y-limits for an accuracy axis showing every interval of ``labels``, within [0, 1]."""
    lo = min(arms[k]["ci"][0] for k in labels)
    hi = max(arms[k]["ci"][1] for k in labels)
    return max(0.0, lo - pad), min(1.0, hi + pad)


def setup(file: str | None = None, task: str | None = "digits", name: str | None = None,
          model: str = "vit", seeds=None) -> Chapter:
    """The process policy (one BLAS thread by default), the Agg backend, the figure folder, the pretrained backbone and ``task``.

    file: the chapter's path (``__file__``; None in a notebook, which then uses the current
    folder); figures go to $CHAPTER_FIG_DIR if set, else ``<its folder>/figures``, results
    to $CHAPTER_RESULTS_DIR if set, else ``<its folder>/results``. task: a name for
    ``load_task``, or None for a chapter that loads its own tasks. name: the chapter's
    name for its results file (default: the file's stem). model: "vit" (the toy pretrained
    ViT) or "minilm" (all-MiniLM-L6-v2, float32, ``models.minilm.load``; then task must be
    None: a text chapter loads its own text task). seeds: the full budget's seeds (default
    ``SEEDS``; at least 2, distinct ints); quick mode always uses ``QUICK_SEEDS``. The git commit
    of the code is read here, at the start (``Chapter.source``, the results file's "code").
    """
    if model not in ("vit", "minilm"):
        raise ValueError(f"model must be one of ('vit', 'minilm'), got {model!r}")
    if seeds is not None:
        seeds = tuple(seeds)
        if len(seeds) < 2 or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"seeds: at least 2 distinct ints (a paired interval needs 2), got {seeds!r}")
    if model == "minilm" and task is not None:
        raise ValueError(f"task: a minilm chapter loads its own text task; pass task=None, got {task!r}")
    # load every BLAS a chapter will use (NumPy's; scipy's, which scikit-learn and the verdicts
    # import) before limiting: threadpoolctl limits only the libraries already loaded
    import scipy.stats  # noqa: F401
    import sklearn.datasets  # noqa: F401

    limit = runtime.limit_blas()  # the process policy (runtime.py): 1 thread unless $MINIPEFT_THREADS
    runtime.tune_allocator()
    if not os.environ.get("MPLBACKEND"):
        import matplotlib

        matplotlib.use("Agg")  # switches pyplot too if a chapter imported it already
    here = Path(file).resolve().parent if file else Path.cwd()
    fig_dir = Path(os.environ.get("CHAPTER_FIG_DIR") or here / "figures")
    fig_dir.mkdir(parents=True, exist_ok=True)
    results_dir = Path(os.environ.get("CHAPTER_RESULTS_DIR") or here / "results")
    if model == "minilm":
        from .models import minilm

        backbone, cfg, _ = minilm.load(dtype="float32")
        info = {"model": "all-MiniLM-L6-v2", "package": minilm.REQUIREMENT}
    else:
        cfg = pretrained.DEFAULT_CONFIG
        backbone, info = pretrained.load_backbone(cfg)
    quick = quick_mode()
    return Chapter(cfg=cfg, backbone=backbone, info=info, task=None if task is None else load_task(task),
                   fig_dir=fig_dir, blas_limit=limit, name=name or (Path(file).stem if file else "chapter"),
                   results_dir=results_dir, quick=quick, seeds=QUICK_SEEDS if quick else (seeds or SEEDS),
                   source=verdict.source_state())

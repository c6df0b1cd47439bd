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
import warnings

import numpy as onp

from . import data, pretrained, runtime
from .methods import REGISTRY, attach, count_trainable, method_class
from .train import evaluate, fit, predict, trim_padding
from .transformer import new_head
from .validate import int_at_least, one_of

#: default budget: epochs of the training split (chapters/README.md says how long it takes)
DEFAULT_EPOCHS = 10
#: --quick: training examples used (the first ones of the fixed training split)
QUICK_TRAIN = 256
BASELINES = ("linear-probe", "full")


def run_tour(task: str = "digits", epochs: int | None = None, *, quick: bool = False, methods=None,
             n_train: int | None = None, seed: int = 0, batch_size: int = 64, progress=None,
             blas_threads: int | None = None, log=None) -> list:
    """Fine-tune the pretrained backbone with every method on ``task``; one row per method.

    task: a downstream task (``data.DOWNSTREAM``). epochs: passes over the training data
    (default ``DEFAULT_EPOCHS``; 1 with ``quick``). quick: 1 epoch on the first
    ``QUICK_TRAIN`` examples. methods: registry names to run (default: all, in registry
    order). n_train: use only the first n_train training examples. blas_threads: BLAS
    threads while training (default: the process policy, ``runtime.threads()``, 1 unless
    $MINIPEFT_THREADS says otherwise); the previous limit is restored on return. progress: fit's bar
    (None: on a terminal, unless MINIPEFT_PROGRESS=0). log: a callable receiving one
    line per finished method (default: print to stderr).

    Returns a list of dicts with keys method, options, lr, epochs, n_train, trainable (the
    count the optimiser updates, head included), head (C·d + C), pct (100·trainable /
    backbone numbers), test_acc, val_acc, mergeable (True/False; None for the baselines,
    which add nothing to merge) and train_s (seconds in ``fit``).
    """
    one_of("task", task, data.DOWNSTREAM)
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

    cfg = pretrained.DEFAULT_CONFIG  # read at call time (tests swap in a tiny backbone)
    backbone, _ = pretrained.load_backbone(cfg)
    t = data.load_task(task)
    X, y = t.train
    train = (X[:n_train], y[:n_train]) if n_train is not None else (X, y)

    def train_fn(params, m, lr, desc):
        return fit(params, train, cfg, [m], epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                   progress=progress, desc=desc)[0]

    def eval_fn(params, m):
        return evaluate(params, t.test, cfg, [m])["acc"], evaluate(params, t.val, cfg, [m])["acc"]

    budget = {"epochs": epochs, "n_train": len(train[1]), "batch_size": batch_size, "seed": seed}
    return tour_rows(names, backbone, cfg, t.n_classes, train_fn, eval_fn, budget=budget, seed=seed,
                     blas_threads=blas_threads, log=log)


def tour_rows(names, backbone, cfg, n_classes: int, train_fn, eval_fn, *, budget: dict, seed: int = 0,
              lr_of=None, blas_threads: int | None = None, log=None) -> list:
    """The tour's loop, shared by every backbone: per method, a fresh head and θ on ``backbone``,
    trained by ``train_fn(params, method, lr, desc) -> params``, scored by
    ``eval_fn(params, method) -> (test acc, val acc or None)``; one row per method (see ``run_tour``).

    lr_of: (registry name, method) -> learning rate (default the method's ``suggested_lr``). budget: keys copied into every
    row (epochs, n_train, batch_size, seed, ...). "pct" divides by ``cfg.n_params``.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    lr_of = lr_of or (lambda name, m: float(m.suggested_lr))
    head = n_classes * cfg.d + n_classes
    rows = []
    runtime.tune_allocator()
    with runtime.limit_blas(blas_threads) or contextlib.nullcontext():
        for i, name in enumerate(names, 1):
            m = method_class(name)()
            lr = float(lr_of(name, m))
            params = attach(new_head(backbone, n_classes, seed), [m], cfg, seed)
            n = count_trainable(params, [m], train_head=True)
            t0 = time.perf_counter()
            params = train_fn(params, m, lr, f"[{i}/{len(names)}] {name}")
            secs = time.perf_counter() - t0
            test_acc, val_acc = eval_fn(params, m)
            row = {"method": name, "options": m.options(), "lr": lr, **budget,
                   "trainable": n, "head": head, "pct": 100.0 * n / cfg.n_params, "backbone_params": cfg.n_params,
                   "test_acc": test_acc, "val_acc": val_acc,
                   "mergeable": None if name in BASELINES else bool(m.mergeable), "train_s": secs}
            rows.append(row)
            log(f"[{i}/{len(names)}] {name}: test acc {row['test_acc']:.3f} ({secs:.1f} s)")
    return rows


def format_table(rows, task: str | None = None, backbone_params: int | None = None, what: str = "training examples",
                 backbone: str = "backbone") -> str:
    """The tour's rows as a markdown table (one line per method), with a header line
    stating the budget, and a footnote on the counts."""
    if not rows:
        raise ValueError("rows: nothing to format (empty list)")
    r0 = rows[0]
    n_bb = backbone_params if backbone_params is not None else r0.get("backbone_params",
                                                                      pretrained.DEFAULT_CONFIG.n_params)
    span = f"{r0['steps']} step(s)" if r0.get("steps") else f"{r0['epochs']} epoch(s)"
    lines = [f"Tour{' on ' + task if task else ''}: {span} on {r0['n_train']:,} {what}, "
             f"Adam, batch {r0.get('batch_size', 64)}, seed {r0.get('seed', 0)}, head trainable; "
             f"{backbone} {n_bb:,} numbers.", "",
             "| method | trainable | % of backbone | lr | test acc | mergeable? | train s |",
             "|---|---:|---:|---:|---:|:---:|---:|"]
    for r in rows:
        merge = "—" if r["mergeable"] is None else ("yes" if r["mergeable"] else "no")
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['pct']:.{2 if r['pct'] >= 0.01 else 4}f}% | {r['lr']:g} | {r['test_acc']:.3f} "
                     f"| {merge} | {r['train_s']:.1f} |")
    lines += ["", f"trainable = the method's numbers + the head ({r0['head']:,} = C·d + C); "
                  "the linear probe trains the head alone, full fine-tuning everything. "
                  "mergeable: θ folds into the weights (no extra inference cost); — : a baseline, nothing to merge."]
    return "\n".join(lines)


# ------------------------------------------------------------------ the real language model
MODELS = ("vit", "minilm")
#: the MiniLM tour's budget: few-shot k texts per class of ``text.GAP_TASK``, Adam, batches by length
TEXT_K, TEXT_EPOCHS, TEXT_BATCH, TEXT_TEST = 32, 6, 16, 300
#: --quick on MiniLM: texts per class trained on, test texts scored, one step per method
QUICK_TEXT_K, QUICK_TEXT_TEST = 2, 8
#: every method except VPT, which refuses a text model (its init reads the patch size; use prompt)
TEXT_METHODS = tuple(n for n in REGISTRY if not n.startswith("vpt"))
#: rates that differ from the method's ``suggested_lr`` (set for the toy ViT) on MiniLM: full
#: fine-tuning of a BERT moves every pretrained weight, so a tenth of the ViT's rate; LoRA, BitFit
#: and SSF at 3·10⁻³ (at their ViT rates, 10⁻² and 3·10⁻², BitFit and SSF fell to the majority class
#: in this budget; a sweep of {10⁻³, 3·10⁻³} on the tour's split chose these)
TEXT_LR = {"full": 1e-4, "lora": 3e-3, "bitfit": 3e-3, "ssf": 3e-3}


def run_text_tour(task: str | None = None, epochs: int | None = None, *, quick: bool = False, methods=None,
                  k: int | None = None, n_test: int | None = None, seed: int = 0, batch_size: int = TEXT_BATCH,
                  progress=None, blas_threads: int | None = None, log=None) -> list:
    """The tour on all-MiniLM-L6-v2 (``models.minilm``): every method that applies to a text model
    (``TEXT_METHODS``) few-shot on a text task, same budget, one row per method (``run_tour``'s keys,
    plus k and n_test).

    task: a text task (default ``text.GAP_TASK``, where the frozen probe trails full fine-tuning).
    Training: ``task.few_shot(k, seed)`` (k = ``TEXT_K`` per class), ``epochs`` passes (default
    ``TEXT_EPOCHS``) in length buckets (``text.bucket_batches`` of the token counts, seed + epoch),
    each batch padded only to its longest text. Test accuracy on the first ``n_test`` test texts
    (default ``TEXT_TEST``), val accuracy on as many val texts, scored in length-sorted batches.
    quick: k = ``QUICK_TEXT_K``, ``QUICK_TEXT_TEST`` texts scored, one step per method.
    Learning rates: ``suggested_lr``, except ``TEXT_LR``.
    """
    from . import text
    from .models import minilm

    task = text.GAP_TASK if task is None else task
    one_of("task", task, text.TEXT_TASKS)
    names = list(TEXT_METHODS) if methods is None else list(methods)
    bad = [n for n in names if n not in TEXT_METHODS]
    if bad or not names:
        raise ValueError(f"methods must be a non-empty list of names among {list(TEXT_METHODS)} (VPT refuses a "
                         f"text model), got {methods!r}")
    epochs = (1 if quick else TEXT_EPOCHS) if epochs is None else epochs
    int_at_least("epochs", epochs, 1)
    k = (QUICK_TEXT_K if quick else TEXT_K) if k is None else k
    n_test = (QUICK_TEXT_TEST if quick else TEXT_TEST) if n_test is None else n_test
    int_at_least("n_test", n_test, 1)
    int_at_least("batch_size", batch_size, 1)
    t = text.load_text_task(task)
    train = t.few_shot(k, seed)  # ValueError naming k when it is too large
    backbone, cfg, tok = minilm.load(n_classes=t.n_classes, dtype="float32", seed=seed)

    def encode(texts):  # (n, 3, longest) ids, types, mask; texts cut to the task's max_len
        with warnings.catch_warnings():
            # cutting at max_len is the task's rule (the table's header states max_len)
            warnings.filterwarnings("ignore", message=r"texts: .* longer than max_len", category=UserWarning)
            return onp.asarray(tok.encode(list(texts), max_len=t.max_len))

    x_tr = encode(train.texts)
    lengths = x_tr[:, 2].sum(axis=1)  # real tokens per text
    steps = 1 if quick else None

    def scored(split):  # [(x, y)] batches of similar length, each padded to its own longest text
        part = split.subset(_class_balanced_head(split.labels, n_test))
        x = encode(part.texts)
        order = onp.argsort(x[:, 2].sum(axis=1), kind="stable")
        return [(trim_padding(x[b]), part.labels[b]) for b in (order[i:i + 64] for i in range(0, len(order), 64))]

    test = scored(t.test)

    def train_fn(params, m, lr, desc):
        return fit(params, (x_tr, train.labels), cfg, [m], epochs=epochs, steps=steps, lr=lr, seed=seed,
                   batch_size=batch_size, progress=progress, desc=desc,
                   batches=lambda e: text.bucket_batches(lengths, batch_size, seed + e))[0]

    def acc(params, m, batches):
        right = sum(int((predict(params, x, cfg, [m]).argmax(axis=1) == y).sum()) for x, y in batches)
        return right / sum(len(y) for _, y in batches)

    budget = {"task": task, "max_len": t.max_len, "epochs": epochs, "steps": steps, "n_train": len(train), "k": k,
              "n_test": sum(len(y) for _, y in test), "batch_size": batch_size, "seed": seed}
    return tour_rows(names, backbone, cfg, t.n_classes, train_fn, lambda p, m: (acc(p, m, test), None),
                     budget=budget, seed=seed, lr_of=lambda name, m: TEXT_LR.get(name, m.suggested_lr),
                     blas_threads=blas_threads, log=log)


def _class_balanced_head(labels, n: int):
    """Indices (sorted) of the first n_c rows of each class c, n_c = round(n · share of c) (at least 1),
    so a capped evaluation set keeps the split's class balance. labels (N,) -> (≈ min(n, N),) int."""
    labels = onp.asarray(labels)
    classes, counts = onp.unique(labels, return_counts=True)
    quota = onp.maximum(1, onp.round(counts * min(n, labels.size) / labels.size)).astype(int)
    return onp.sort(onp.concatenate([onp.flatnonzero(labels == c)[:q] for c, q in zip(classes, quota)]))

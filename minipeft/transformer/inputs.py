"""Checks at the boundary: a batch must fit the config before it meets NumPy."""
from __future__ import annotations

import numpy as onp

from .config import Config


def _dtype_kind(x):
    return onp.dtype(x.dtype).kind


def check_batch(x, cfg: Config, dtype):
    """Validate a batch and return it as an array ready for ``embed``.

    vision: x (B, C, H, W), or (B, H, W) when channels == 1, real numbers; H = W =
    image_size -> (B, C, H, W) in ``dtype``, finite after the cast (NaN/Inf: ValueError).  text: x (B, n) integer ids in [0, vocab),
    1 ≤ n ≤ max_len -> (B, n) int.  Anything else: TypeError/ValueError naming "x".
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = onp.asarray(x)
    kind = _dtype_kind(x)
    if cfg.front == "vision":
        if kind not in "fiu":
            raise TypeError(f"x: images must hold real numbers (float or int dtype), got dtype {x.dtype}")
        if x.ndim == 3 and cfg.channels == 1:
            x = x[:, None]
        want = (cfg.channels, cfg.image_size, cfg.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
            raise ValueError(f"x: expected images of shape (B, {want[0]}, {want[1]}, {want[2]})"
                             f"{' or (B, H, W)' if cfg.channels == 1 else ''} with B >= 1, got {tuple(x.shape)}")
        with onp.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by check_finite
            x = x.astype(dtype, copy=False)
        return check_finite(x, "x")  # after the cast: 1e300 is inf in float32
    if kind not in "iu":
        raise TypeError(f"x: token ids must be an integer array, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[0] < 1 or not (1 <= x.shape[1] <= cfg.max_len):
        raise ValueError(f"x: expected token ids of shape (B, n) with B >= 1 and 1 <= n <= max_len={cfg.max_len}, "
                         f"got {tuple(x.shape)}")
    if x.size and (int(x.min()) < 0 or int(x.max()) >= cfg.vocab):
        raise ValueError(f"x: token ids must lie in [0, vocab={cfg.vocab}), got range [{int(x.min())}, {int(x.max())}]")
    return x


def check_finite(x, name: str = "x"):
    """ValueError naming ``name`` when the float array ``x`` holds a NaN or ±Inf (counted)."""
    from ..backend import module_of

    raw = getattr(x, "_value", x)  # an autograd box: check the value it carries
    ok = module_of(raw).isfinite(raw)
    if not bool(ok.all()):
        n_bad = int(ok.size - int(ok.sum()))
        raise ValueError(f"{name}: must hold finite numbers, got {n_bad} NaN/Inf value(s) of {ok.size}")
    return x


def check_labels(y, n_classes: int, batch: int):
    """Labels: (B,) integers in [0, n_classes). Returns them as an int64 array."""
    if not hasattr(y, "dtype"):
        y = onp.asarray(y)
    if _dtype_kind(y) not in "iu":
        raise TypeError(f"y: labels must be integers, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != batch:
        raise ValueError(f"y: expected shape ({batch},) to match x, got {tuple(y.shape)}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"y: labels must lie in [0, n_classes={n_classes}), got range [{int(y.min())}, {int(y.max())}]")
    return y.astype("int64", copy=False)

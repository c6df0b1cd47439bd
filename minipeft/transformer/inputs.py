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
    shape_ok = (x.ndim == 2 or (x.ndim == 3 and x.shape[1] == 3)) and x.shape[0] >= 1
    if not shape_ok or not (1 <= x.shape[-1] <= cfg.max_len):
        raise ValueError(f"x: expected token ids of shape (B, n), or (B, 3, n) stacking [ids; token type ids; "
                         f"attention mask] (what text.tokenizer's encode gives), with B >= 1 and "
                         f"1 <= n <= max_len={cfg.max_len}, got {tuple(x.shape)}")
    ids, types, mask = text_parts(x)
    _check_range("x: token ids", ids, cfg.vocab, "vocab")
    if types is not None:
        _check_range("x: token type ids (x[:, 1])", types, max(cfg.type_vocab, 1), "type_vocab (1 when 0)")
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("x: the attention mask (x[:, 2]) must hold only 0 (padding) and 1 (a real token)")
        if not mask[:, 0].all():
            raise ValueError("x: the attention mask (x[:, 2]) must be 1 in column 0 (the CLS row is a real token); "
                             f"rows {onp.flatnonzero(mask[:, 0] == 0)[:5].tolist()} have 0 there")
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


def _check_range(what, a, n, name):
    if int(a.min()) < 0 or int(a.max()) >= n:
        raise ValueError(f"{what} must lie in [0, {name}={n}), got range [{int(a.min())}, {int(a.max())}]")


def text_parts(x):
    """A text batch as (ids (B, n), type ids (B, n) or None, mask (B, n) or None).

    x: (B, n) ids (all real tokens, type 0) or (B, 3, n) = [ids; type ids; attention mask].
    """
    if x.ndim == 2:
        return x, None, None
    return x[:, 0], x[:, 1], x[:, 2]


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

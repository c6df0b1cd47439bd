"""The language-model objective of a causal decoder (head="tied_lm"; equations.md, "Real
architectures"): next-token cross-entropy over the target tokens only, and logits only at
the rows that need them (the 49,152-way head on every row would be a third of SmolLM2's
forward).

    L = −(1/M) Σ_{(b, t) targets} log softmax(h_{b, t−1} W_tokᵀ)[x_{b, t}]

h_{b, t−1} is the final row (after RMSNorm_f) of input token t − 1, which reads tokens
0..t−1 (and any prompt rows or prefix); M counts the targets.
"""
from __future__ import annotations

import numpy as onp

from ..nn import cross_entropy
from .config import Config
from .forward import _insert_at, hidden, lm_head
from .inputs import text_parts


def input_rows(cfg: Config, n: int, T: int):
    """Indices (n,) of the n input tokens among the T rows after the tokens seam (prompt rows
    sit at row 0 with cls="no_cls", after row 0 otherwise)."""
    k, inserted = _insert_at(cfg), T - n - cfg.n_cls
    return onp.concatenate([onp.arange(k), onp.arange(k + inserted, T)])[cfg.n_cls:]


def _check_lm(cfg: Config):
    if cfg.head != "tied_lm" or not cfg.causal:
        raise ValueError(f"cfg: the language-model objective needs a causal decoder with the tied LM head "
                         f"(causal=True, head='tied_lm'), got causal={cfg.causal}, head={cfg.head!r}")


def check_targets(targets, shape):
    """A target mask: a 0/1 integer or bool array of ``shape`` (B, n) (ValueError naming "targets")."""
    t = onp.asarray(targets)
    if t.shape != tuple(shape) or t.dtype.kind not in "biu" or not onp.isin(t, (0, 1)).all():
        raise ValueError(f"targets: expected a 0/1 array of shape {tuple(shape)} (1 = a token to predict), "
                         f"got shape {t.shape}, dtype {t.dtype}")
    return t


def lm_logits(params, x, cfg: Config, methods=(), at=None):
    """Next-token logits at input positions ``at``.  x (B, n) or (B, 3, n) ids -> (B, k, vocab).

    at: None (all n positions) or an int array (k,) of positions in 0..n−1; the head runs
    on those rows only.
    """
    _check_lm(cfg)
    H, _ = hidden(params, x, cfg, methods)  # (B, T, d)
    n = onp.shape(x)[-1]
    rows = input_rows(cfg, n, H.shape[1])
    if at is not None:
        at = onp.asarray(at)
        if at.ndim != 1 or at.dtype.kind not in "iu" or (at.size and (at.min() < 0 or at.max() >= n)):
            raise ValueError(f"at: expected a 1-D int array of input positions in [0, n={n}), got {at.tolist()!r:.80}")
        rows = rows[at]
    return lm_head(params, H[:, rows])  # (B, k, vocab)


def lm_loss(params, x, cfg: Config, methods=(), targets=None):
    """Mean next-token cross-entropy over the target tokens (module docstring).  -> scalar.

    x: (B, n) ids, or (B, 3, n) [ids; types; attention mask] with right padding. targets:
    None (every real token t ≥ 1 is a target) or a (B, n) 0/1 array, 1 where token t is
    predicted (column 0 is never: nothing precedes it), e.g. the answer's tokens only.
    The head runs on the M rows t − 1 of the targets only: (M, d) -> (M, vocab).
    """
    _check_lm(cfg)
    xs = onp.asarray(x)
    ids, _, mask = text_parts(xs)
    want = onp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
    if targets is not None:
        want &= check_targets(targets, ids.shape).astype(bool)
    want[:, 0] = False
    b, t = onp.nonzero(want)  # the targets (b, t), t ≥ 1
    if not len(b):
        raise ValueError("targets: no token to predict (every target is column 0 or padding)")
    H, _ = hidden(params, x, cfg, methods)  # (B, T, d)
    rows = input_rows(cfg, ids.shape[1], H.shape[1])
    logits = lm_head(params, H[b, rows[t - 1]])  # (M, vocab)
    return cross_entropy(logits, ids[b, t])

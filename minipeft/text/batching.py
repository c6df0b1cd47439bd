"""Token-sequence lengths: truncation to a task's max_len (with a warning), and length-bucketed batches.

A batch of texts is padded to its longest member, so a batch costs B·max_b l_b token slots
(l_b: the number of tokens of text b) while only Σ_b l_b of them are real. Drawing batches
at random mixes a 20-token text with a 128-token one; grouping texts of similar length keeps
the padding small. ``bucket_batches`` does that and stays a fair shuffle: every index exactly
once per epoch, a different grouping per seed, the same bits for the same seed.
"""
from __future__ import annotations

import warnings

import numpy as onp

from ..validate import int_at_least


class TruncationWarning(UserWarning):
    """Some texts were longer than the task's max_len tokens and were cut."""


def _lengths(lengths, name: str = "lengths"):
    try:
        arr = onp.asarray(lengths)
    except (TypeError, ValueError) as e:  # ragged or non-numeric input
        raise ValueError(f"{name} must be a 1-D sequence of non-negative ints, got {lengths!r}") from e
    if arr.ndim != 1 or (arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0)):
        raise ValueError(f"{name} must be a 1-D sequence of non-negative ints, got {lengths!r}")
    return arr.astype(onp.int64)


def warn_truncated(lengths, max_len: int, what: str = "texts") -> int:
    """Warn (``TruncationWarning``) when any length exceeds ``max_len``; return how many do.

    lengths (n,): token counts before truncation. The warning says how many of the n texts
    are cut and the longest length, so a reader knows how much text the model does not see.
    """
    lengths = _lengths(lengths)
    max_len = int_at_least("max_len", max_len, 1, numpy_ints=True)
    n_cut = int((lengths > max_len).sum())
    if n_cut:
        warnings.warn(f"{n_cut} of {lengths.size} {what} are longer than max_len={max_len} tokens (longest: "
                      f"{int(lengths.max())}) and are truncated to {max_len}", TruncationWarning, stacklevel=2)
    return n_cut


def truncate(seqs, max_len: int, *, keep_last: int = 0, what: str = "texts"):
    """Each token sequence cut to at most ``max_len`` tokens: its first max_len − keep_last and its last keep_last.

    keep_last = 1 keeps a closing special token (BERT's [SEP]) after the cut. Warns once
    (``warn_truncated``) when anything was cut; never raises for a long text.
    seqs: a list of n sequences (lists or 1-D arrays) -> a list of n lists of length ≤ max_len.
    """
    max_len = int_at_least("max_len", max_len, 1, numpy_ints=True)
    keep_last = int_at_least("keep_last", keep_last, 0, maximum=max_len - 1, numpy_ints=True)
    seqs = [list(s) for s in seqs]
    warn_truncated([len(s) for s in seqs], max_len, what)
    head = max_len - keep_last
    return [s if len(s) <= max_len else s[:head] + (s[len(s) - keep_last:] if keep_last else []) for s in seqs]


def random_batches(n: int, batch_size: int, seed: int):
    """A plain shuffle cut into batches: the baseline that ``bucket_batches`` is compared with."""
    n = int_at_least("n", n, 0, numpy_ints=True)
    batch_size = int_at_least("batch_size", batch_size, 1, numpy_ints=True)
    seed = int_at_least("seed", seed, 0, numpy_ints=True)
    perm = onp.random.default_rng(seed).permutation(n)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def bucket_batches(lengths, batch_size: int, seed: int, *, pool_batches: int = 50):
    """Batches of indices grouped by similar length, shuffled deterministically by ``seed``.

    lengths (n,): token counts. Shuffle the n indices; cut the shuffle into pools of
    ``pool_batches``·batch_size indices; sort each pool by length (ties in shuffle order) and cut
    it into batches of ``batch_size`` (the last one of the epoch may be smaller); shuffle the
    order of all the batches. Every index appears exactly once. A larger pool groups more
    tightly; a pool of one batch is ``random_batches``. Returns a list of int64 index arrays.
    """
    lengths = _lengths(lengths)
    batch_size = int_at_least("batch_size", batch_size, 1, numpy_ints=True)
    seed = int_at_least("seed", seed, 0, numpy_ints=True)
    pool_batches = int_at_least("pool_batches", pool_batches, 1, numpy_ints=True)
    rng = onp.random.default_rng(seed)
    perm = rng.permutation(lengths.size)
    pool = pool_batches * batch_size
    batches = []
    for start in range(0, lengths.size, pool):
        chunk = perm[start:start + pool]
        chunk = chunk[onp.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, chunk.size, batch_size)]
    short = [batches.pop()] if batches and batches[-1].size < batch_size else []  # only the last can be short
    batches = [batches[i] for i in rng.permutation(len(batches))] + short  # ... and it stays last
    return [b.astype(onp.int64) for b in batches]


def padded_tokens(lengths, batches) -> int:
    """Token slots the batches cost when each is padded to its longest text: Σ_batches |b|·max_{i∈b} l_i."""
    lengths = _lengths(lengths)
    return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))

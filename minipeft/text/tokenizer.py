"""WordPiece tokenization with the `tokenizers` package, from a model's shipped ``tokenizer.json``.

    encode(["a text", …], max_len) -> Encoded(ids, type_ids, mask)     each (B, n) int64

One text becomes [CLS] t₁ … t_k [SEP] (type id 0 throughout; what BERT's template gives a
single sentence); the batch is padded on the right with [PAD] to its longest row n, and
the mask is 1 on real tokens, 0 on padding. ``numpy.asarray(encoded)`` stacks the three as
(B, 3, n), the text batch ``forward``/``fit``/``predict`` take.

Chosen behaviours (the issue leaves them open):
- a text longer than max_len tokens (with [CLS] and [SEP]) is cut to its first max_len − 1
  tokens plus [SEP] (the tokenizers package's own truncation), with one ``UserWarning``
  per call saying how many texts were cut and the longest length;
- an empty (or whitespace-only) string is a valid text: it encodes as [CLS] [SEP], as
  in Hugging Face's tokenizer;
- a bare string instead of a list, a non-string item, or zero texts is an error
  (TypeError / ValueError naming ``texts``): iterating a string would tokenise characters.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as onp

from ..validate import int_at_least

#: refuse a tokenizer.json larger than this (what the tokenizers package would parse into memory)
MAX_FILE_BYTES = 64 * 2 ** 20
SPECIALS = ("[CLS]", "[SEP]", "[PAD]")


@dataclass(frozen=True)
class Encoded:
    """A tokenized batch: ids, type_ids, mask, each (B, n) int64; ``numpy.asarray`` -> (B, 3, n)."""

    ids: onp.ndarray
    type_ids: onp.ndarray
    mask: onp.ndarray

    def __array__(self, dtype=None, copy=None):
        x = onp.stack([self.ids, self.type_ids, self.mask], axis=1)  # (B, 3, n)
        return x if dtype is None else x.astype(dtype)

    @property
    def lengths(self) -> onp.ndarray:
        """Real tokens per text (with [CLS] and [SEP]).  (B,)"""
        return self.mask.sum(axis=1)


class Tokenizer:
    """A model's WordPiece tokenizer (``tokenizers.Tokenizer.from_file``), checked against it.

    path: the model's tokenizer.json; vocab: the rows of the model's token table W_tok (a
    tokenizer whose vocabulary has another size does not belong to these weights:
    ValueError); max_len: the model's position table (encode's largest max_len).
    """

    def __init__(self, path, vocab: int, max_len: int):
        from tokenizers import Tokenizer as HFTokenizer

        path = os.fspath(path)
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ValueError(f"tokenizer: {path} is {size:,} bytes, more than the {MAX_FILE_BYTES:,} allowed")
        tok = HFTokenizer.from_file(path)
        tok.no_padding()  # the shipped file pads every text to 128: we pad to the batch's longest
        if tok.get_vocab_size() != vocab:
            raise ValueError(f"tokenizer: {path} has a vocabulary of {tok.get_vocab_size():,} tokens but the "
                             f"model's token table W_tok has {vocab:,} rows: this tokenizer does not belong to "
                             f"these weights")
        ids = {t: tok.token_to_id(t) for t in SPECIALS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer: {path} lacks the special tokens {missing} a BERT model needs")
        self._tok, self.vocab, self.max_len = tok, vocab, int_at_least("max_len", max_len, 2)
        self.cls_id, self.sep_id, self.pad_id = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]

    def encode(self, texts, max_len: int | None = None) -> Encoded:
        """Tokenize a batch (module docstring).  B texts -> Encoded, each array (B, n), n ≤ max_len.

        max_len: tokens per text with [CLS] and [SEP], 2..self.max_len (default self.max_len).
        """
        texts = check_texts(texts)
        max_len = self.max_len if max_len is None else int_at_least(
            "max_len", max_len, 2, maximum=self.max_len,
            allowed=f"an int in [2, {self.max_len}] (tokens with [CLS] and [SEP]; the model has "
                    f"{self.max_len} positions)")
        self._tok.enable_truncation(max_length=max_len)
        encs = self._tok.encode_batch(texts)
        cut = [i for i, e in enumerate(encs) if e.overflowing]
        if cut:
            longest = max(len(self._tok.encode(texts[i], add_special_tokens=True).ids) for i in cut[:64])
            warnings.warn(f"texts: {len(cut)} of {len(texts)} texts are longer than max_len={max_len} tokens "
                          f"(the longest checked has {longest}); each is cut to its first {max_len - 1} tokens "
                          f"+ [SEP]", UserWarning, stacklevel=2)
        n = max(len(e.ids) for e in encs)
        ids = onp.full((len(encs), n), self.pad_id, dtype=onp.int64)
        types = onp.zeros((len(encs), n), dtype=onp.int64)
        mask = onp.zeros((len(encs), n), dtype=onp.int64)
        for b, e in enumerate(encs):
            k = len(e.ids)
            ids[b, :k], types[b, :k], mask[b, :k] = e.ids, e.type_ids, 1
        return Encoded(ids, types, mask)

    def word_ids(self, words) -> tuple:
        """Token ids of ``words`` without [CLS]/[SEP], in order (a word may be several pieces):
        what prompt tuning's ``init_tokens`` takes to start P_e at the class-label words."""
        words = check_texts(words, "words")
        return tuple(i for w in words for i in self._tok.encode(w, add_special_tokens=False).ids)


def check_texts(texts, name: str = "texts") -> list:
    """``texts`` as a list of str: a non-empty list or tuple of strings (TypeError/ValueError naming ``name``)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, got one {type(texts).__name__}; for one text pass "
                        f"[text]")
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{name}: got zero texts; pass at least one string")
    bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{name} must hold only strings; item {bad[0][0]} is a {bad[0][1]}"
                        + (f" ({len(bad)} non-strings in all)" if len(bad) > 1 else ""))
    return list(texts)

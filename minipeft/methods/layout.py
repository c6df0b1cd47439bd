"""Where the conditioning methods' rows sit: the prompt length bound, the insertion right
after CLS, and which rows of the sequence and which key columns belong to which method.

Prompt tuning and VPT-Shallow insert at the "tokens" seam, VPT-Deep at block 1's input
("layer_in"), prefix tuning prepends to the keys ("kv"): each says so with its
``prompt_seam``. ``token_rows`` / ``key_columns`` read the trace forward fills
(trace["attn"][ℓ-1] is A_ℓ ∈ (B, h, T, S)) by owner — what a chapter needs to show the
notes' "Why prompt tokens work": prompts change the real tokens' attention.
"""
from __future__ import annotations

import autograd.numpy as np

from ..nn import prepend
from ..transformer.config import CLS_MODES
from ..validate import int_at_least, one_of

#: the longest prompt or prefix allowed (p ≤ P_MAX): the sequence grows by p, and
#: attention costs O((n + p)²); 64 is four times the pretrained backbone's 16 patches.
P_MAX = 64


def check_length(p, field_name: str = "p") -> int:
    """p must be an int with 1 ≤ p ≤ P_MAX (TypeError/ValueError naming ``field_name``)."""
    return int_at_least(field_name, p, 1, maximum=P_MAX, numpy_ints=True, type_error=True,
                        allowed=f"an int in [1, {P_MAX}] (P_MAX)")


def insert_after_cls(P, Z):
    """[x₀; P; E]: prompts right after the CLS row.

    P: (p, d), shared over the batch; Z = [x₀; E]: (B, 1+n, d)  ->  (B, 1+p+n, d).
    """
    # exercise prompt-tuning [2 pts] "Prompt tuning": [x₀; E₀] -> [x₀; P_e; E₀], P_e (p, d) shared over the batch
    return np.concatenate([Z[:, :1], prepend(P, Z[:, 1:])], axis=1)  # (B, 1+p+n, d)
    # end exercise


def _at(methods, seam):
    return [m for m in methods if m.prompt_seam == seam]


def token_rows(methods, n_input: int, cls: str = "learned") -> dict:
    """Rows of the sequence entering and leaving every block, by owner.

    {"cls": slice(0, 1), <method name>: slice of its p prompt rows, …, "input": slice of
    the n_input real tokens}. Valid for trace["hidden"][1:] (the outputs X_ℓ of the
    blocks) and for the query axis (axis 2) of trace["attn"][ℓ-1]. Each tokens-seam
    method inserts right after CLS, so the last one listed sits first; VPT-Deep inserts
    at the input of block 1, after them all, so it always sits at rows 1..p (and
    trace["hidden"][0], taken before block 1, lacks its rows). At most one VPT-Deep
    (the forward pass refuses two). Prompts with placement="peft" ("inputs" seam) sit in
    front of CLS, the last listed first. n_input: the rows after row 0 that are input tokens:
    m patches (cfg.n_patches) for vision; for text the batch's length n with a learned x₀
    (cfg.cls == "learned"), n − 1 when row 0 is the tokenizer's [CLS] (cfg.cls == "ids").
    cls: the model's cfg.cls. With "no_cls" (a decoder, Llama) there is no "cls" entry: the
    tokens-seam prompts come first (the last listed first), then the n_input = n tokens of
    the text, [P_e; E₀].
    """
    one_of("cls", cls, CLS_MODES)
    deep = _at(methods, "layer_in")
    if len(deep) > 1:
        raise ValueError(f"methods: at most one VPT-Deep can be active, got {[m.name for m in deep]}")
    rows, start = {}, 0
    for m in _at(methods, "inputs")[::-1]:  # placement="peft" prompts: in front of CLS
        rows[m.name] = slice(start, start + m.p)
        start += m.p
    if cls != "no_cls":
        rows["cls"], start = slice(start, start + 1), start + 1
    for m in deep + _at(methods, "tokens")[::-1]:
        rows[m.name] = slice(start, start + m.p)
        start += m.p
    rows["input"] = slice(start, start + n_input)
    return rows


def key_columns(methods, n_input: int, cls: str = "learned") -> dict:
    """Key columns (last axis) of the attention weights trace["attn"][ℓ-1], by owner.

    Prefix tuning prepends its P_k to the keys (the last prefix listed first), then come
    the sequence's rows as in ``token_rows``: {<prefix name>: slice, …, "cls": slice,
    <prompt name>: slice, …, "input": slice}. Example: the attention mass the real
    tokens put on the prompts of method "prompt" at layer ℓ is
    ``A[:, :, rows["input"], cols["prompt"]].sum(-1)`` with A = trace["attn"][ℓ-1].
    cls: the model's cfg.cls, as in ``token_rows`` (no "cls" entry with "no_cls").
    """
    cols, start = {}, 0
    for m in _at(methods, "kv")[::-1]:
        cols[m.name] = slice(start, start + m.p)
        start += m.p
    for k, s in token_rows(methods, n_input, cls).items():
        cols[k] = slice(s.start + start, s.stop + start)
    return cols

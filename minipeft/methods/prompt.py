"""Prompt tuning (equations.md, "Prompt tuning"; the notes' "Prompt Tuning").

A learnable P_e ∈ R^{p×d} joins the input embeddings X_e; the frozen transformer reads
the longer sequence:

    [P_e; X_e] ∈ R^{(p+n)×d}  → frozen transformer → Head

Where the prompts go. The notes prepend P_e to the input. Our model is CLS-first (the
head reads row 0 of the last layer, equations.md "Transformer"), so P_e goes right
after CLS, where VPT puts its prompts too:  Z₀ = [x₀; E₀] → [x₀; P_e; E₀]. Attention
has no notion of order beyond the position table, so "before the inputs" and "after
CLS, before the inputs" are the same idea; keeping CLS first keeps the head unchanged.
Prompts get no position embedding: the table is added inside ``embed``, before the
"tokens" seam where P_e enters (as in VPT).

This file also holds what the conditioning methods share: the prompt length check,
the insertion after CLS, and ``token_rows`` / ``key_columns``, which say which rows of
the sequence and which key columns of the attention weights (forward's ``trace``:
trace["attn"][ℓ-1] is A_ℓ ∈ (B, h, T, S)) belong to which prompts — what a chapter needs
to show the notes' "Why prompt tokens work": prompts change the real tokens' attention.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import autograd.numpy as np
import numpy as onp

from ..nn import prepend
from ..transformer import cast, token_embedding
from ..validate import finite_number, int_at_least, is_int
from .base import Method

#: the longest prompt or prefix allowed (p ≤ P_MAX): the sequence grows by p, and
#: attention costs O((n + p)²); 64 is four times the pretrained backbone's 16 patches.
P_MAX = 64
INITS = ("uniform", "vocab", "text")


# ------------------------------------------------------------------ shared checks
def check_length(p, field_name: str = "p") -> int:
    """p must be an int with 1 ≤ p ≤ P_MAX (TypeError/ValueError naming ``field_name``)."""
    return int_at_least(field_name, p, 1, maximum=P_MAX, numpy_ints=True, type_error=True,
                        allowed=f"an int in [1, {P_MAX}] (P_MAX)")


def check_positive(x, field_name: str) -> float:
    """x must be a positive finite number (not a bool)."""
    return finite_number(field_name, x, positive=True)


def check_name(name) -> None:
    """A method name is a non-empty string without dots (it becomes params[name] and a file key)."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"name must be a non-empty string without '.', got {name!r}")


def check_shape(what: str, a, want: tuple, hint: str = "") -> None:
    """ValueError when the array ``a`` (θ's ``what``) does not have shape ``want``."""
    if tuple(a.shape) != tuple(want):
        raise ValueError(f"{what}: shape {tuple(a.shape)}, expected {tuple(want)}{hint}")


# ------------------------------------------------------------------- the insertion
def insert_after_cls(P, Z):
    """[x₀; P; E]: prompts right after the CLS row.

    P: (p, d), shared over the batch; Z = [x₀; E]: (B, 1+n, d)  ->  (B, 1+p+n, d).
    """
    return np.concatenate([Z[:, :1], prepend(P, Z[:, 1:])], axis=1)  # (B, 1+p+n, d)


# -------------------------------------------------------------- where prompts sit
def _conditioning(methods, seam):
    return [m for m in methods if getattr(m, "prompt_seam", None) == seam]


def token_rows(methods, n_input: int) -> dict:
    """Rows of the sequence entering and leaving every block, by owner.

    {"cls": slice(0, 1), <method name>: slice of its p prompt rows, …, "input": slice of
    the n_input real tokens}. Valid for trace["hidden"][1:] (the outputs X_ℓ of the
    blocks) and for the query axis (axis 2) of trace["attn"][ℓ-1]. Each tokens-seam
    method inserts right after CLS, so the last one listed sits first; VPT-Deep inserts
    at the input of block 1, after them all, so it always sits at rows 1..p (and
    trace["hidden"][0], taken before block 1, lacks its rows). At most one VPT-Deep.
    n_input: m patches (cfg.n_patches) for vision, the batch's length for text.
    """
    deep = _conditioning(methods, "layer_in")
    if len(deep) > 1:
        raise ValueError(f"methods: at most one VPT-Deep can be active, got {[m.name for m in deep]}")
    rows, start = {"cls": slice(0, 1)}, 1
    for m in deep + _conditioning(methods, "tokens")[::-1]:
        rows[m.name] = slice(start, start + m.p)
        start += m.p
    rows["input"] = slice(start, start + n_input)
    return rows


def key_columns(methods, n_input: int) -> dict:
    """Key columns (last axis) of the attention weights trace["attn"][ℓ-1], by owner.

    Prefix tuning prepends its P_k to the keys (the last prefix listed first), then come
    the sequence's rows as in ``token_rows``: {<prefix name>: slice, …, "cls": slice,
    <prompt name>: slice, …, "input": slice}. Example: the attention mass the real
    tokens put on the prompts of method "prompt" at layer ℓ is
    ``A[:, :, rows["input"], cols["prompt"]].sum(-1)`` with A = trace["attn"][ℓ-1].
    """
    cols, start = {}, 0
    for m in _conditioning(methods, "kv")[::-1]:
        cols[m.name] = slice(start, start + m.p)
        start += m.p
    for k, s in token_rows(methods, n_input).items():
        cols[k] = slice(s.start + start, s.stop + start)
    return cols


# ---------------------------------------------------------------------- the method
@dataclass(frozen=True)
class PromptTuning(Method):
    """Prompt tuning (Lester et al. 2021), equations.md "Prompt tuning".

        Z₀ = [x₀; E₀]  →  [x₀; P_e; E₀]       P_e ∈ R^{p×d}   (B, 1+n, d) -> (B, 1+p+n, d)

    then the frozen transformer and y = Head(LN_f(x_N)). Fills the "tokens" seam.
    Trainable: P_e, p·d numbers (``n_params``), and optionally the head.

    Init (``init_from``): "uniform" P_e ~ U[−scale, scale] (the paper's random baseline,
    scale 0.5); "vocab" the embeddings of p tokens drawn at random (with replacement
    only when p > vocab); "text" the embeddings of ``init_tokens``, the ids repeated in
    order and trimmed to p (class-label words, as the paper initialises; for a BERT model
    ``Tokenizer.word_ids(label_words)`` gives them). A token's embedding is the row the
    tokens seam sees for it without a position (``transformer.token_embedding``): W_tok[t],
    or LN_emb(W_tok[t] + W_type[0]) in BERT, so P_e starts on the scale of the real rows.
    "vocab" and "text" need a text model (front="text"). P_e is a copy: the backbone is
    never touched.

    Where P_e sits in a BERT (cls="ids"): right after [CLS] (row 0), before the real
    tokens' embeddings, with no position embedding; the real tokens keep positions 0..n-1.
    Hugging Face peft puts its virtual tokens before [CLS] and shifts every real token's
    position by p; we keep the pretrained positions and the CLS row (what "cls" and
    "pooler" pooling read) unchanged. The mask marks P_e visible; "mean" pooling skips it.
    """

    p: int = field(default=8, metadata={"help": f"prompt length p, 1..{P_MAX}"})
    init_from: str = field(default="uniform", metadata={"help": "P_e init: uniform | vocab (rows of W_tok) | "
                                                                "text (W_tok[init_tokens])", "choices": INITS})
    scale: float = field(default=0.5, metadata={"help": "init_from='uniform': P_e ~ U[-scale, scale]"})
    init_tokens: tuple = field(default=(), metadata={"help": "init_from='text': token ids whose embeddings start P_e "
                                                             "(repeated/trimmed to p)", "item_type": int})
    name: str = "prompt"

    #: the CLI's default lr (best validation accuracy of 3e-3..1e-1 on digits, 10 epochs, pretrained backbone)
    suggested_lr = 3e-2
    prompt_seam = "tokens"

    def __post_init__(self):
        object.__setattr__(self, "p", check_length(self.p))
        if self.init_from not in INITS:
            raise ValueError(f"init_from must be one of {INITS}, got {self.init_from!r}")
        check_positive(self.scale, "scale")
        toks = self.init_tokens
        if isinstance(toks, (str, bytes)) or not isinstance(toks, (tuple, list)):
            raise TypeError(f"init_tokens must be a tuple of token ids (ints), got {toks!r}")
        if any(not is_int(t, numpy_ints=True) or t < 0 for t in toks):
            raise ValueError(f"init_tokens must hold non-negative int token ids, got {tuple(toks)!r}")
        object.__setattr__(self, "init_tokens", tuple(int(t) for t in toks))
        if self.init_from == "text" and not toks:
            raise ValueError("init_tokens: init_from='text' needs at least one token id (e.g. the class-label words)")
        if self.init_from != "text" and toks:
            raise ValueError(f"init_tokens is only used by init_from='text', got init_from={self.init_from!r}")
        check_name(self.name)

    def init(self, cfg, params, rng) -> dict:
        """θ = {"P": P_e (p, d)} in the backbone's dtype (see the class docstring)."""
        dtype = params["embed"]["pos"].dtype
        if self.init_from == "uniform":
            return {"P": cast(rng.uniform(-self.scale, self.scale, (self.p, cfg.d)), dtype)}
        if cfg.front != "text":
            raise ValueError(f"init_from: {self.init_from!r} copies rows of the token table W_tok, which a vision "
                             f"model (front='vision') does not have; a vision model allows init_from='uniform' "
                             f"(or use VPTShallow)")
        if self.init_from == "vocab":
            idx = rng.choice(cfg.vocab, size=self.p, replace=self.p > cfg.vocab)
        else:
            bad = [t for t in self.init_tokens if t >= cfg.vocab]
            if bad:
                raise ValueError(f"init_tokens: ids must lie in [0, vocab={cfg.vocab}), got {bad}")
            idx = [self.init_tokens[i % len(self.init_tokens)] for i in range(self.p)]
        return {"P": cast(token_embedding(params, onp.asarray(idx), cfg), dtype)}  # (p, d), a copy

    def on_tokens(self, theta, Z, cfg):
        """[x₀; E₀] (B, 1+n, d) -> [x₀; P_e; E₀] (B, 1+p+n, d)."""
        check_shape(f"{self.name}.P", theta["P"], (self.p, cfg.d), " (p, d)")
        return insert_after_cls(theta["P"], Z)

    def n_params(self, cfg) -> int:
        """p·d."""
        return self.p * cfg.d


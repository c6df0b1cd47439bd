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

The insertion after CLS, the length bound P_MAX and which rows belong to which prompts
(``token_rows``, ``key_columns``) are shared with VPT and prefix tuning: methods/layout.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as onp

from ..nn import prepend
from ..transformer import token_embedding
from ..validate import is_int, one_of, scale, shape
from .base import Method
from ..nn import prepend
from .layout import P_MAX, check_length, insert_after_cls

INITS = ("uniform", "vocab", "text")
#: where P_e goes: "minipeft" right after CLS, no position, after LN_emb; "peft" HF peft's
#: convention: before [CLS], through BertEmbeddings (positions 0..p-1, type 0, LN_emb)
PLACEMENTS = ("minipeft", "peft")


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

    On a decoder with no CLS row (cls="no_cls", Llama): Z₀ = E₀ → [P_e; E₀], the soft
    prompt before the prompt text, as the paper's [P_e; X_e]; with RoPE the prompt rows get
    no rotation and the text keeps positions 0..n-1 (transformer/forward.py); the causal
    mask lets every text row read all of P_e.

    ``placement="peft"`` reproduces peft's convention exactly (what ``minipeft.interop``
    exports to and imports from): P_e fills the "inputs" seam, joining the word
    embeddings in front, Z₀ = LN_emb([P_e; W_tok[ids]] + pos[0 : p+n] + W_type[0]) (B, p+n, d):
    the prompts take positions 0..p-1, the real tokens p..p+n-1, and row 0 ("cls",
    "pooler" pooling) is the first prompt, as in peft's PeftModelForFeatureExtraction.
    (peft also drops token-type ids; minipeft keeps them: equal for single sentences.)
    """

    p: int = field(default=8, metadata={"help": f"prompt length p, 1..{P_MAX}"})
    init_from: str = field(default="uniform", metadata={"help": "P_e init: uniform | vocab (rows of W_tok) | "
                                                                "text (W_tok[init_tokens])", "choices": INITS})
    scale: float = field(default=0.5, metadata={"help": "init_from='uniform': P_e ~ U[-scale, scale]"})
    init_tokens: tuple = field(default=(), metadata={"help": "init_from='text': token ids whose embeddings start P_e "
                                                             "(repeated/trimmed to p)", "item_type": int})
    placement: str = field(default="minipeft", metadata={
        "help": "minipeft: P_e after CLS, no position; peft: before [CLS], through the embeddings with positions "
                "0..p-1 (HF peft's convention)", "choices": PLACEMENTS})
    name: str = "prompt"

    #: the CLI's default lr (best validation accuracy of 3e-3..1e-1 on digits, 10 epochs, pretrained backbone)
    suggested_lr = 3e-2

    @property
    def prompt_seam(self) -> str:
        """"tokens" (after CLS), or "inputs" (in front of the word embeddings) for placement="peft"."""
        return "inputs" if self.placement == "peft" else "tokens"

    def check_options(self):
        """Validate and normalise the options (called by ``Method.__post_init__``)."""
        object.__setattr__(self, "p", check_length(self.p))
        one_of("init_from", self.init_from, INITS)
        one_of("placement", self.placement, PLACEMENTS)
        scale("scale", self.scale, positive=True)
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

    def init(self, cfg, params, rng) -> dict:
        """θ = {"P": P_e (p, d)} (see the class docstring)."""
        if self.init_from == "uniform":
            return {"P": rng.uniform(-self.scale, self.scale, (self.p, cfg.d))}
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
        return {"P": token_embedding(params, onp.asarray(idx), cfg)}  # (p, d), a copy

    def on_tokens(self, theta, Z, cfg):
        """[x₀; E₀] (B, 1+n, d) -> [x₀; P_e; E₀] (B, 1+p+n, d) (placement="peft": Z unchanged)."""
        if self.placement == "peft":
            return Z
        shape(f"{self.name}.P", theta["P"], (self.p, cfg.d), " (p, d)")
        if cfg.cls == "no_cls":  # a decoder: [P_e; E₀] (B, p+n, d)
            return prepend(theta["P"], Z)
        return insert_after_cls(theta["P"], Z)

    def on_inputs(self, theta, L, cfg):
        """placement="peft": L (B, k, d) -> [P_e; L] (B, p+k, d), rows that join the word
        embeddings in front (then positions, type 0 and LN_emb: ``transformer.embed``)."""
        if self.placement != "peft":
            return L
        if cfg.front != "text":
            raise ValueError("placement: 'peft' puts P_e in front of the word embeddings of a text model "
                             "(front='text'); a vision model allows placement='minipeft'")
        shape(f"{self.name}.P", theta["P"], (self.p, cfg.d), " (p, d)")
        return prepend(theta["P"], L)

    def n_params(self, cfg) -> int:
        """p·d."""
        return self.p * cfg.d


"""The backbone's configuration: a frozen, validated dataclass (equations.md, "Conventions")."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..validate import boolean, finite_number, int_at_least, one_of

FRONTS = ("vision", "text")
#: upper bounds of the size fields (a config is a promise to allocate): widths, depth, classes, …
MAXIMA = {"d": 65536, "h": 4096, "N": 1024, "d_ff": 262144, "n_classes": 65536, "image_size": 4096,
          "patch": 4096, "channels": 64, "vocab": 1 << 24, "max_len": 65536, "type_vocab": 65536}
#: the largest backbone (numbers in φ) a config may describe: 2²⁸ (1 GiB in float32)
MAX_PARAMS = 1 << 28
#: the forks of the one transformer (module docstring of forward.py says where each acts)
NORMS = ("pre", "post")  # pre-LN (GPT-2, ViT) | post-LN (BERT)
ACTS = ("gelu_tanh", "gelu_erf")  # GELU's tanh form | the exact erf form (BERT)
CLS_MODES = ("learned", "ids")  # a learned x₀ prepended | the tokenizer's [CLS] id is row 0 (BERT)
POOLS = ("cls", "mean", "pooler")  # row 0 | mean of the real tokens | tanh(W_p x₀ + b_p) (BERT's pooler)


@dataclass(frozen=True)
class Config:
    """Sizes and forks of the transformer classifier. No dropout: the forward is deterministic.

    d: model width; h: heads (d_h = d / h); N: layers; d_ff: MLP width; n_classes: head
    outputs; eps: LayerNorm ε. front: "vision" (image_size × image_size images with
    ``channels`` channels cut into patch × patch patches, m = (image_size / patch)²) or
    "text" (token ids < vocab, at most max_len of them).

    The forks (defaults: the pre-LN ViT/GPT-2 shape; BERT sets all of them, see
    ``models.minilm``):
      norm       "pre": X' = X + MSA(LN₁(X)), then LN_f before the head; "post" (BERT):
                 X' = LN₁(X + MSA(X)), X_ℓ = LN₂(X' + MLP(X')), no LN_f.
      act        "gelu_tanh" or "gelu_erf" (the exact ½x(1 + erf(x/√2)), BERT).
      cls        "learned": a learned x₀ is prepended (1 + n rows; n_positions = 1 + max_len);
                 "ids" (text only): row 0 is the tokenizer's [CLS] token (n rows; n_positions = max_len).
      type_vocab text only: token-type (segment) embeddings W_type ∈ R^{type_vocab×d} added to
                 every row; 0 = none.
      embed_ln   an embedding LayerNorm LN_emb(W_tok[ids] + pos + W_type[types]) (BERT).
      pool       what the head reads: "cls" row 0; "mean" the mean over the real (unpadded)
                 input tokens; "pooler" BERT's tanh(x₀ W_pᵀ + b_p).
    """

    d: int = 64
    h: int = 4
    N: int = 4
    d_ff: int = 128
    n_classes: int = 10
    front: str = "vision"
    image_size: int = 16
    patch: int = 4
    channels: int = 1
    vocab: int = 0
    max_len: int = 0
    eps: float = 1e-5
    norm: str = "pre"
    act: str = "gelu_tanh"
    cls: str = "learned"
    type_vocab: int = 0
    embed_ln: bool = False
    pool: str = "cls"

    def __post_init__(self):
        for f in ("d", "h", "N", "d_ff", "n_classes"):
            self._size(f)
        one_of("front", self.front, FRONTS)
        if self.d % self.h:
            raise ValueError(f"d must be divisible by h (heads): d={self.d}, h={self.h}")
        finite_number("eps", self.eps, positive=True, allowed="a finite number in (0, 1] (LayerNorm's ε)")
        if self.eps > 1:
            raise ValueError(f"eps must be a finite number in (0, 1] (LayerNorm's ε), got {self.eps!r}")
        for f, allowed in (("norm", NORMS), ("act", ACTS), ("cls", CLS_MODES), ("pool", POOLS)):
            one_of(f, getattr(self, f), allowed)
        boolean("embed_ln", self.embed_ln)
        int_at_least("type_vocab", self.type_vocab, 0, maximum=MAXIMA["type_vocab"], type_error=True)
        if self.front == "vision" and (self.cls != "learned" or self.type_vocab):
            raise ValueError(f"cls='ids' and type_vocab > 0 need front='text' (token ids), got front='vision', "
                             f"cls={self.cls!r}, type_vocab={self.type_vocab}")
        if self.front == "vision":
            for f in ("image_size", "patch", "channels"):
                self._size(f)
            if self.image_size % self.patch:
                raise ValueError(
                    f"image_size must be a multiple of patch: image_size={self.image_size}, patch={self.patch}")
        else:
            for f in ("vocab", "max_len"):
                self._size(f)
        for f in ("image_size", "patch", "channels", "vocab", "max_len"):  # unused by this front: still ints
            int_at_least(f, getattr(self, f), 0, maximum=MAXIMA[f], type_error=True,
                         allowed=f"a non-negative int ≤ {MAXIMA[f]}")
        if self.n_params > MAX_PARAMS:
            raise ValueError(f"config: the backbone would have {self.n_params:,} numbers, more than MAX_PARAMS = "
                             f"{MAX_PARAMS:,}; make d, d_ff, N, vocab or the image smaller")

    def _size(self, f):
        int_at_least(f, getattr(self, f), 1, maximum=MAXIMA[f], type_error=True,
                     allowed=f"a positive int ≤ {MAXIMA[f]}")

    @property
    def d_h(self) -> int:
        """Head width d / h."""
        return self.d // self.h

    @property
    def n_patches(self) -> int:
        """m = (image_size / patch)² for vision; 0 for text."""
        return (self.image_size // self.patch) ** 2 if self.front == "vision" else 0

    @property
    def patch_dim(self) -> int:
        """Numbers in one flattened patch: channels · patch²."""
        return self.channels * self.patch * self.patch

    @property
    def n_cls(self) -> int:
        """Rows the model prepends to the input: 1 (a learned x₀) or 0 ([CLS] is in the ids)."""
        return 1 if self.cls == "learned" else 0

    @property
    def has_ln_f(self) -> bool:
        """Whether there is a final LayerNorm LN_f (pre-LN only: post-LN blocks end in LN₂)."""
        return self.norm == "pre"

    @property
    def n_positions(self) -> int:
        """Rows of the position table: n_cls + m patches, or n_cls + max_len tokens."""
        return self.n_cls + (self.n_patches if self.front == "vision" else self.max_len)

    @property
    def n_params(self) -> int:
        """Numbers in the backbone φ, in closed form:

            embed   vision d·patch_dim + d (patch W, b) | text vocab·d;  + n_cls·d (x₀) + n_positions·d
                    + type_vocab·d (W_type) + 2d (LN_emb, if embed_ln)
            block   2·2d (LN₁, LN₂) + 4(d² + d) (attention) + 2·d·d_ff + d_ff + d (MLP)
            ln_f 2d (pre-LN),  pooler d² + d (pool="pooler"),  head n_classes·d + n_classes
        """
        d = self.d
        embed = (d * self.patch_dim + d if self.front == "vision" else self.vocab * d) + self.n_cls * d
        embed += self.n_positions * d + self.type_vocab * d + (2 * d if self.embed_ln else 0)
        blk = 4 * d + 4 * (d * d + d) + 2 * d * self.d_ff + self.d_ff + d
        top = (2 * d if self.has_ln_f else 0) + (d * d + d if self.pool == "pooler" else 0)
        return embed + self.N * blk + top + self.n_classes * d + self.n_classes

    def to_dict(self) -> dict:
        """JSON-ready dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        """Inverse of ``to_dict``; unknown keys are a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f"unknown Config fields {extra}; allowed: {sorted(known)}")
        return cls(**data)

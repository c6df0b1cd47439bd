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
NORMS = ("pre", "post", "rms")  # pre-LN (GPT-2, ViT) | post-LN (BERT) | pre-RMSNorm (Llama)
ACTS = ("gelu_tanh", "gelu_erf", "swiglu")  # GELU's tanh form | the exact erf form (BERT) | SwiGLU (Llama)
CLS_MODES = ("learned", "ids", "no_cls")  # a learned x₀ prepended | the tokenizer's [CLS] id is row 0 (BERT)
#                                         | no CLS row: prompts go before row 0 (a decoder, Llama)
POOLS = ("cls", "mean", "pooler", "last")  # row 0 | mean of the real tokens | tanh(W_p x₀ + b_p) (BERT's
#                                            pooler) | the last real token (a causal decoder)
POSITIONS = ("learned", "rope")  # a learned table added to the embeddings | rotary, in attention (Llama)
HEADS = ("classes", "tied_lm")
#: the fields the decoder forks added; ``to_dict`` writes them only when not at their default
DECODER_FIELDS = ("n_kv", "pos", "rope_base", "causal", "bias", "head")  # a new linear head W (n_classes, d) + b | logits x W_tokᵀ (tied LM head)


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
                 input tokens; "pooler" BERT's tanh(x₀ W_pᵀ + b_p); "last" the last real token.

    The decoder forks (Llama / SmolLM2 sets all of them, see ``llama_config``; equations.md,
    "Real architectures"):
      norm       "rms": pre-norm with RMSNorm(x) = g ⊙ x / sqrt(mean(x²) + ε) (gain only),
                 X' = X + MSA(RMSNorm₁(X)), then RMSNorm_f before the head.
      act        "swiglu": MLP(x) = (SiLU(x W_gᵀ) ⊙ x W_1ᵀ) W_2ᵀ (gate W_g, up W_1, down W_2).
      n_kv       key/value heads of grouped-query attention (W_k, W_v are (n_kv·d_h, d));
                 0 = h (multi-head attention).
      pos        "learned": a position table added in ``embed``; "rope": rotary embeddings
                 turn Q and K in every block (base ``rope_base``), no table; max_len is then
                 the context length.
      causal     query t sees keys s ≤ t only (plus every prefix key).
      bias       False: no linear has a bias (and BitFit has nothing to train).
      cls        "no_cls" (text only): no CLS row; prompt rows go before row 0.
      head       "classes": a new head W (n_classes, d), b; "tied_lm": logits = x W_tokᵀ, the
                 token table read back (no head parameters; n_classes must equal vocab).
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
    n_kv: int = 0
    pos: str = "learned"
    rope_base: float = 10000.0
    causal: bool = False
    bias: bool = True
    head: str = "classes"

    def __post_init__(self):
        for f in ("d", "h", "N", "d_ff", "n_classes"):
            self._size(f)
        one_of("front", self.front, FRONTS)
        if self.d % self.h:
            raise ValueError(f"d must be divisible by h (heads): d={self.d}, h={self.h}")
        finite_number("eps", self.eps, positive=True, allowed="a finite number in (0, 1] (LayerNorm's ε)")
        if self.eps > 1:
            raise ValueError(f"eps must be a finite number in (0, 1] (LayerNorm's ε), got {self.eps!r}")
        for f, allowed in (("norm", NORMS), ("act", ACTS), ("cls", CLS_MODES), ("pool", POOLS),
                           ("pos", POSITIONS), ("head", HEADS)):
            one_of(f, getattr(self, f), allowed)
        boolean("embed_ln", self.embed_ln)
        self._check_decoder()
        int_at_least("type_vocab", self.type_vocab, 0, maximum=MAXIMA["type_vocab"], type_error=True)
        if self.front == "vision" and (self.cls != "learned" or self.type_vocab or self.head == "tied_lm"):
            raise ValueError(f"cls='ids'/'none', type_vocab > 0 and head='tied_lm' need front='text' (token ids), "
                             f"got front='vision', head={self.head!r}, "
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

    def _check_decoder(self):
        """The decoder forks (n_kv, pos, rope_base, causal, bias, head): ValueError naming the field."""
        boolean("causal", self.causal)
        boolean("bias", self.bias)
        int_at_least("n_kv", self.n_kv, 0, maximum=MAXIMA["h"], type_error=True,
                     allowed="0 (= h) or a positive int dividing h")
        if self.n_kv and self.h % self.n_kv:
            raise ValueError(f"n_kv must divide h (each key/value head serves h / n_kv query heads): "
                             f"h={self.h}, n_kv={self.n_kv}")
        finite_number("rope_base", self.rope_base, positive=True, allowed="a finite number > 1 (RoPE's base)")
        if self.rope_base <= 1:
            raise ValueError(f"rope_base must be a finite number > 1 (RoPE's base), got {self.rope_base!r}")
        if self.pos == "rope" and (self.d // self.h) % 2:
            raise ValueError(f"pos='rope' turns pairs of a head's dimensions: d_h = d / h must be even, "
                             f"got d={self.d}, h={self.h}")
        if self.head == "tied_lm" and self.n_classes != self.vocab:
            raise ValueError(f"n_classes must equal vocab with head='tied_lm' (the logits are x W_tokᵀ, one per "
                             f"token), got n_classes={self.n_classes}, vocab={self.vocab}")

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
    def kv_heads(self) -> int:
        """Key/value heads: n_kv, or h when n_kv = 0."""
        return self.n_kv or self.h

    @property
    def d_kv(self) -> int:
        """Width of K and V: kv_heads · d_h (= d without grouped-query attention)."""
        return self.kv_heads * self.d_h

    @property
    def n_cls(self) -> int:
        """Rows the model prepends to the input: 1 (a learned x₀) or 0 ([CLS] is in the ids)."""
        return 1 if self.cls == "learned" else 0

    @property
    def has_ln_f(self) -> bool:
        """Whether there is a final LayerNorm LN_f (pre-LN only: post-LN blocks end in LN₂)."""
        return self.norm != "post"

    @property
    def n_positions(self) -> int:
        """Rows of the position table: n_cls + m patches, or n_cls + max_len tokens (0 with pos='rope')."""
        if self.pos == "rope":
            return 0
        return self.n_cls + (self.n_patches if self.front == "vision" else self.max_len)

    @property
    def n_params(self) -> int:
        """Numbers in the backbone φ, in closed form:

            embed   vision d·patch_dim + d (patch W, b) | text vocab·d;  + n_cls·d (x₀) + n_positions·d
                    + type_vocab·d (W_type) + 2d (LN_emb, if embed_ln)
            block   2·2d (LN₁, LN₂; 2·d for RMSNorm's g only) + 2(d² + d) + 2(d·d_kv + d_kv)
                    (attention: W_q, W_o d×d; W_k, W_v d_kv×d) + 2·d·d_ff + d_ff + d (MLP;
                    SwiGLU adds W_g, d·d_ff + d_ff); without biases (bias=False) every "+ width"
                    of a linear is 0
            ln_f 2d (pre-LN; d for RMSNorm),  pooler d² + d (pool="pooler"),
            head n_classes·d + n_classes (0 with head="tied_lm": it reads W_tok)
        """
        d, dkv, dff, b = self.d, self.d_kv, self.d_ff, int(self.bias)
        embed = (d * self.patch_dim + d if self.front == "vision" else self.vocab * d) + self.n_cls * d
        embed += self.n_positions * d + self.type_vocab * d + (2 * d if self.embed_ln else 0)
        norm = d if self.norm == "rms" else 2 * d
        n_mlp = 3 if self.act == "swiglu" else 2  # W_g (SwiGLU), W_1, W_2
        blk = 2 * norm + 2 * (d * d + b * d) + 2 * (d * dkv + b * dkv)
        blk += n_mlp * d * dff + b * ((n_mlp - 1) * dff + d)
        top = (norm if self.has_ln_f else 0) + (d * d + d if self.pool == "pooler" else 0)
        head = 0 if self.head == "tied_lm" else self.n_classes * d + self.n_classes
        return embed + self.N * blk + top + head

    def to_dict(self) -> dict:
        """JSON-ready dict of the fields; the decoder fields (``DECODER_FIELDS``) only where they
        differ from their defaults, so a config written before they existed (an adapter's
        record, the pretrained cache's key) reads and hashes the same."""
        out = dataclasses.asdict(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in DECODER_FIELDS}
        return {k: v for k, v in out.items() if k not in defaults or v != defaults[k]}

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        """Inverse of ``to_dict``; unknown keys are a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f"unknown Config fields {extra}; allowed: {sorted(known)}")
        return cls(**data)

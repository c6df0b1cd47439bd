"""The backbone's configuration: a frozen, validated dataclass (equations.md, "Conventions")."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..validate import finite_number, int_at_least, one_of

FRONTS = ("vision", "text")
#: upper bounds of the size fields (a config is a promise to allocate): widths, depth, classes, …
MAXIMA = {"d": 65536, "h": 4096, "N": 1024, "d_ff": 262144, "n_classes": 65536, "image_size": 4096,
          "patch": 4096, "channels": 64, "vocab": 1 << 24, "max_len": 65536}
#: the largest backbone (numbers in φ) a config may describe: 2²⁸ (1 GiB in float32)
MAX_PARAMS = 1 << 28


@dataclass(frozen=True)
class Config:
    """Sizes of a pre-LN transformer classifier. No dropout: the forward is deterministic.

    d: model width; h: heads (d_h = d / h); N: layers; d_ff: MLP width; n_classes: head
    outputs; eps: LayerNorm ε. front: "vision" (image_size × image_size images with
    ``channels`` channels cut into patch × patch patches, m = (image_size / patch)²) or
    "text" (token ids < vocab, at most max_len of them). Either way a CLS token is
    prepended, so the sequence has n_tokens = 1 + m (or 1 + length) rows.
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

    def __post_init__(self):
        for f in ("d", "h", "N", "d_ff", "n_classes"):
            self._size(f)
        one_of("front", self.front, FRONTS)
        if self.d % self.h:
            raise ValueError(f"d must be divisible by h (heads): d={self.d}, h={self.h}")
        finite_number("eps", self.eps, positive=True, allowed="a finite number in (0, 1] (LayerNorm's ε)")
        if self.eps > 1:
            raise ValueError(f"eps must be a finite number in (0, 1] (LayerNorm's ε), got {self.eps!r}")
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
    def n_positions(self) -> int:
        """Rows of the position table: 1 (CLS) + m patches, or 1 + max_len tokens."""
        return 1 + (self.n_patches if self.front == "vision" else self.max_len)

    @property
    def n_params(self) -> int:
        """Numbers in the backbone φ, in closed form:

            embed   vision d·patch_dim + d (patch W, b) | text vocab·d;  + d (CLS) + n_positions·d
            block   2·2d (LN₁, LN₂) + 4(d² + d) (attention) + 2·d·d_ff + d_ff + d (MLP)
            ln_f 2d,  head n_classes·d + n_classes
        """
        d = self.d
        embed = (d * self.patch_dim + d if self.front == "vision" else self.vocab * d) + d + self.n_positions * d
        blk = 4 * d + 4 * (d * d + d) + 2 * d * self.d_ff + self.d_ff + d
        return embed + self.N * blk + 2 * d + self.n_classes * d + self.n_classes

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

"""The backbone's configuration: a frozen, validated dataclass (equations.md, "Conventions")."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..validate import finite_number, int_at_least, one_of

FRONTS = ("vision", "text")


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
            int_at_least(f, getattr(self, f), 1, type_error=True)
        one_of("front", self.front, FRONTS)
        if self.d % self.h:
            raise ValueError(f"d must be divisible by h (heads): d={self.d}, h={self.h}")
        finite_number("eps", self.eps, positive=True)
        if self.front == "vision":
            for f in ("image_size", "patch", "channels"):
                int_at_least(f, getattr(self, f), 1, type_error=True)
            if self.image_size % self.patch:
                raise ValueError(
                    f"image_size must be a multiple of patch: image_size={self.image_size}, patch={self.patch}")
        else:
            for f in ("vocab", "max_len"):
                int_at_least(f, getattr(self, f), 1, type_error=True)

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

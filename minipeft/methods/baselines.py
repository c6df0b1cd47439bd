"""The two baselines every PEFT method is compared with.

Linear probe: θ = the head (W, b) only: C·d + C numbers.
Full fine-tuning: θ = every leaf of φ.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Method


@dataclass(frozen=True)
class LinearProbe(Method):
    """Train only the head: y = CLS Wᵀ + b with the backbone frozen. n = C·d + C."""

    name: str = "linear_probe"
    not_mergeable_because = "it adds nothing to merge: the trained head is already part of the backbone tree"
    #: the rate the tour trains the probe at (only the head trains: a larger step than full fine-tuning's)
    suggested_lr = 1e-2

    def trains_backbone(self, path) -> bool:
        """The head is the linear probe: it trains even with train_head=False."""
        return path[0] == "head"

    def n_params(self, cfg) -> int:
        """C·d + C: the head's W (C, d) and b (C,)."""
        return cfg.n_classes * cfg.d + cfg.n_classes


@dataclass(frozen=True)
class FullFineTune(Method):
    """Train everything: θ = φ. n = every number of the backbone."""

    name: str = "full"
    not_mergeable_because = "it adds nothing to merge: the trained weights are the backbone"
    #: the rate the tour trains every weight at (Adam's usual 10⁻³)
    suggested_lr = 1e-3

    def trains_backbone(self, path) -> bool:
        """Every backbone leaf trains."""
        return True

    def n_params(self, cfg) -> int:
        """Every number of φ: ``cfg.n_params`` (its closed form, head included)."""
        return cfg.n_params

"""LoRA (equations.md, "LoRA"; Hu et al. 2021): a low-rank update of frozen projections.

For a frozen W₀ ∈ R^{d×k} (d = d_out, k = d_in):

    ΔW = B A,   B ∈ R^{d×r},  A ∈ R^{r×k},  r ≤ min(d, k)
    h = x W₀ᵀ + b + (α/r) (x Aᵀ) Bᵀ                  (row form, the "linear" seam)

Trainable: r(d + k) per adapted matrix. Merge: W = W₀ + (α/r) B A (same architecture and
cost); unmerge: W₀ = W − (α/r) B A.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as onp

from ..merge import LINEARS, check_choice, check_unmerge, linear_shape, take_theta, without
from ..nn import linear
from .. import tree
from ..validate import MAX_SCALE, layer_indices, scale, width
from .base import Method


@dataclass(frozen=True)
class LoRA(Method):
    """h = x W₀ᵀ + b + (α/r)(x Aᵀ)Bᵀ on each target projection of each chosen layer ("LoRA").

    θ = {"blocks": [{target: {"A": (r, k), "B": (d, r)}, …} per layer]} ({} where a layer
    is not adapted). Init: B = 0, A ~ N(0, 1/k) (the notes' "A Gaussian"; the official
    code uses Kaiming-uniform U(±1/√k), variance 1/(3k): same role, ΔW = 0 at step 0).
    n = Σ over adapted (layer, target) of r(d + k).
    """

    name: str = "lora"
    r: int = field(default=4, metadata={"help": "rank r of ΔW = B A, 1 ≤ r ≤ min(d, k) of every target"})
    alpha: Optional[float] = field(default=None, metadata={
        "help": "scaling numerator: ΔW is scaled by α/r; default α = r (scale 1, the notes' plain BA)",
        "type": float})
    targets: tuple = field(default=("q", "v"), metadata={
        "help": f"projections to adapt, among {tuple(LINEARS)} (the paper: q v)"})
    layers: Optional[tuple] = field(default=None, metadata={
        "help": "layer indices (0-based) to adapt; default: all", "nargs": "+", "item_type": int})

    #: the best validation accuracy among 3e-3, 1e-2, 3e-2 (digits, 10 epochs; benchmarks/reparam_table.py)
    suggested_lr = 1e-2

    def __post_init__(self):
        width("r", self.r)  # and r ≤ min(d, k): check_cfg
        scale("alpha", self.alpha, positive=True, optional=True,
              allowed=f"a positive number ≤ {MAX_SCALE:g} or None (α = r)")
        object.__setattr__(self, "targets", check_choice("targets", self.targets, tuple(LINEARS)))
        object.__setattr__(self, "layers", layer_indices(
            "layers", self.layers, allowed_sequence="None (all) or a non-empty tuple of layer indices"))

    @property
    def scaling(self) -> float:
        """α/r as a Python float (joins float32 without upcasting)."""
        return float(self.alpha if self.alpha is not None else self.r) / self.r

    def adapted_layers(self, n_layers: int) -> tuple:
        """The layer indices this LoRA adapts."""
        return tuple(range(n_layers)) if self.layers is None else tuple(sorted(self.layers))

    def check_cfg(self, cfg) -> None:
        """ValueError when a layer index is ≥ N or r > min(d, k) for some target."""
        if self.layers is not None and max(self.layers) >= cfg.N:
            raise ValueError(f"layers must be < N = {cfg.N} (0-based), got {self.layers}")
        for t in self.targets:
            d, k = linear_shape(cfg, t)
            if self.r > min(d, k):
                raise ValueError(f"r must be ≤ min(d, k) = {min(d, k)} for target {t!r} "
                                 f"({LINEARS[t][1]} is {d}×{k}), got r = {self.r}")

    def init(self, cfg, params, rng) -> dict:
        """θ: A ~ N(0, 1/k) (r, k), B = 0 (d, r) for each adapted (layer, target)."""
        self.check_cfg(cfg)
        dtype = params["embed"]["pos"].dtype
        adapted = set(self.adapted_layers(cfg.N))
        blocks = []
        for ell in range(cfg.N):
            entry = {}
            if ell in adapted:
                for t in self.targets:
                    d, k = linear_shape(cfg, t)
                    entry[t] = {"A": (rng.standard_normal((self.r, k)) * k ** -0.5).astype(dtype),
                                "B": onp.zeros((d, self.r), dtype=dtype)}
            blocks.append(entry)
        return {"blocks": blocks}

    def on_linear(self, theta, y, x, layer, name, cfg):
        """y + (α/r)(x Aᵀ)Bᵀ.  x (B, T, k) -> (B, T, r) -> (B, T, d), added to y (B, T, d)."""
        if name not in self.targets or (self.layers is not None and layer not in self.layers):
            return y
        ab = theta["blocks"][layer][name]
        return y + self.scaling * linear(linear(x, ab["A"]), ab["B"])

    def hook_points(self, n_layers: int) -> set:
        """Reads the input and adds to the output of each adapted projection."""
        return {(kind, ell, t) for kind in ("linear", "linear_in")
                for ell in self.adapted_layers(n_layers) for t in self.targets}

    def n_params(self, cfg) -> int:
        """Σ over adapted (layer, target) of r(d + k)."""
        self.check_cfg(cfg)
        per_layer = sum(self.r * sum(linear_shape(cfg, t)) for t in self.targets)
        return len(self.adapted_layers(cfg.N)) * per_layer

    def _delta(self, ab):
        """ΔW = (α/r) B A.  (d, r) @ (r, k) -> (d, k)."""
        return self.scaling * (ab["B"] @ ab["A"])

    def _shift(self, params, theta, sign: float) -> dict:
        """W ← W + sign·(α/r) B A for each adapted projection (a new tree; arrays not mutated)."""
        out = params
        for ell in self.adapted_layers(len(params["blocks"])):
            for t in self.targets:
                mod, W, _ = LINEARS[t]
                path = ("blocks", ell, mod, W)
                out = tree.replace(out, path, tree.get(out, path) + sign * self._delta(theta["blocks"][ell][t]))
        return out

    def merge(self, params) -> dict:
        """W = W₀ + (α/r) B A for each adapted projection; params[name] removed."""
        theta = take_theta(params, self)
        return self._shift(without(params, self.name), theta, 1.0)

    def unmerge(self, params, theta) -> dict:
        """W₀ = W − (α/r) B A for each adapted projection; θ put back at params[name]."""
        check_unmerge(params, self)
        return {**self._shift(params, theta, -1.0), self.name: theta}

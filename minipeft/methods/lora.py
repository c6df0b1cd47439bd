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

from .. import tree
from ..nn import linear  # noqa: F401  (the composed form, linear(linear(x, A), B), is an answer too)
from ..nn.lowrank import low_rank_add
from ..transformer.schema import LINEARS, check_linears, linear_path, linear_shape
from ..validate import MAX_SCALE, scale, some_of, width
from .base import Method, adapted_layers, layers_option, per_layer


@dataclass(frozen=True)
class LoRA(Method):
    """h = x W₀ᵀ + b + (α/r)(x Aᵀ)Bᵀ on each target projection of each chosen layer ("LoRA").

    θ = {"blocks": [{target: {"A": (r, k), "B": (d, r)}, …} per layer]} ({} where a layer
    is not adapted: the one per-layer layout, ``base.per_layer``). Init: B = 0, A ~ N(0, 1/k)
    (the notes' "A Gaussian"; the official code uses Kaiming-uniform U(±1/√k), variance 1/(3k): same role, ΔW = 0 at step 0).
    n = Σ over adapted (layer, target) of r(d + k).
    """

    name: str = "lora"
    r: int = field(default=4, metadata={"help": "rank r of ΔW = B A, 1 ≤ r ≤ min(d, k) of every target"})
    alpha: Optional[float] = field(default=None, metadata={
        "help": "scaling numerator: ΔW is scaled by α/r; default α = r (scale 1, the notes' plain BA)",
        "type": float})
    targets: tuple = field(default=("q", "v"), metadata={
        "help": f"projections to adapt, among {tuple(LINEARS)} (the paper: q v; gate: SwiGLU models only)"})
    layers: Optional[tuple] = field(default=None, metadata={
        "help": "layer indices (0-based) to adapt, stored sorted; default: all", "nargs": "+", "item_type": int})

    #: the best validation accuracy among 3e-3, 1e-2, 3e-2 (digits, 10 epochs; benchmarks/reparam_table.py)
    suggested_lr = 1e-2

    def check_options(self):
        """Validate and normalise the options (called by ``Method.__post_init__``)."""
        width("r", self.r)  # and r ≤ min(d, k): check_cfg
        scale("alpha", self.alpha, positive=True, optional=True,
              allowed=f"a positive number ≤ {MAX_SCALE:g} or None (α = r)")
        object.__setattr__(self, "targets", some_of("targets", self.targets, LINEARS))
        object.__setattr__(self, "layers", layers_option(self.layers))

    @property
    def scaling(self) -> float:
        """α/r as a Python float (joins float32 without upcasting)."""
        return float(self.alpha if self.alpha is not None else self.r) / self.r

    def check_cfg(self, cfg) -> None:
        """ValueError when a layer index is ≥ N, a target is not in the backbone (gate needs
        act='swiglu') or r > min(d, k) for some target."""
        adapted_layers(self.layers, cfg.N)
        check_linears(cfg, "targets", self.targets)
        for t in self.targets:
            d, k = linear_shape(cfg, t)
            if self.r > min(d, k):
                raise ValueError(f"r must be ≤ min(d, k) = {min(d, k)} for target {t!r} "
                                 f"({LINEARS[t][1]} is {d}×{k}), got r = {self.r}")

    def init(self, cfg, params, rng) -> dict:
        """θ: A ~ N(0, 1/k) (r, k), B = 0 (d, r) for each adapted (layer, target)."""
        self.check_cfg(cfg)

        def layer(ell):
            out = {}
            for t in self.targets:
                d, k = linear_shape(cfg, t)
                out[t] = {"A": rng.standard_normal((self.r, k)) * k ** -0.5, "B": onp.zeros((d, self.r))}
            return out

        return per_layer(cfg.N, self.layers, layer)

    def on_linear(self, theta, y, x, layer, name, cfg):
        """y + (α/r)(x Aᵀ)Bᵀ.  x (B, T, k) -> (B, T, r) -> (B, T, d), added to y (B, T, d).

        One graph node, ``nn.lowrank.low_rank_add``: bit for bit its composed twin
        ``y + (α/r) · linear(linear(x, A), B)``, without that form's three temporaries of y's
        size (either form is a correct answer to the exercise)."""
        # exercise lora-forward [2 pts] "LoRA": h = y + (α/r)(x Aᵀ)Bᵀ on the targets of the adapted layers, else y
        if name not in self.targets or (self.layers is not None and layer not in self.layers):
            return y
        ab = theta["blocks"][layer][name]
        return low_rank_add(y, x, ab["A"], ab["B"], self.scaling)  # y + (α/r)(x Aᵀ)Bᵀ, one node
        # end exercise

    def hook_points(self, n_layers: int) -> set:
        """Reads the input and adds to the output of each adapted projection."""
        return {(kind, ell, t) for kind in ("linear", "linear_in")
                for ell in adapted_layers(self.layers, n_layers) for t in self.targets}

    def n_params(self, cfg) -> int:
        """Σ over adapted (layer, target) of r(d + k)."""
        self.check_cfg(cfg)
        per_block = sum(self.r * sum(linear_shape(cfg, t)) for t in self.targets)
        return len(adapted_layers(self.layers, cfg.N)) * per_block

    def delta_weight(self, ab):
        """ΔW = (α/r) B A of one adapted projection, ab = θ["blocks"][ℓ][target] = {"A", "B"}.
        (d, r) @ (r, k) -> (d, k): what ``merge`` adds to W₀."""
        # exercise lora-merge [2 pts] "LoRA": ΔW = (α/r) B A, (d, r) @ (r, k) -> (d, k), so that W = W₀ + ΔW
        return self.scaling * (ab["B"] @ ab["A"])
        # end exercise

    def _shift(self, params, theta, sign: float) -> dict:
        """W ← W + sign·(α/r) B A for each adapted projection (a new tree; arrays not mutated)."""
        out = params
        for ell in adapted_layers(self.layers, len(params["blocks"])):
            for t in self.targets:
                path = linear_path(ell, t) + (LINEARS[t][1],)
                out = tree.replace(out, path, tree.get(out, path) + sign * self.delta_weight(theta["blocks"][ell][t]))
        return out

    def merge(self, params) -> dict:
        """W = W₀ + (α/r) B A for each adapted projection; params[name] removed."""
        theta = self.theta_of(params)
        return self._shift(tree.without(params, self.name), theta, 1.0)

    def unmerge(self, params, theta) -> dict:
        """W₀ = W − (α/r) B A for each adapted projection; θ put back at params[name]."""
        self.check_merged(params)
        return {**self._shift(params, theta, -1.0), self.name: theta}

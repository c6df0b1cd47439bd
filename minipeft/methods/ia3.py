"""(IA)³ (equations.md, "(IA)³"; Liu et al. 2022): learned vectors rescale activations.

    Attn = softmax((l_q ⊙ Q)(l_k ⊙ K)ᵀ / sqrt(d_h)) (l_v ⊙ V)
    MLP(x) = (l_ff ⊙ GELU(x W₁ᵀ + b₁)) W₂ᵀ + b₂

variant "notes": l_q, l_k, l_v ∈ R^d (n = 3dN); variant "paper": l_k, l_v ∈ R^d and
l_ff ∈ R^{d_ff} (n = (2d + d_ff)N). All init to ones: step 0 is the original model.
Merge: l ⊙ (x Wᵀ + b) = x (diag(l) W)ᵀ + l ⊙ b folds l_q, l_k, l_v into their projections'
rows and biases; (l_ff ⊙ H) W₂ᵀ = H (W₂ diag(l_ff))ᵀ folds l_ff into W₂'s columns.
Unmerge divides by l (defined when no entry of l is 0).

On a Llama (SwiGLU, GQA): l_k, l_v ∈ R^{d_kv} scale K and V before RoPE (the rotation is
linear and acts on each head's pairs, so diag(l_k) folds into W_k's rows exactly as here);
l_ff scales the SwiGLU product H = SiLU(x W_gᵀ) ⊙ x W_1ᵀ, the input of W_2 (down) — the
paper's position, the input of the MLP's second linear — and folds into W_2's columns.
A bias-free model keeps no bias after the fold.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as onp

from .. import tree
from ..merge import fold_in, fold_out, unfold_in, unfold_out
from ..transformer.schema import LINEARS, linear_path, linear_width
from ..validate import nonzero, one_of
from .base import Method, per_layer

VARIANTS = {"notes": ("q", "k", "v"), "paper": ("k", "v")}


@dataclass(frozen=True)
class IA3(Method):
    """l ⊙ Q, l ⊙ K, l ⊙ V (and l_ff ⊙ H in the paper variant) per layer ("(IA)³").

    θ = {"blocks": [{"l_q", "l_k", "l_v"} or {"l_k", "l_v", "l_ff"} per layer]}, ones at init
    (the per-layer layout of ``base.per_layer``, every layer adapted).
    """

    name: str = "ia3"
    variant: str = field(default="notes", metadata={
        "help": "notes: scale Q, K, V (l_q, l_k, l_v); paper: scale K, V and the MLP hidden (l_k, l_v, l_ff)",
        "choices": tuple(VARIANTS)})

    #: the best validation accuracy among 3e-3, 1e-2, 3e-2 (digits, 10 epochs; benchmarks/reparam_table.py)
    suggested_lr = 1e-2

    def check_options(self):
        """Validate and normalise the options (called by ``Method.__post_init__``)."""
        one_of("variant", self.variant, VARIANTS)

    @property
    def scaled(self) -> tuple:
        """Projections whose output is rescaled: (q, k, v) or (k, v)."""
        return VARIANTS[self.variant]

    @property
    def ff(self) -> bool:
        """Whether l_ff rescales the MLP hidden activation."""
        return self.variant == "paper"

    def init(self, cfg, params, rng) -> dict:
        """θ: every l a vector of ones, (d,) for l_q, l_k, l_v; (d_ff,) for l_ff."""
        widths = {"l_" + t: linear_width(cfg, t) for t in self.scaled}
        if self.ff:
            widths["l_ff"] = cfg.d_ff
        return per_layer(cfg.N, None, lambda ell: {k: onp.ones(w) for k, w in widths.items()})

    def on_linear(self, theta, y, x, layer, name, cfg):
        """l ⊙ y for y = Q, K or V.  (B, T, d) -> (B, T, d)."""
        # exercise ia3-forward [2 pts] "(IA)³": l_k ⊙ K, l_v ⊙ V (and l_q ⊙ Q), then l_ff ⊙ GELU(x W₁ᵀ + b₁)
        if name not in self.scaled:
            return y
        return theta["blocks"][layer]["l_" + name] * y
        # end exercise

    def on_ff_hidden(self, theta, H, layer, cfg):
        """l_ff ⊙ H (paper variant).  (B, T, d_ff) -> (B, T, d_ff)."""
        # exercise ia3-forward (continued)
        return theta["blocks"][layer]["l_ff"] * H if self.ff else H
        # end exercise

    def hook_points(self, n_layers: int) -> set:
        """The outputs of the scaled projections, and the MLP hidden activation (paper)."""
        pts = {("linear", ell, t) for ell in range(n_layers) for t in self.scaled}
        if self.ff:
            pts |= {("ff_hidden", ell, None) for ell in range(n_layers)}
        return pts

    def n_params(self, cfg) -> int:
        """notes: 3dN; paper: (2d + d_ff)N."""
        return cfg.N * (sum(linear_width(cfg, t) for t in self.scaled) + (cfg.d_ff if self.ff else 0))

    def _fold(self, params, theta, out_side, in_side) -> dict:
        """Apply ``out_side`` (fold_out or unfold_out) to W_q/W_k/W_v and their biases with
        l_q/l_k/l_v, and ``in_side`` (fold_in or unfold_in) to W₂ with l_ff; a new tree."""
        out = params
        for ell, th in enumerate(theta["blocks"]):
            for t in self.scaled:
                _, W, b = LINEARS[t]
                m, l = tree.get(out, linear_path(ell, t)), th["l_" + t]
                Wn, bn = out_side(m[W], m[b] if b in m else 0 * l, l)
                out = tree.replace(out, linear_path(ell, t), {**m, W: Wn, **({b: bn} if b in m else {})})
            if self.ff:
                m = tree.get(out, ("blocks", ell, "mlp"))
                out = tree.replace(out, ("blocks", ell, "mlp"), {**m, "W_2": in_side(m["W_2"], th["l_ff"])})
        return out

    def merge(self, params) -> dict:
        """W' = diag(l) W, b' = l ⊙ b for q/k/v; W₂' = W₂ diag(l_ff); params[name] removed."""
        theta = self.theta_of(params)
        return self._fold(tree.without(params, self.name), theta, fold_out, fold_in)

    def unmerge(self, params, theta) -> dict:
        """W = diag(l)⁻¹ W', b = b' / l; W₂ = W₂' diag(l_ff)⁻¹; θ put back at params[name]."""
        self.check_merged(params)
        for ell, th in enumerate(theta["blocks"]):
            for key in th:
                nonzero(f"{self.name}.blocks.{ell}.{key}", th[key])
        return {**self._fold(params, theta, unfold_out, unfold_in), self.name: theta}

"""Adapters: small bottleneck MLPs added to a frozen transformer (equations.md,
"Adapters: AdaptFormer" and "Adapters: serial").

Both use the same bottleneck, with d̂ ≪ d:

    bottleneck(x) = ReLU(x W_downᵀ + b_down) W_upᵀ + b_up     W_down ∈ R^{d̂×d}, W_up ∈ R^{d×d̂}
                                                             b_down ∈ R^{d̂},   b_up ∈ R^d
    trainable per adapter: 2·d·d̂ + d + d̂

- ``AdaptFormer`` (parallel): X_ℓ = X'_ℓ + MLP(LN₂(X'_ℓ)) + s · bottleneck(LN₂(X'_ℓ)).
- ``SerialAdapter``: A(h) = h + bottleneck(h), after the attention's output projection
  and after the MLP (Houlsby), or after the MLP only (Pfeiffer).

Neither merges into the weights: the ReLU makes the branch nonlinear in its input, so no
weight matrix W' with x W'ᵀ + b' equals it, and the adapter costs 2·d·d̂ extra
multiply-adds per token and adapter at inference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import autograd.numpy as np
import numpy as onp

from ..nn import linear
from ..validate import boolean, finite_number, int_at_least, one_of
from .base import Method, adapted_layers, layers_option, per_layer

INPUTS = ("normed", "residual")
PLACEMENTS = ("houlsby", "pfeiffer")

_NOT_MERGEABLE = ("its bottleneck ReLU(x W_downᵀ + b_down) W_upᵀ + b_up is nonlinear in x (the ReLU), so no "
                  "weight matrix W' with x W'ᵀ + b' equals it; the adapter stays a separate branch at inference "
                  "(2·d·d̂ extra multiply-adds per token per adapter)")


# ------------------------------------------------------------------- the bottleneck
def relu(x):
    """ReLU(x) = max(x, 0), as x ⊙ [x > 0]: the mask is a constant, so the VJP g ⊙ [x > 0]
    keeps x's dtype (autograd's ``maximum`` VJP would upcast float32).  (...) -> (...)."""
    return x * (x > 0)


def bottleneck(theta_a, x):
    """ReLU(x W_downᵀ + b_down) W_upᵀ + b_up (equations.md, "Adapters: AdaptFormer").

    theta_a: {"W_down" (d̂, d), "b_down" (d̂,), "W_up" (d, d̂), "b_up" (d,)};
    x: (B, T, d) -> (B, T, d).
    """
    z = relu(linear(x, theta_a["W_down"], theta_a["b_down"]))  # (B, T, d̂)
    return linear(z, theta_a["W_up"], theta_a["b_up"])  # (B, T, d)


def init_bottleneck(d, d_hat, sigma_down, sigma_up, rng) -> dict:
    """θ of one adapter: W_down ~ N(0, σ_down²), W_up ~ N(0, σ_up²), biases 0 (float64;
    ``attach`` casts to the backbone's dtype).

    Draws W_down then W_up as standard normals (always both, so the stream does not
    depend on σ) and scales them: W = σ·Z, and a σ of 0 gives exact zeros. Returns the
    dict ``bottleneck`` reads; 2·d·d̂ + d + d̂ numbers.
    """
    z_down = rng.standard_normal((d_hat, d))  # (d̂, d)
    z_up = rng.standard_normal((d, d_hat))  # (d, d̂)

    def scaled(z, sigma):
        return sigma * z if sigma else onp.zeros_like(z)

    return {"W_down": scaled(z_down, sigma_down), "b_down": onp.zeros(d_hat),
            "W_up": scaled(z_up, sigma_up), "b_up": onp.zeros(d)}


def per_adapter(d, d_hat) -> int:
    """Trainable numbers of one adapter, with biases: 2·d·d̂ + d + d̂."""
    return 2 * d * d_hat + d + d_hat


# ------------------------------------------------------------------------- checks
def _check_d_hat(d_hat):
    int_at_least("d_hat (the bottleneck width d̂)", d_hat, 1)


def _check_sigma(field_name, sigma, optional=False):
    finite_number(f"{field_name} (an init standard deviation)", sigma, non_negative=True, optional=optional,
                  allowed="a finite number ≥ 0" + (" or None" if optional else ""))


_LAYERS_META = {"help": "block indices (from 0) that get adapters, stored sorted; None = every block",
                "type": int, "item_type": int, "nargs": "+"}


# ------------------------------------------------------------------- AdaptFormer
@dataclass(frozen=True)
class AdaptFormer(Method):
    """AdaptFormer, the parallel adapter (equations.md, "Adapters: AdaptFormer").

    The MLP block becomes AdaptMLP, a frozen branch plus a trainable bottleneck that
    reads the same input, LN₂(X'_ℓ):

        X̃_ℓ = ReLU(LN₂(X'_ℓ) W_downᵀ + b_down) W_upᵀ + b_up     W_down (d̂, d), W_up (d, d̂)
        X_ℓ  = X'_ℓ + MLP(LN₂(X'_ℓ)) + s · X̃_ℓ

    Fills the ``mlp`` seam: value MLP(LN₂(X')) (B, T, d) -> MLP(LN₂(X')) + s·X̃ (B, T, d).
    ``input="residual"`` feeds the un-normalised X'_ℓ instead of LN₂(X'_ℓ): that is what
    the official code does (its AdaptMLP reads the block's residual stream, with the
    adapter's own LayerNorm off by default), while the paper's equation reads LN₂(X').

    Init: W_down ~ N(0, σ²) (σ default 1/√d, the fan-in scale; the official code draws
    it uniform in ±1/√d, std 1/√(3d)), and as in the official code W_up = 0 and
    b_down = b_up = 0, so X̃ = 0 and step 0 is the backbone exactly. Then
    ∂L/∂W_down = 0 at step 0 (it multiplies W_up = 0), as LoRA's A.

    s: s = 0 is the original model (and nothing trains: every gradient carries the
    factor s). The notes: s = 0.1 is the paper's best, s ≥ 1 trains unstably or worse;
    benchmarks/adapter_table.py measures s on the toy backbone (chapter 4 shows it). With
    ``learnable_s`` each adapter has its own s ∈ θ, initialised to ``s`` (the official
    code's "learnable_scalar" initialises it to 1); s = 0 with learnable s is a saddle:
    X̃ = 0 and s = 0 make both ∂L/∂s and ∂L/∂W_up zero, so it never moves.

    θ = {"blocks": [per block ℓ: {"W_down", "b_down", "W_up", "b_up"} (+ "s" of shape (1,)
    with learnable_s), {} where ℓ has no adapter]} (``base.per_layer``).
    Trainable: |layers| · (2·d·d̂ + d + d̂ [+ 1 with learnable_s]).
    """

    name: str = "adaptformer"
    d_hat: int = field(default=8, metadata={"help": "bottleneck width d̂ (W_down is d̂×d)"})
    s: float = field(default=0.1, metadata={"help": "scale s of the adapter branch (0 = the original model; "
                                                    "the paper's best is 0.1)"})
    learnable_s: bool = field(default=False, metadata={"help": "train s (one per adapter, initialised to --s)"})
    input: str = field(default="normed", metadata={
        "help": "what the adapter reads: normed = LN₂(X') as the paper's equation, residual = X' as the "
                "official code", "choices": INPUTS})
    layers: Optional[tuple] = field(default=None, metadata=_LAYERS_META)
    sigma: Optional[float] = field(default=None, metadata={
        "help": "std of W_down's N(0, σ²) init; None = 1/sqrt(d)", "type": float})

    not_mergeable_because = _NOT_MERGEABLE
    suggested_lr = 1e-2

    def check_options(self):
        """Validate and normalise the options (called by ``Method.__post_init__``)."""
        _check_d_hat(self.d_hat)
        finite_number("s (the adapter scale)", self.s)
        object.__setattr__(self, "learnable_s", boolean("learnable_s", self.learnable_s))
        one_of("input", self.input, INPUTS, hint=" (normed = LN₂(X'), residual = X')")
        object.__setattr__(self, "layers", layers_option(self.layers))
        _check_sigma("sigma", self.sigma, optional=True)

    def init(self, cfg, params, rng) -> dict:
        """θ: one bottleneck per adapted block, W_up = 0 (step 0 = the backbone)."""
        sigma = self.sigma if self.sigma is not None else 1.0 / math.sqrt(cfg.d)

        def adapter(ell):
            a = init_bottleneck(cfg.d, self.d_hat, sigma, 0.0, rng)
            if self.learnable_s:
                a["s"] = onp.full(1, self.s)  # (1,)
            return a

        return per_layer(cfg.N, self.layers, adapter)

    def on_mlp(self, theta, M, x_norm, x_resid, layer, cfg):
        """MLP(LN₂(X')) -> MLP(LN₂(X')) + s·X̃.  (B, T, d) -> (B, T, d)."""
        if self.layers is not None and layer not in self.layers:
            return M
        a = theta["blocks"][layer]
        Xt = bottleneck(a, x_norm if self.input == "normed" else x_resid)  # X̃_ℓ (B, T, d)
        s = a["s"] if self.learnable_s else float(self.s)
        return M + s * Xt

    def hook_points(self, n_layers: int) -> set:
        """Points of the forward pass it acts on, for ``merge.merge_methods``: none. The "mlp"
        seam runs after every point another method can fold into the weights (LN₂'s output,
        W₁, l_ff, W₂, "after mlp"), and a merge leaves the values it reads (LN₂(X'), X',
        MLP(LN₂(X'))) unchanged, so AdaptFormer never makes another method's merge inexact."""
        return set()

    def n_params(self, cfg) -> int:
        """|layers| · (2·d·d̂ + d + d̂ + [learnable_s])."""
        return len(adapted_layers(self.layers, cfg.N)) * (per_adapter(cfg.d, self.d_hat) + int(self.learnable_s))


# ---------------------------------------------------------------- serial adapters
@dataclass(frozen=True)
class SerialAdapter(Method):
    """Serial (sequential) adapters (equations.md, "Adapters: serial"; Houlsby et al. 2019).

        A(h) = h + ReLU(h W_downᵀ + b_down) W_upᵀ + b_up         h (B, T, d) -> (B, T, d)

    The adapter reads the output of the module before it and sits in the flow, before the
    residual add. Fills the ``after`` seam:
      placement="houlsby":  name "attn" (after W_o) and "mlp" (after W₂) of each block,
                            X'_ℓ = X_{ℓ-1} + A(MSA(LN₁(X_{ℓ-1}))),  X_ℓ = X'_ℓ + A(MLP(LN₂(X'_ℓ)));
      placement="pfeiffer": "mlp" only (one adapter per block).

    Near-identity init: W_down ~ N(0, σ²), W_up ~ N(0, σ_up²) (σ_up defaults to σ;
    Houlsby's code uses σ = 10⁻³ for both), biases 0. With zero biases the ReLU is
    positively homogeneous, so A(h) − h = σ·σ_up · (the same adapter at σ = σ_up = 1):
    the model starts O(σ·σ_up) from the backbone; σ_up = 0 starts exactly at it.
    ``train_layer_norm`` also unfreezes LN₁ and LN₂ (γ, β) of the adapted blocks, as
    Houlsby et al. do.

    θ = {"blocks": [per block: {"attn": adapter, "mlp": adapter} (houlsby) or {"mlp": adapter}
    (pfeiffer), {} where the block has no adapter]} (``base.per_layer``), adapter =
    {"W_down", "b_down", "W_up", "b_up"}.
    Trainable: |layers| · sites · (2·d·d̂ + d + d̂), sites = 2 (houlsby) or 1 (pfeiffer),
    plus |layers| · 4d with ``train_layer_norm``.
    """

    name: str = "serial_adapter"
    d_hat: int = field(default=8, metadata={"help": "bottleneck width d̂ (W_down is d̂×d)"})
    placement: str = field(default="houlsby", metadata={
        "help": "houlsby = after attention and after the MLP; pfeiffer = after the MLP only", "choices": PLACEMENTS})
    sigma: float = field(default=1e-3, metadata={"help": "std σ of the near-identity init W_down ~ N(0, σ²)"})
    sigma_up: Optional[float] = field(default=None, metadata={
        "help": "std of W_up's init; None = sigma; 0 = exactly the backbone at step 0", "type": float})
    layers: Optional[tuple] = field(default=None, metadata=_LAYERS_META)
    train_layer_norm: bool = field(default=False, metadata={
        "help": "also train LN₁/LN₂ γ, β of the adapted blocks (Houlsby et al.)"})

    not_mergeable_because = _NOT_MERGEABLE
    suggested_lr = 1e-2

    def check_options(self):
        """Validate and normalise the options (called by ``Method.__post_init__``)."""
        _check_d_hat(self.d_hat)
        one_of("placement", self.placement, PLACEMENTS,
               hint=" (houlsby = after attention and MLP, pfeiffer = after the MLP)")
        _check_sigma("sigma", self.sigma)
        _check_sigma("sigma_up", self.sigma_up, optional=True)
        object.__setattr__(self, "layers", layers_option(self.layers))
        object.__setattr__(self, "train_layer_norm", boolean("train_layer_norm", self.train_layer_norm))

    @property
    def sites(self) -> tuple:
        """The ``after`` names that get an adapter: ("attn", "mlp") or ("mlp",)."""
        return ("attn", "mlp") if self.placement == "houlsby" else ("mlp",)

    def init(self, cfg, params, rng) -> dict:
        """θ: one near-identity bottleneck per site of each adapted block."""
        sigma_up = self.sigma if self.sigma_up is None else self.sigma_up
        return per_layer(cfg.N, self.layers, lambda ell: {
            site: init_bottleneck(cfg.d, self.d_hat, self.sigma, sigma_up, rng) for site in self.sites})

    def on_after(self, theta, h, layer, name, cfg):
        """A(h) = h + bottleneck(h) at the adapted sites; identity elsewhere.  (B, T, d) -> (B, T, d)."""
        if name not in self.sites or layer is None:
            return h
        if self.layers is not None and layer not in self.layers:
            return h
        return h + bottleneck(theta["blocks"][layer][name], h)

    def hook_points(self, n_layers: int) -> set:
        """Points it acts on, for ``merge.merge_methods``: ("after", ℓ, site) per adapted block."""
        return {("after", ell, site) for ell in adapted_layers(self.layers, n_layers) for site in self.sites}

    def trains_backbone(self, path) -> bool:
        """With train_layer_norm: LN₁/LN₂ γ, β of the adapted blocks."""
        if not self.train_layer_norm or len(path) != 4 or path[0] != "blocks" or path[2] not in ("ln1", "ln2"):
            return False
        return self.layers is None or path[1] in self.layers

    def n_params(self, cfg) -> int:
        """|layers| · (sites · (2·d·d̂ + d + d̂) + [train_layer_norm] · 4d)."""
        per_block = len(self.sites) * per_adapter(cfg.d, self.d_hat) + (4 * cfg.d if self.train_layer_norm else 0)
        return len(adapted_layers(self.layers, cfg.N)) * per_block

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
from ..validate import layer_indices, scale, width
from .base import Method

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


def init_bottleneck(d, d_hat, sigma_down, sigma_up, dtype, rng) -> dict:
    """θ of one adapter: W_down ~ N(0, σ_down²), W_up ~ N(0, σ_up²), biases 0.

    Draws W_down then W_up as standard normals in float64 (always both, so the stream
    does not depend on σ), scales them, and casts to ``dtype``: W = σ·Z, and a σ of 0
    gives exact zeros. Returns the dict ``bottleneck`` reads; 2·d·d̂ + d + d̂ numbers.
    """
    z_down = rng.standard_normal((d_hat, d))  # (d̂, d)
    z_up = rng.standard_normal((d, d_hat))  # (d, d̂)

    def scaled(z, sigma):
        return (sigma * z if sigma else onp.zeros_like(z)).astype(dtype)

    return {"W_down": scaled(z_down, sigma_down), "b_down": onp.zeros(d_hat, dtype),
            "W_up": scaled(z_up, sigma_up), "b_up": onp.zeros(d, dtype)}


def per_adapter(d, d_hat) -> int:
    """Trainable numbers of one adapter, with biases: 2·d·d̂ + d + d̂."""
    return 2 * d * d_hat + d + d_hat


# ------------------------------------------------------------------------- checks
def _check_d_hat(d_hat):
    width("d_hat (the bottleneck width d̂)", d_hat)


def _check_sigma(field_name, sigma, optional=False):
    scale(f"{field_name} (an init standard deviation)", sigma, non_negative=True, optional=optional)


def _check_bool(field_name, v):
    if not isinstance(v, bool):
        raise ValueError(f"{field_name} must be True or False, got {v!r}")


def _normalize_layers(obj):
    """Validate ``obj.layers`` (None or distinct ints ≥ 0) and store it as a sorted tuple."""
    layers = layer_indices("layers", obj.layers,
                           allowed_sequence="None (every block) or a non-empty sequence of block indices",
                           allowed_items="None (every block) or distinct block indices ≥ 0 (layer counts from 0)")
    if layers is not None:
        object.__setattr__(obj, "layers", tuple(sorted(layers)))


def _adapted_layers(layers, cfg) -> tuple:
    """The block indices that get adapters: all of range(N) when ``layers`` is None."""
    if layers is None:
        return tuple(range(cfg.N))
    if max(layers) >= cfg.N:
        raise ValueError(f"layers must be block indices in 0..{cfg.N - 1} (the backbone has N={cfg.N} blocks), "
                         f"got {layers!r}")
    return layers


def _slot(layers, layer):
    """Position of block ``layer`` in θ's "layers" list, or None if it has no adapter."""
    if layers is None:
        return layer
    return layers.index(layer) if layer in layers else None


def _dtype(params):
    return params["embed"]["pos"].dtype


_LAYERS_META = {"help": "block indices (from 0) that get adapters; None = every block",
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
    factor s). The notes: s = 0.1 is the paper's best, s ≥ 1 trains unstably or worse; on
    the toy backbone (benchmarks/adapter_table.py, Adam, 10 epochs) that does not hold:
    s ∈ {0.1, 1, 4} tie at lr 10⁻², and at lr 10⁻³ accuracy grows with s. With
    ``learnable_s`` each adapter has its own s ∈ θ, initialised to ``s`` (the official
    code's "learnable_scalar" initialises it to 1); s = 0 with learnable s is a saddle:
    X̃ = 0 and s = 0 make both ∂L/∂s and ∂L/∂W_up zero, so it never moves.

    θ = {"layers": [per adapted block ℓ, in increasing order: {"W_down", "b_down",
    "W_up", "b_up"} (+ "s" of shape (1,) with learnable_s)]}.
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

    def __post_init__(self):
        _check_d_hat(self.d_hat)
        scale("s (the adapter scale)", self.s)
        _check_bool("learnable_s", self.learnable_s)
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS} (normed = LN₂(X'), residual = X'), got {self.input!r}")
        _normalize_layers(self)
        _check_sigma("sigma", self.sigma, optional=True)

    def init(self, cfg, params, rng) -> dict:
        """θ: one bottleneck per adapted block, W_up = 0 (step 0 = the backbone)."""
        sigma = self.sigma if self.sigma is not None else 1.0 / math.sqrt(cfg.d)
        out = []
        for _ in _adapted_layers(self.layers, cfg):
            a = init_bottleneck(cfg.d, self.d_hat, sigma, 0.0, _dtype(params), rng)
            if self.learnable_s:
                a["s"] = onp.full(1, self.s, _dtype(params))  # (1,)
            out.append(a)
        return {"layers": out}

    def on_mlp(self, theta, M, x_norm, x_resid, layer, cfg):
        """MLP(LN₂(X')) -> MLP(LN₂(X')) + s·X̃.  (B, T, d) -> (B, T, d)."""
        i = _slot(self.layers, layer)
        if i is None:
            return M
        a = theta["layers"][i]
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
        return len(_adapted_layers(self.layers, cfg)) * (per_adapter(cfg.d, self.d_hat) + int(self.learnable_s))


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

    θ = {"layers": [per adapted block, increasing: {"attn": adapter, "mlp": adapter}
    (houlsby) or {"mlp": adapter} (pfeiffer)]}, adapter = {"W_down","b_down","W_up","b_up"}.
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

    def __post_init__(self):
        _check_d_hat(self.d_hat)
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS} (houlsby = after attention and MLP, "
                             f"pfeiffer = after the MLP), got {self.placement!r}")
        _check_sigma("sigma", self.sigma)
        _check_sigma("sigma_up", self.sigma_up, optional=True)
        _normalize_layers(self)
        _check_bool("train_layer_norm", self.train_layer_norm)

    @property
    def sites(self) -> tuple:
        """The ``after`` names that get an adapter: ("attn", "mlp") or ("mlp",)."""
        return ("attn", "mlp") if self.placement == "houlsby" else ("mlp",)

    def init(self, cfg, params, rng) -> dict:
        """θ: one near-identity bottleneck per site of each adapted block."""
        sigma_up = self.sigma if self.sigma_up is None else self.sigma_up
        return {"layers": [{site: init_bottleneck(cfg.d, self.d_hat, self.sigma, sigma_up, _dtype(params), rng)
                            for site in self.sites}
                           for _ in _adapted_layers(self.layers, cfg)]}

    def on_after(self, theta, h, layer, name, cfg):
        """A(h) = h + bottleneck(h) at the adapted sites; identity elsewhere.  (B, T, d) -> (B, T, d)."""
        if name not in self.sites or layer is None:
            return h
        i = _slot(self.layers, layer)
        if i is None:
            return h
        return h + bottleneck(theta["layers"][i][name], h)

    def hook_points(self, n_layers: int) -> set:
        """Points it acts on, for ``merge.merge_methods``: ("after", ℓ, site) per adapted block."""
        layers = range(n_layers) if self.layers is None else self.layers
        return {("after", ell, site) for ell in layers for site in self.sites}

    def trains_backbone(self, path) -> bool:
        """With train_layer_norm: LN₁/LN₂ γ, β of the adapted blocks."""
        if not self.train_layer_norm or len(path) != 4 or path[0] != "blocks" or path[2] not in ("ln1", "ln2"):
            return False
        return self.layers is None or path[1] in self.layers

    def n_params(self, cfg) -> int:
        """|layers| · (sites · (2·d·d̂ + d + d̂) + [train_layer_norm] · 4d)."""
        per_block = len(self.sites) * per_adapter(cfg.d, self.d_hat) + (4 * cfg.d if self.train_layer_norm else 0)
        return len(_adapted_layers(self.layers, cfg)) * per_block

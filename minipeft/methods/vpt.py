"""Visual Prompt Tuning (equations.md, "VPT"; the notes' "Visual Prompt Tuning (VPT)").

Prompts P = {p^k ∈ R^d | 1 ≤ k ≤ p} sit between CLS and the patches.

VPT-Shallow: the prompts enter the first layer only; later layers carry their outputs Z:

    [x₁, Z₁, E₁] = L₁([x₀, P, E₀])
    [x_ℓ, Z_ℓ, E_ℓ] = L_ℓ([x_{ℓ-1}, Z_{ℓ-1}, E_{ℓ-1}])      ℓ = 2..N

VPT-Deep: a fresh, layer-specific set P_{ℓ-1} at the input of every layer; the layer's
prompt outputs are discarded and replaced, not accumulated:

    [x_ℓ, _, E_ℓ] = L_ℓ([x_{ℓ-1}, P_{ℓ-1}, E_{ℓ-1}])      ℓ = 1..N

Both: y = Head(LN_f(x_N)); trainable p·d (shallow) or N·p·d (deep) numbers, plus the
head when it trains. Prompts get no position embedding (as in VPT).

Init (the official VPT code): P ~ U[−v, v] with

    v = sqrt(6 / (3·patch_area + d))

Xavier-uniform with fan_in = the patch embedding's input size (3 colour channels × the
pixels of one patch) and fan_out = d. equations.md: for grey images the fan-in is
channels·patch_area; we use cfg.channels·patch² (= cfg.patch_dim), i.e. 1·16 for the
pretrained backbone's 4×4 grey patches: v = sqrt(6 / (16 + 64)) ≈ 0.27.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import autograd.numpy as np

from ..nn import prepend
from ..validate import shape
from .base import Method
from .layout import P_MAX, check_length, insert_after_cls


def vpt_bound(cfg) -> float:
    """v = sqrt(6 / (channels·patch² + d)), VPT's uniform init half-width (module docstring)."""
    return math.sqrt(6.0 / (cfg.patch_dim + cfg.d))


def _check_vision(cfg, who):
    if cfg.front != "vision":
        raise ValueError(f"{who} needs a vision model (front='vision'; its init uses the patch size), got "
                         f"front={cfg.front!r}; for a text model use PromptTuning (method 'prompt')")


@dataclass(frozen=True)
class VPTShallow(Method):
    """VPT-Shallow: [x₁, Z₁, E₁] = L₁([x₀, P, E₀]), later layers carry Z (module docstring).

    Fills the "tokens" seam: [x₀; E₀] (B, 1+m, d) -> [x₀; P; E₀] (B, 1+p+m, d).
    θ = {"P": (p, d)} ~ U[−v, v] (``vpt_bound``). Trainable p·d numbers (+ the head).
    """

    p: int = field(default=8, metadata={"help": f"number of prompts p, 1..{P_MAX}"})
    name: str = "vpt_shallow"

    #: the CLI's default lr (best validation accuracy of 3e-3..1e-1 on digits, 10 epochs, pretrained backbone)
    suggested_lr = 3e-2
    prompt_seam = "tokens"

    def check_options(self):
        """Validate and normalise the options (called by ``Method.__post_init__``)."""
        object.__setattr__(self, "p", check_length(self.p))

    def init(self, cfg, params, rng) -> dict:
        """θ = {"P": (p, d)}, P ~ U[−v, v], v = sqrt(6 / (channels·patch² + d))."""
        _check_vision(cfg, "VPTShallow")
        v = vpt_bound(cfg)
        return {"P": rng.uniform(-v, v, (self.p, cfg.d))}

    def on_tokens(self, theta, Z, cfg):
        """[x₀; E₀] (B, 1+m, d) -> [x₀; P; E₀] (B, 1+p+m, d)."""
        shape(f"{self.name}.P", theta["P"], (self.p, cfg.d), " (p, d)")
        return insert_after_cls(theta["P"], Z)

    def n_params(self, cfg) -> int:
        """p·d."""
        return self.p * cfg.d


@dataclass(frozen=True)
class VPTDeep(Method):
    """VPT-Deep: [x_ℓ, _, E_ℓ] = L_ℓ([x_{ℓ-1}, P_{ℓ-1}, E_{ℓ-1}]), ℓ = 1..N (module docstring).

    θ = {"P": (N, p, d)}: P[ℓ-1] is the set entering block ℓ, each ~ U[−v, v]. Trainable
    N·p·d numbers (+ the head). Fills the "layer_in" seam: before block 1 it inserts
    P[0] after CLS, (B, 1+n, d) -> (B, 1+p+n, d); before block ℓ ≥ 2 it replaces rows
    1..p (the prompt outputs of block ℓ-1, dropped) with P[ℓ-1], shape unchanged.
    Inserting at block 1's input rather than at the "tokens" seam puts P at rows 1..p
    whatever other prompt methods are active (see layout.token_rows); at most one
    VPT-Deep per model (the forward pass refuses a second).
    """

    p: int = field(default=8, metadata={"help": f"number of prompts per layer p, 1..{P_MAX}"})
    name: str = "vpt_deep"

    #: the CLI's default lr (best validation accuracy of 3e-3..1e-1 on digits, 10 epochs, pretrained backbone)
    suggested_lr = 1e-2
    prompt_seam = "layer_in"

    def check_options(self):
        """Validate and normalise the options (called by ``Method.__post_init__``)."""
        object.__setattr__(self, "p", check_length(self.p))

    def init(self, cfg, params, rng) -> dict:
        """θ = {"P": (N, p, d)}, every entry ~ U[−v, v], v = sqrt(6 / (channels·patch² + d))."""
        _check_vision(cfg, "VPTDeep")
        v = vpt_bound(cfg)
        return {"P": rng.uniform(-v, v, (cfg.N, self.p, cfg.d))}

    def on_layer_in(self, theta, X, layer, cfg):
        """X_{ℓ-1} -> [x_{ℓ-1}; P_{ℓ-1}; E_{ℓ-1}] for block ℓ = layer + 1.

        layer 0: (B, 1+n, d) -> (B, 1+p+n, d) (insert); layer ≥ 1: (B, 1+p+n, d), rows
        1..p replaced by P[layer].
        """
        P = theta["P"]
        shape(f"{self.name}.P", P, (cfg.N, self.p, cfg.d),
                    f" (N, p, d): a prompt set for each of the backbone's N={cfg.N} layers of width d={cfg.d}")
        if layer == 0:
            return insert_after_cls(P[0], X)
        rest = X[:, 1 + self.p:]  # E_{ℓ-1} (and any other prompts): (B, T-1-p, d); Z_{ℓ-1} is dropped
        return np.concatenate([X[:, :1], prepend(P[layer], rest)], axis=1)  # (B, T, d)

    def n_params(self, cfg) -> int:
        """N·p·d."""
        return cfg.N * self.p * cfg.d

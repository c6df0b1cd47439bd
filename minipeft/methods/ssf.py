"""SSF (equations.md, "SSF" and "Scale and shift"; Lian et al. 2022): scale and shift features.

    y = γ ⊙ x + β        after each chosen operation: the projections W_q, W_k, W_v, W_o,
                         W₁, W₂ ("linear" seam) and LN₁, LN₂, LN_f ("after" seam)

γ, β ∈ R^{width}: n = 2·Σ widths (d for q, k, v, o, mlp2 and the LNs; d_ff for mlp1),
per layer for the blocks' placements, once for ln_f (skipped on a post-LN model, which has
no LN_f; its LN₁ and LN₂ placements fold the same way wherever the LN sits). Init "official": γ ~ N(1, 0.02²),
β ~ N(0, 0.02²); "identity": γ = 1, β = 0 (step 0 is the original model).

Re-parameterisation (merge), exact, into the operation before each SSF:
    after a linear       W' = diag(γ) W,  b' = γ ⊙ b + β
    after a LayerNorm    γ'_LN = γ ⊙ γ_LN,  β'_LN = γ ⊙ β_LN + β
so the merged backbone has exactly the original architecture. Unmerge inverts both
(W = diag(γ)⁻¹ W', b = (b' − β)/γ; γ_LN = γ'_LN/γ, β_LN = (β'_LN − β)/γ), defined when no γ is 0.

On a Llama (equations.md, "Real architectures"). Placements may also name "gate" (W_g,
SwiGLU models only; not in the default, which keeps its meaning on every model). The
linears have no bias: the fold writes b' = β (the merged model gains biases, as
LlamaConfig's attention_bias / mlp_bias allow). After an RMSNorm g ⊙ x/rms(x), γ folds into
the gain, g' = γ ⊙ g, and β, which RMSNorm has no place for, folds into the linears that
read the norm's output as a bias, b' = b + W β: W_q, W_k, W_v after RMSNorm₁; W_g, W_1 after
RMSNorm₂; the tied head after RMSNorm_f (a logits bias head.b = W_tok β). So the merged
model keeps the architecture only up to those biases. Limit: that fold changes the input
other active methods read at those linears (LoRA on q reads x, not x + β): merge SSF
alone, or first, before attaching a method that reads a linear's input.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as onp

from .. import tree
from ..merge import unfold_out
from ..transformer.schema import LAYER_NORMS, LINEARS, check_linears, linear_path, linear_width, ln_path
from ..validate import MAX_SCALE, nonzero, one_of, scale, some_of
from .base import Method, per_layer

PLACEMENTS = tuple(n for n in LINEARS if n != "gate") + LAYER_NORMS  # the default: every model has these
ALLOWED = PLACEMENTS + ("gate",)  # SwiGLU's gate W_g (act="swiglu" only)
#: RMSNorm -> the linears reading its output, whose biases take its shift β (pre-norm)
_READERS = {"ln1": ("q", "k", "v"), "ln2": ("gate", "mlp1")}
INITS = ("official", "identity")


@dataclass(frozen=True)
class SSF(Method):
    """γ ⊙ x + β after each chosen projection and LayerNorm ("SSF").

    θ = {"blocks": [{placement: {"gamma", "beta"}} per layer], "ln_f": {"gamma", "beta"}}
    (the per-layer layout of ``base.per_layer``, every layer adapted; ln_f only when placed there).
    """

    name: str = "ssf"
    placements: tuple = field(default=PLACEMENTS, metadata={
        "help": f"where an SSF layer follows, among {ALLOWED} (gate: SwiGLU models only)"})
    init_mode: str = field(default="official", metadata={
        "help": "official: γ ~ N(1, 0.02²), β ~ N(0, 0.02²); identity: γ = 1, β = 0", "choices": INITS})
    init_std: float = field(default=0.02, metadata={"help": "std of the official init"})

    #: the best validation accuracy among 3e-3, 1e-2, 3e-2 (digits, 10 epochs; tied with 3e-3;
    #: benchmarks/reparam_table.py)
    suggested_lr = 1e-2

    def check_options(self):
        """Validate and normalise the options (called by ``Method.__post_init__``)."""
        object.__setattr__(self, "placements", some_of("placements", self.placements, ALLOWED))
        one_of("init_mode", self.init_mode, INITS)
        scale("init_std", self.init_std, non_negative=True, allowed=f"a finite non-negative number ≤ {MAX_SCALE:g}")

    def _width(self, cfg, p) -> int:
        return cfg.d if p in LAYER_NORMS else linear_width(cfg, p)

    def _pair(self, n, rng):
        """{"gamma", "beta"} of length n, by init_mode."""
        if self.init_mode == "identity":
            return {"gamma": onp.ones(n), "beta": onp.zeros(n)}
        s = float(self.init_std)
        return {"gamma": 1.0 + s * rng.standard_normal(n), "beta": s * rng.standard_normal(n)}

    def init(self, cfg, params, rng) -> dict:
        """θ: a (γ, β) pair of the operation's output width per placement and layer."""
        check_linears(cfg, "placements", self.placements)
        theta = per_layer(cfg.N, None, lambda ell: {p: self._pair(self._width(cfg, p), rng)
                                                    for p in self.placements if p != "ln_f"})
        if self._on_ln_f(cfg):
            theta["ln_f"] = self._pair(cfg.d, rng)
        return theta

    def _on_ln_f(self, cfg) -> bool:
        """"ln_f" placed and the model has an LN_f (a post-LN model, BERT, has none: its last
        block's LN₂, an "ln2" placement, is the final LayerNorm; "ln_f" is then skipped)."""
        return "ln_f" in self.placements and cfg.has_ln_f

    def on_linear(self, theta, y, x, layer, name, cfg):
        """γ ⊙ y + β after projection ``name``.  (B, T, d_out) -> same."""
        # exercise ssf-forward [2 pts] "SSF": y = γ ⊙ x + β after each placed projection, then after each LayerNorm
        if name not in self.placements:
            return y
        gb = theta["blocks"][layer][name]
        return gb["gamma"] * y + gb["beta"]
        # end exercise

    def on_after(self, theta, y, layer, name, cfg):
        """γ ⊙ y + β after LN₁, LN₂ (of block ``layer``) or LN_f.  (B, T, d) -> same."""
        # exercise ssf-forward (continued)
        if name not in LAYER_NORMS or name not in self.placements:
            return y
        gb = theta["ln_f"] if name == "ln_f" else theta["blocks"][layer][name]
        return gb["gamma"] * y + gb["beta"]
        # end exercise

    def hook_points(self, n_layers: int) -> set:
        """The output of each placed projection and LayerNorm."""
        pts = {("after", None, "ln_f")} if "ln_f" in self.placements else set()
        for ell in range(n_layers):
            for p in self.placements:
                if p in LINEARS:
                    pts.add(("linear", ell, p))
                elif p != "ln_f":
                    pts.add(("after", ell, p))
        return pts

    def n_params(self, cfg) -> int:
        """2·(N·Σ block placement widths + d if ln_f is placed and the model has one)."""
        per_block = sum(self._width(cfg, p) for p in self.placements if p != "ln_f")
        return 2 * (cfg.N * per_block + (cfg.d if self._on_ln_f(cfg) else 0))

    def _sites(self, theta):
        """(θ label, path of the module, weight key, bias key, {γ, β}) for every SSF layer in θ."""
        for ell, th in enumerate(theta["blocks"]):
            for p, gb in th.items():
                if p in LINEARS:
                    _, W, b = LINEARS[p]
                    yield f"blocks.{ell}.{p}", linear_path(ell, p), W, b, gb
                else:
                    yield f"blocks.{ell}.{p}", ln_path(ell, p), "gamma", "beta", gb
        if "ln_f" in theta:
            yield "ln_f", ("ln_f",), "gamma", "beta", theta["ln_f"]

    def merge(self, params) -> dict:
        """Fold each (γ, β) into the operation before it; params[name] removed.

        linear: W' = diag(γ) W, b' = γ ⊙ b + β.  LayerNorm: γ' = γ ⊙ γ_LN, β' = γ ⊙ β_LN + β.
        """
        theta = self.theta_of(params)
        out = tree.without(params, self.name)
        for _, path, W, b, gb in self._sites(theta):
            m, g, t = tree.get(out, path), gb["gamma"], gb["beta"]
            if W == "gamma" and "beta" not in m:  # after an RMSNorm: g' = γ ⊙ g, β into the readers' biases
                out = self._shift_readers(tree.replace(out, path, {**m, "gamma": g * m["gamma"]}), path, t, 1.0)
                continue
            if W == "gamma":  # after a LayerNorm
                # exercise ssf-merge-ln [2 pts] "SSF": after a LayerNorm, γ'_LN = γ ⊙ γ_LN, β'_LN = γ ⊙ β_LN + β
                new = {**m, "gamma": g * m["gamma"], "beta": g * m["beta"] + t}
                # end exercise
            elif b not in m:  # after a bias-free linear (Llama): W' = diag(γ) W, b' = β
                new = {**m, W: g[:, None] * m[W], b: t}
            else:  # after a linear
                # exercise ssf-merge-linear [2 pts] "SSF": after a linear, W' = diag(γ) W, b' = γ ⊙ b + β
                new = {**m, W: g[:, None] * m[W], b: g * m[b] + t}
                # end exercise
            out = tree.replace(out, path, new)
        return out

    @staticmethod
    def _shift_readers(params, path, beta, sign: float) -> dict:
        """b ← b + sign·W β for every linear reading the RMSNorm at ``path`` (``_READERS``; the
        tied head after RMSNorm_f: head.b ← head.b + sign·W_tok β). A missing b counts as 0."""
        if path == ("ln_f",):
            head = params.get("head", {})
            b = head.get("b", 0) + sign * (params["embed"]["W_tok"] @ beta)  # (vocab,)
            return {**params, "head": {**head, "b": b}}
        ell, ln = path[1], path[2]
        out = params
        for t in _READERS[ln]:
            mod, W, b = LINEARS[t]
            m = tree.get(out, linear_path(ell, t))
            if W in m:  # (no gate without SwiGLU)
                out = tree.replace(out, linear_path(ell, t), {**m, b: m.get(b, 0) + sign * (m[W] @ beta)})
        return out

    def unmerge(self, params, theta) -> dict:
        """Inverse of ``merge`` (divides by γ); θ put back at params[name]."""
        self.check_merged(params)
        out = dict(params)
        for label, path, W, b, gb in self._sites(theta):
            nonzero(f"{self.name}.{label}.gamma", gb["gamma"])
            m = tree.get(out, path)
            if W == "gamma" and "beta" not in m:  # an RMSNorm: g = g'/γ, the readers' biases less W β
                out = self._shift_readers(tree.replace(out, path, {**m, "gamma": m["gamma"] / gb["gamma"]}),
                                          path, gb["beta"], -1.0)
                continue
            Wn, bn = unfold_out(m[W], m[b], gb["gamma"], gb["beta"])
            out = tree.replace(out, path, {**m, W: Wn, b: bn})
        out[self.name] = theta
        return out

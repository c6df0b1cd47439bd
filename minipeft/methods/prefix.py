"""Prefix tuning (equations.md, "Prefix tuning"; the notes' "Prefix Tuning").

At every layer ℓ, learnable prefixes P_k^ℓ, P_v^ℓ ∈ R^{p×d} join the keys and values;
the queries are untouched:

    K' = [P_k; X W_kᵀ + b_k],   V' = [P_v; X W_vᵀ + b_v]
    Attn(Q, K', V') = softmax(Q K'ᵀ / sqrt(d_h)) V'       ∈ R^{n×d}

so the number of output tokens is unchanged: it follows the queries (the notes). The
unified view of He et al. (2022) reads the same attention, per head, as a gate between
the frozen attention and an attention over the prefix alone (``unified_view``):

    Attn(Q, K', V') = (1 − λ) Attn(Q, K, V) + λ softmax(Q P_kᵀ / sqrt(d_h)) P_v
    λ = Σ_i exp(q·P_k,i / sqrt(d_h)) / (Σ_i exp(q·P_k,i / sqrt(d_h)) + Σ_j exp(q·k_j / sqrt(d_h)))

(λ per query row and head: the attention mass on the prefix columns.)

Reparameterisation (the paper's fix for unstable training): P = MLP_θ(P'), a small
prefix encoder (tanh hidden layer, as in the paper's code) from a shorter P' ∈ R^{p×d'}.
The notes: the encoder "can be shared across layers or remain layer-specific" (``encoder``):

    shared (one MLP makes all layers' keys and values at once):
    [P_k^1, P_v^1, …, P_k^N, P_v^N] (row i) = tanh(P'_i W_1ᵀ + b_1) W_2ᵀ + b_2 ∈ R^{2·N·d}

    per-layer (one MLP per layer ℓ, all reading the same P'):
    [P_k^ℓ, P_v^ℓ] (row i) = tanh(P'_i W_1^ℓᵀ + b_1^ℓ) W_2^ℓᵀ + b_2^ℓ ∈ R^{2·d}

``eject`` evaluates the MLP once and returns the plain table (identical outputs). A saved
reparameterised prefix keeps P' and the MLP, so training can resume from the file.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import autograd.numpy as np
import numpy as onp

from ..nn import linear, merge_heads, prepend, softmax, split_heads
from ..validate import boolean, one_of, scale, shape, width
from .base import Method
from .layout import P_MAX, check_length


#: the prefix encoders of the reparameterisation (the notes: "shared across layers or layer-specific")
ENCODERS = ("shared", "per-layer")


@dataclass(frozen=True)
class PrefixTuning(Method):
    """Prefix tuning (Li & Liang 2021): K' = [P_k^ℓ; K], V' = [P_v^ℓ; V] at every layer ℓ.

    Fills the "kv" seam: (K, V) (B, S, d) each -> (B, p+S, d) each; the block's output
    keeps its T rows. θ (reparam=False) = {"P_k": (N, p, d), "P_v": (N, p, d)}, entries
    ~ N(0, init_std²): 2·N·p·d numbers. θ (reparam=True) = {"P_prime": (p, d'), "W_1":
    (hidden, d'), "b_1": (hidden,), "W_2": (2·N·d, hidden), "b_2": (2·N·d,)}: P' ~ N(0, 1),
    W_1 ~ N(0, 1/d'), W_2 ~ N(0, init_std²/hidden), biases 0; p·d' + hidden·(d' + 1) +
    2·N·d·(hidden + 1) numbers (P's entries then start with std ≈ 0.6·init_std).
    θ (reparam=True, encoder="per-layer"): the same P' (p, d') and one MLP per layer,
    stacked: "W_1": (N, hidden, d'), "b_1": (N, hidden), "W_2": (N, 2·d, hidden), "b_2":
    (N, 2·d), drawn as above: p·d' + N·(hidden·(d' + 1) + 2·d·(hidden + 1)) numbers. Plus
    the head when it trains. Either encoder trains more numbers than the table it makes
    (34,496 vs 4,096 for p = 8 on the pretrained backbone, shared); ``eject`` keeps only
    the table.

    With grouped-query attention (cfg.n_kv < h, Llama) K and V are d_kv = n_kv·d_h wide, so
    every d above is d_kv: P_k, P_v (N, p, d_kv), one prefix per key/value head, shared by
    its group of query heads (as peft's prefix tuning with num_key_value_heads). On a RoPE
    model the prefix joins K after the rotation and gets none; it is visible to every query
    (causal or not), and at generation time it is the KV cache's first p rows.

    ``placement="peft"``: the real tokens' position ids start at p (``position_offset``),
    which is what BertModel does when peft passes the prefix as a key/value cache of
    length p; the keys and values themselves are the same.
    """

    p: int = field(default=8, metadata={"help": f"prefix length p, 1..{P_MAX}"})
    init_std: float = field(default=1.0, metadata={"help": "std of the initial prefixes (the default is of the "
                                                           "order of the pretrained backbone's keys and values)"})
    reparam: bool = field(default=False, metadata={"help": "P = MLP(P'), the paper's reparameterisation"})
    d_prime: int = field(default=16, metadata={"help": "reparam: width d' of P'"})
    hidden: int = field(default=64, metadata={"help": "reparam: hidden width of the MLP"})
    placement: str = field(default="minipeft", metadata={
        "help": "minipeft: the real tokens keep positions 0..n-1; peft: they take p..p+n-1, as BertModel does "
                "under peft's prefix tuning (a key/value cache of length p)", "choices": ("minipeft", "peft")})
    encoder: str = field(default="shared", metadata={
        "help": "reparam: one MLP shared across layers, or one per layer", "choices": ENCODERS})
    name: str = "prefix"

    prompt_seam = "kv"

    @property
    def position_offset(self) -> int:
        """p with placement="peft" (BertModel offsets positions by the cache length), else 0."""
        return self.p if self.placement == "peft" else 0

    @property
    def suggested_lr(self) -> float:
        """The CLI's default lr: 3e-2 for the plain table, 1e-2 through the MLP (best
        validation accuracy of 3e-3..1e-1 on digits, 10 epochs, pretrained backbone, with
        the shared encoder; the per-layer encoder uses the same rate, not tuned apart)."""
        return 1e-2 if self.reparam else 3e-2

    def check_options(self):
        """Validate and normalise the options (called by ``Method.__post_init__``)."""
        object.__setattr__(self, "p", check_length(self.p))
        scale("init_std", self.init_std, positive=True)
        object.__setattr__(self, "reparam", boolean("reparam", self.reparam))
        object.__setattr__(self, "d_prime", width("d_prime", self.d_prime, numpy_ints=True))
        object.__setattr__(self, "hidden", width("hidden", self.hidden, numpy_ints=True))
        one_of("placement", self.placement, ("minipeft", "peft"))
        one_of("encoder", self.encoder, ENCODERS)
        if self.encoder != "shared" and not self.reparam:
            raise ValueError(f"encoder={self.encoder!r} needs reparam=True (the plain table has no encoder); "
                             "use encoder='shared' (the default) with reparam=False")

    # -------------------------------------------------------------------- θ
    def init(self, cfg, params, rng) -> dict:
        """θ (shapes in the class docstring)."""
        p, d, N = self.p, cfg.d_kv, cfg.N  # d_kv = d without grouped-query attention
        if not self.reparam:
            theta = {"P_k": rng.standard_normal((N, p, d)) * self.init_std,
                     "P_v": rng.standard_normal((N, p, d)) * self.init_std}
        else:
            dp, hd = self.d_prime, self.hidden
            if self.encoder == "per-layer":  # one MLP per layer, stacked on a leading axis of N
                return {"P_prime": rng.standard_normal((p, dp)),
                        "W_1": rng.standard_normal((N, hd, dp)) / math.sqrt(dp), "b_1": onp.zeros((N, hd)),
                        "W_2": rng.standard_normal((N, 2 * d, hd)) * (self.init_std / math.sqrt(hd)),
                        "b_2": onp.zeros((N, 2 * d))}
            theta = {"P_prime": rng.standard_normal((p, dp)),
                     "W_1": rng.standard_normal((hd, dp)) / math.sqrt(dp), "b_1": onp.zeros(hd),
                     "W_2": rng.standard_normal((2 * N * d, hd)) * (self.init_std / math.sqrt(hd)),
                     "b_2": onp.zeros(2 * N * d)}
        return theta

    def table(self, theta, N: int, d: int):
        """(P_k, P_v), each (N, p, d): θ itself, or P = MLP_θ(P') when reparameterised.

        N, d: the backbone's layers and width. ValueError when θ's shapes do not fit them.
        """
        p = self.p
        hint = f" (a prefix for a backbone with N={N} layers of width d={d}, p={p})"
        if not self.reparam:
            for k in ("P_k", "P_v"):
                shape(f"{self.name}.{k}", theta[k], (N, p, d), hint)
            return theta["P_k"], theta["P_v"]
        dp, hd = self.d_prime, self.hidden
        if self.encoder == "per-layer":
            for k, want in (("P_prime", (p, dp)), ("W_1", (N, hd, dp)), ("b_1", (N, hd)),
                            ("W_2", (N, 2 * d, hd)), ("b_2", (N, 2 * d))):
                shape(f"{self.name}.{k}", theta[k], want, hint)
            W_1t, W_2t = np.transpose(theta["W_1"], (0, 2, 1)), np.transpose(theta["W_2"], (0, 2, 1))
            H = np.tanh(np.matmul(theta["P_prime"], W_1t) + theta["b_1"][:, None, :])  # (N, p, hidden)
            P = np.matmul(H, W_2t) + theta["b_2"][:, None, :]  # (N, p, 2·d)
            return P[..., :d], P[..., d:]  # (N, p, d) each
        for k, want in (("P_prime", (p, dp)), ("W_1", (hd, dp)), ("b_1", (hd,)),
                        ("W_2", (2 * N * d, hd)), ("b_2", (2 * N * d,))):
            shape(f"{self.name}.{k}", theta[k], want, hint)
        H = np.tanh(linear(theta["P_prime"], theta["W_1"], theta["b_1"]))  # (p, hidden)
        P = linear(H, theta["W_2"], theta["b_2"])  # (p, 2·N·d)
        P = np.transpose(np.reshape(P, (p, N, 2, d)), (1, 2, 0, 3))  # (N, 2, p, d)
        return P[:, 0], P[:, 1]  # (N, p, d) each

    def prepare(self, theta, cfg):
        """{"P_k", "P_v"} (N, p, d) each: the table, evaluated once per forward pass (through
        the MLP when reparameterised), then read by ``on_kv`` at every layer."""
        P_k, P_v = self.table(theta, cfg.N, cfg.d_kv)
        return {"P_k": P_k, "P_v": P_v}

    def on_kv(self, theta, kv, layer, cfg):
        """(K, V) (B, S, d) each -> ([P_k^ℓ; K], [P_v^ℓ; V]) (B, p+S, d) each, ℓ = layer + 1.
        theta: the table from ``prepare``."""
        # exercise prefix-kv [2 pts] "Prefix tuning": K' = [P_k^ℓ; K], V' = [P_v^ℓ; V], theta = {"P_k", "P_v"} (N, p, d)
        K, V = kv
        return prepend(theta["P_k"][layer], K), prepend(theta["P_v"][layer], V)
        # end exercise

    def n_params(self, cfg) -> int:
        """2·N·p·d; reparameterised, p·d' + hidden·(d' + 1) + 2·N·d·(hidden + 1) (shared)
        or p·d' + N·(hidden·(d' + 1) + 2·d·(hidden + 1)) (per-layer)."""
        if not self.reparam:
            return 2 * cfg.N * self.p * cfg.d_kv
        if self.encoder == "per-layer":
            return self.p * self.d_prime + cfg.N * (self.hidden * (self.d_prime + 1) + 2 * cfg.d_kv * (self.hidden + 1))
        two_nd = 2 * cfg.N * cfg.d_kv
        return self.p * self.d_prime + self.hidden * (self.d_prime + 1) + two_nd * (self.hidden + 1)

    def eject(self, params):
        """Drop the reparameterisation: returns (params', method') with method' the plain
        table (reparam=False, encoder="shared") and params'[name] = {"P_k", "P_v"} = MLP_θ(P')
        (either encoder), computed once, so forward gives identical outputs. N and d are read
        from the backbone in params.
        """
        if not self.reparam:
            raise ValueError(f"eject: prefix {self.name!r} is already a plain table (reparam=False)")
        if self.name not in params:
            raise ValueError(f"eject: params has no entry {self.name!r}; attach the method first")
        d, N = params["blocks"][0]["attn"]["W_k"].shape[0], len(params["blocks"])  # d_kv
        P_k, P_v = self.table(params[self.name], N, d)
        return {**params, self.name: {"P_k": P_k, "P_v": P_v}}, dataclasses.replace(self, reparam=False, encoder="shared")


def unified_view(Q, K, V, P_k, P_v, h):
    """Prefix attention as a gate (He et al. 2022; module docstring), per head:

        (1 − λ) Attn(Q, K, V) + λ softmax(Q P_kᵀ / sqrt(d_h)) P_v

    Q: (B, T, d); K, V: (B, S, d); P_k, P_v: (p, d). Returns the attention output
    (B, T, d) — equal to nn.attention(Q, K, V, h, prefix=(P_k, P_v)) — and λ (B, h, T),
    the attention mass on the prefix columns.
    """
    d_h = Q.shape[-1] // h
    c = 1.0 / math.sqrt(d_h)
    q, k, v = split_heads(Q, h), split_heads(K, h), split_heads(V, h)  # (B, h, ·, d_h)
    pk, pv = split_heads(P_k[None], h), split_heads(P_v[None], h)  # (1, h, p, d_h)
    s_x = np.matmul(q, np.transpose(k, (0, 1, 3, 2))) * c  # (B, h, T, S)
    s_p = np.matmul(q, np.transpose(pk, (0, 1, 3, 2))) * c  # (B, h, T, p)
    m = np.maximum(np.max(s_x, axis=-1), np.max(s_p, axis=-1))[..., None]  # (B, h, T, 1)
    mass_x, mass_p = np.sum(np.exp(s_x - m), axis=-1), np.sum(np.exp(s_p - m), axis=-1)  # (B, h, T)
    lam = mass_p / (mass_p + mass_x)  # (B, h, T)
    attn_x = np.matmul(softmax(s_x), v)  # Attn(Q, K, V): (B, h, T, d_h)
    attn_p = np.matmul(softmax(s_p), pv)  # softmax(Q P_kᵀ) P_v: (B, h, T, d_h)
    out = (1.0 - lam)[..., None] * attn_x + lam[..., None] * attn_p
    return merge_heads(out), lam  # (B, T, d), (B, h, T)

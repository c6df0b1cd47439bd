"""Deterministic initialisation of the backbone φ as a nested dict (picoGPT-style)."""
from __future__ import annotations

import numpy as onp

from ..backend import cast, module_of, resolve_dtype
from ..validate import int_at_least
from .config import Config
from .schema import BLOCK_KEYS, LAYER_NORMS, LINEARS, linear_shape, linears


def _normal(rng, shape, std):
    return rng.standard_normal(shape) * std


def init_linear(rng, d_out, d_in, bias=True):
    """{"W": (d_out, d_in) ~ N(0, 1/d_in), "b": zeros (d_out,)} in float64."""
    p = {"W": _normal(rng, (d_out, d_in), d_in ** -0.5)}
    if bias:
        p["b"] = onp.zeros(d_out)
    return p


def init_params(cfg: Config, seed: int = 0, dtype=None) -> dict:
    """φ for ``cfg``, drawn from ``numpy.random.default_rng(seed)``; same seed, same bits.

    Linear weights W ∈ R^{d_out×d_in} ~ N(0, 1/d_in), biases 0, LayerNorm γ = 1, β = 0,
    CLS and positions ~ N(0, 0.02²). Numbers are drawn in float64 and cast to ``dtype``
    (default: backend.default_dtype()), so a float32 model is the rounding of the float64 one.

    Layout: the schema of ``transformer/schema.py`` ({"embed", "blocks": [{"ln1", "attn",
    "ln2", "mlp"}] * N, "ln_f", "head"}), with the optional parts the BERT options add
    (schema.EMBED_KEYS, schema.OPTIONAL_KEYS): "cls" only with cfg.cls="learned", "W_type"
    and "ln" in embed when configured, "ln_f" only for pre-LN, "pooler" only for
    pool="pooler". The draw order of the default (pre-LN ViT) layout is unchanged.
    The decoder options (Llama): no "pos" with pos="rope", RMSNorms {"gamma"} only
    (norm="rms"), W_g drawn after W_2 (act="swiglu"), W_k and W_v (d_kv, d), no b_* with
    bias=False, no "head" with head="tied_lm" (a random-init Llama for the tests).
    """
    dtype = resolve_dtype(dtype)
    rng = onp.random.default_rng(seed)
    d = cfg.d
    if cfg.front == "vision":
        pe = init_linear(rng, d, cfg.patch_dim)
        embed = {"W": pe["W"], "b": pe["b"]}
    else:
        embed = {"W_tok": _normal(rng, (cfg.vocab, d), 0.02)}
    if cfg.cls == "learned":
        embed["cls"] = _normal(rng, (d,), 0.02)
    if cfg.pos == "learned":
        embed["pos"] = _normal(rng, (cfg.n_positions, d), 0.02)

    def ln():
        if cfg.norm == "rms":  # RMSNorm: a gain g only
            return {"gamma": onp.ones(d)}
        return {"gamma": onp.ones(d), "beta": onp.zeros(d)}

    if cfg.type_vocab:
        embed["W_type"] = _normal(rng, (cfg.type_vocab, d), 0.02)
    if cfg.embed_ln:
        embed["ln"] = ln()

    blocks = []
    for _ in range(cfg.N):
        blk = {k: (ln() if k in LAYER_NORMS else {}) for k in BLOCK_KEYS}
        for name in linears(cfg):  # drawn in schema order: q, k, v, o, mlp1, mlp2 (, gate)
            mod, W, b = LINEARS[name]
            lin = init_linear(rng, *linear_shape(cfg, name), bias=cfg.bias)
            blk[mod][W] = lin["W"]
            if cfg.bias:
                blk[mod][b] = lin["b"]
        blocks.append(blk)
    params = {"embed": embed, "blocks": blocks}
    if cfg.has_ln_f:
        params["ln_f"] = ln()
    if cfg.pool == "pooler":
        params["pooler"] = init_linear(rng, d, d)
    if cfg.head == "classes":
        params["head"] = init_linear(rng, cfg.n_classes, d)
    return cast(params, dtype)


def new_head(params: dict, n_classes: int, seed: int = 0, std: float = 0.01) -> dict:
    """``params`` with a fresh head for ``n_classes`` classes: W ~ N(0, std²), b = 0.

    For a downstream task whose label set differs from pretraining. (C, d), (C,).
    """
    int_at_least("n_classes", n_classes, 1)
    W0 = params["head"]["W"]
    rng = onp.random.default_rng(seed)
    head = {"W": _normal(rng, (n_classes, W0.shape[1]), std), "b": onp.zeros(n_classes)}
    return {**params, "head": cast(head, W0.dtype, module_of(W0))}  # on the model's device

"""The backbone's parameter schema: which projections and LayerNorms a block has, their
keys in the params tree and their shapes (equations.md, "Transformer"; "Conventions").

    params = {"embed": {...}, "blocks": [block] * N, "ln_f": {"gamma", "beta"}, "head": {"W", "b"}}
             (+ "pooler", − "ln_f" and more embed keys with the BERT options: OPTIONAL_KEYS)
    block  = {"ln1": {"gamma", "beta"}, "attn": {W_q, b_q, W_k, b_k, W_v, b_v, W_o, b_o},
              "ln2": {"gamma", "beta"}, "mlp": {W_1, b_1, W_2, b_2}}

``init.py`` builds this layout, ``forward.py`` reads it, and the methods name the
projections they adapt ("q", ..., "mlp2") and the LayerNorms ("ln1", "ln2", "ln_f")
through it. W ∈ R^{d_out×d_in}: a projection computes y = x Wᵀ + b.
"""
from __future__ import annotations

#: linear projections of a block, in the order init draws them: name -> (module, weight key, bias key)
LINEARS = {
    "q": ("attn", "W_q", "b_q"), "k": ("attn", "W_k", "b_k"), "v": ("attn", "W_v", "b_v"),
    "o": ("attn", "W_o", "b_o"), "mlp1": ("mlp", "W_1", "b_1"), "mlp2": ("mlp", "W_2", "b_2"),
    "gate": ("mlp", "W_g", "b_g"),  # SwiGLU's gate (cfg.act == "swiglu" only: see ``linears``)
}
#: LayerNorms: ln1, ln2 in every block, ln_f once at the top (each {"gamma", "beta"})
LAYER_NORMS = ("ln1", "ln2", "ln_f")
#: the keys of one block, in order
BLOCK_KEYS = ("ln1", "attn", "ln2", "mlp")
#: top-level keys of the backbone φ ("ln_f" only in a pre-LN model, "pooler" {W, b} only
#: with Config.pool="pooler": see OPTIONAL_KEYS)
BACKBONE_KEYS = ("embed", "blocks", "ln_f", "pooler", "head")
#: the keys of "embed": vision {W, b, cls, pos}; text {W_tok, cls, pos, W_type, ln}
EMBED_KEYS = {"vision": ("W", "b", "cls", "pos"), "text": ("W_tok", "cls", "pos", "W_type", "ln")}
#: the parts the Config's forks add or remove (the BERT options), key -> when it exists
OPTIONAL_KEYS = {
    ("embed", "cls"): 'cfg.cls == "learned" (a learned x₀; BERT reads [CLS] from the ids)',
    ("embed", "W_type"): "cfg.type_vocab > 0 (token-type embeddings, (type_vocab, d))",
    ("embed", "ln"): "cfg.embed_ln (the embedding LayerNorm LN_emb {gamma, beta})",
    ("ln_f",): 'cfg.norm == "pre" (a post-LN block ends in its own LN₂)',
    ("pooler",): 'cfg.pool == "pooler" (BERT\'s tanh pooler, W (d, d), b (d,))',
    ("embed", "pos"): 'cfg.pos == "learned" (RoPE has no table)',
    ("head",): 'cfg.head == "classes" (a tied LM head reads embed.W_tok)',
    ("blocks", "mlp", "W_g"): 'cfg.act == "swiglu" (the gate, (d_ff, d))',
    ("blocks", "*", "b_*"): "cfg.bias (every linear's bias; ln β: not with norm='rms', RMSNorm has g only)",
}


def linears(cfg) -> tuple:
    """The projections a block of ``cfg`` has, in schema order: q, k, v, o, mlp1, mlp2, and
    gate with SwiGLU (Llama: gate = W_g, up = W_1 "mlp1", down = W_2 "mlp2")."""
    return tuple(n for n in LINEARS if n != "gate" or cfg.act == "swiglu")


def check_linears(cfg, field: str, names) -> None:
    """ValueError naming ``field`` when a projection in ``names`` is not in ``cfg``'s blocks
    (e.g. "gate" on a GELU model)."""
    missing = [n for n in names if n in LINEARS and n not in linears(cfg)]
    if missing:
        raise ValueError(f"{field}: {missing} not in this backbone (act={cfg.act!r}); its projections are "
                         f"{linears(cfg)} (gate exists with act='swiglu' only)")


def linear_shape(cfg, name: str) -> tuple:
    """(d_out, d_in) of the projection ``name``: W_q, W_o d×d; W_k, W_v d_kv×d (d_kv = n_kv·d_h,
    = d without grouped-query attention); W₁ and W_g d_ff×d; W₂ d×d_ff."""
    return {"mlp1": (cfg.d_ff, cfg.d), "gate": (cfg.d_ff, cfg.d), "mlp2": (cfg.d, cfg.d_ff),
            "k": (cfg.d_kv, cfg.d), "v": (cfg.d_kv, cfg.d)}.get(name, (cfg.d, cfg.d))


def linear_width(cfg, name: str) -> int:
    """d_out of the projection ``name`` (the length of a vector scaling its output)."""
    return linear_shape(cfg, name)[0]


def linear_path(layer: int, name: str) -> tuple:
    """Path of the module dict holding projection ``name`` of block ``layer``: ("blocks", ℓ, "attn"|"mlp")."""
    return ("blocks", layer, LINEARS[name][0])


def anchor(params):
    """The leaf whose dtype and device are the model's: embed.pos, or the token table
    (embed.W_tok; vision embed.W) in a model without a position table (pos='rope'), or the
    final norm's gain when the token table is block-quantized (nn/quant.py: no dtype)."""
    e = params["embed"]
    if "pos" in e:
        return e["pos"]
    W = e.get("W_tok", e.get("W"))
    return W if hasattr(W, "dtype") else params["ln_f"]["gamma"]


def ln_path(layer, name: str) -> tuple:
    """Path of a LayerNorm's dict: ("blocks", ℓ, "ln1"), ("blocks", ℓ, "ln2") or ("ln_f",)."""
    return ("ln_f",) if name == "ln_f" else ("blocks", layer, name)

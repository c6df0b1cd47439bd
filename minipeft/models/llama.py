"""Llama-architecture decoders (SmolLM2, Llama 2/3 shape) as configuration of minipeft's
one transformer (equations.md, "Real architectures").

``config(...)`` sets the decoder forks of ``Config`` — pre-RMSNorm, SwiGLU, grouped-query
attention, RoPE, causal mask, no biases, no CLS row, the tied LM head read at the last
real token — so ``forward`` gives the next-token logits (B, vocab) and ``transformer.hidden``
every row. ``SMOLLM2_135M`` holds SmolLM2-135M-Instruct's sizes.

``HF_TABLE`` maps Hugging Face ``LlamaForCausalLM`` state-dict names to paths in φ
(nn.Linear stores W as (d_out, d_in), minipeft's convention too, so nothing is transposed;
W_q and W_k are in HF's rotate_half layout, which ``nn.rope`` uses). ``from_state_dict``
builds φ from such a dict of NumPy arrays (the crosscheck test feeds it a random
transformers model; a GGUF loader produces the same layout).
"""
from __future__ import annotations

import numpy as onp

from ..backend import cast, resolve_dtype
from ..transformer import Config

#: SmolLM2-135M-Instruct (HF config.json of HuggingFaceTB/SmolLM2-135M-Instruct)
SMOLLM2_135M = dict(d=576, h=9, n_kv=3, N=30, d_ff=1536, vocab=49152, max_len=8192, eps=1e-5, rope_base=100000.0)

#: HF name -> path in φ; "{l}" is the block index
HF_TABLE = (
    ("model.embed_tokens.weight", ("embed", "W_tok")),
    ("model.layers.{l}.input_layernorm.weight", ("blocks", "{l}", "ln1", "gamma")),
    ("model.layers.{l}.self_attn.q_proj.weight", ("blocks", "{l}", "attn", "W_q")),
    ("model.layers.{l}.self_attn.k_proj.weight", ("blocks", "{l}", "attn", "W_k")),
    ("model.layers.{l}.self_attn.v_proj.weight", ("blocks", "{l}", "attn", "W_v")),
    ("model.layers.{l}.self_attn.o_proj.weight", ("blocks", "{l}", "attn", "W_o")),
    ("model.layers.{l}.post_attention_layernorm.weight", ("blocks", "{l}", "ln2", "gamma")),
    ("model.layers.{l}.mlp.gate_proj.weight", ("blocks", "{l}", "mlp", "W_g")),
    ("model.layers.{l}.mlp.up_proj.weight", ("blocks", "{l}", "mlp", "W_1")),
    ("model.layers.{l}.mlp.down_proj.weight", ("blocks", "{l}", "mlp", "W_2")),
    ("model.norm.weight", ("ln_f", "gamma")),
)


def config(d: int, h: int, n_kv: int, N: int, d_ff: int, vocab: int, max_len: int, eps: float = 1e-5,
           rope_base: float = 10000.0) -> Config:
    """The Config of a Llama decoder of these sizes (every decoder fork set; module docstring).

    d, h (query heads), n_kv (key/value heads), N, d_ff, vocab, max_len (the context
    length), eps (RMSNorm's ε), rope_base. ValueError naming a field when a size is invalid.
    """
    return Config(d=d, h=h, n_kv=n_kv, N=N, d_ff=d_ff, vocab=vocab, max_len=max_len, eps=eps,
                  rope_base=rope_base, front="text", norm="rms", act="swiglu", pos="rope", causal=True,
                  bias=False, cls="no_cls", pool="last", head="tied_lm", n_classes=vocab)


def from_state_dict(state: dict, cfg: Config, dtype=None) -> dict:
    """φ from a ``LlamaForCausalLM`` state dict (name -> NumPy array), through ``HF_TABLE``.

    "lm_head.weight", if present, must equal the embedding (a tied head); every other
    name must be in the table (ValueError naming the first that is not, or a missing one).
    """
    dtype = resolve_dtype(dtype)
    params = {"embed": {}, "blocks": [{"ln1": {}, "attn": {}, "ln2": {}, "mlp": {}} for _ in range(cfg.N)],
              "ln_f": {}}
    used = set()
    for hf, path in HF_TABLE:
        for ell in (range(cfg.N) if "{l}" in hf else [None]):
            name = hf.format(l=ell)
            if name not in state:
                raise ValueError(f"state dict: missing {name!r} (a Llama with N={cfg.N} blocks?)")
            node = params
            keys = [ell if k == "{l}" else k for k in path]
            for k in keys[:-1]:
                node = node[k]
            node[keys[-1]] = onp.asarray(state[name])
            used.add(name)
    if "lm_head.weight" in state:
        if not onp.array_equal(onp.asarray(state["lm_head.weight"]), params["embed"]["W_tok"]):
            raise ValueError("state dict: lm_head.weight differs from model.embed_tokens.weight; minipeft's "
                             "Llama has a tied head (tie_word_embeddings=True)")
        used.add("lm_head.weight")
    extra = sorted(set(state) - used)
    if extra:
        raise ValueError(f"state dict: tensors minipeft's Llama does not have: {extra[:5]}")
    return cast(params, dtype)


def config_of(hp: dict) -> Config:
    """The Config of a Llama whose sizes a GGUF's metadata gave (``smollm2.hyperparameters``:
    d, h, n_kv, N, d_ff, vocab, max_len, eps, rope_base)."""
    return config(**{k: hp[k] for k in ("d", "h", "n_kv", "N", "d_ff", "vocab", "max_len", "eps", "rope_base")})


def load_smollm2(dtype=None):
    """(params, cfg, tokenizer) of SmolLM2-135M-Instruct from its GGUF (``models.smollm2.load``),
    with the Config of this module: φ float (dequantized), ready for ``forward`` and ``generate``."""
    from . import smollm2

    params, hp, tok = smollm2.load(dtype=dtype)
    return params, config_of(hp), tok

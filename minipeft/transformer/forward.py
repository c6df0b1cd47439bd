"""The forward pass, with the named seams where PEFT methods enter.

    pre-LN (cfg.norm="pre", the default; equations.md, "Transformer"):
    X'_ℓ = X_{ℓ-1} + MSA(LN₁(X_{ℓ-1}))
    X_ℓ  = X'_ℓ   + MLP(LN₂(X'_ℓ))
    y    = Head(pool(LN_f(X_N)))

    post-LN (cfg.norm="post", BERT):
    X'_ℓ = LN₁(X_{ℓ-1} + MSA(X_{ℓ-1}))
    X_ℓ  = LN₂(X'_ℓ + MLP(X'_ℓ))
    y    = Head(pool(X_N))                 no LN_f: each block already ends in LN₂

    pre-RMSNorm (cfg.norm="rms", Llama; equations.md, "Real architectures"):
    X'_ℓ = X_{ℓ-1} + MSA(RMSNorm₁(X_{ℓ-1}))       Q, K turned by RoPE, causal, GQA
    X_ℓ  = X'_ℓ   + (SiLU(h W_gᵀ) ⊙ h W_1ᵀ) W_2ᵀ,  h = RMSNorm₂(X'_ℓ)
    logits = RMSNorm_f(X_N)[rows] W_tokᵀ            (head="tied_lm", at the rows asked for)

The one fork is ``_residual`` (each sub-layer with its residual add and its norm, "rms"
taking the pre-norm branch with ``_norm`` = RMSNorm); the other options of Config are
local: the MLP's nonlinearity (``cfg.act``: GELU's two forms, or SwiGLU with the extra
"gate" projection), what the embedding adds (``embed``: x₀ or not, positions or not,
W_type, LN_emb), what the head reads (``pool``) and the attention's decoder options in
``block``'s ``msa``: RoPE on Q and K right after their "linear" seam (so LoRA, (IA)³ and
SSF on q, k act before the rotation, as on Hugging Face's Llama), then the "kv" seam, then
GQA's ``repeat_kv``; the causal mask is built in ``_causal``.

Seams. Each is a call ``_seam(methods, thetas, "<seam>", value, **ctx)`` that hands
``value`` through every active method's hook ``on_<seam>``, in the order the methods
are listed, and is the identity when none has one. A hook is called as
``hook(theta_m, value, **ctx)`` and returns the new value; θ_m is
``method.prepare(params[method.name], cfg)``, computed once per forward pass (θ itself
for every method but reparameterised prefix tuning, whose MLP makes its table there).
``SEAMS`` below is the one list of seams; ``methods.Method`` derives its hooks from it.

    seam        value (shape)                          ctx                 who uses it
    inputs      rows joining the word embeddings in    cfg                 prompt tuning,
                front (B, k, d), k = 0 at first: they                      placement="peft"
                get positions 0..k-1, W_type[0], LN_emb
                (text only; peft's inputs_embeds)
    tokens      Z₀ = [x₀; E₀]  (B, 1+n, d)             cfg                 prompt tuning, VPT-Shallow
                (BERT, cls="ids": E₀ (B, n, d), row 0 the [CLS] token)
    layer_in    X_{ℓ-1}  (B, T, d) entering block ℓ    layer, cfg          VPT-Deep
    linear      y = x Wᵀ + b (B, T, d_out)             x, layer, name, cfg LoRA, (IA)³, SSF
                name ∈ q, k, v, o, mlp1, mlp2 (+ gate with SwiGLU; k, v are d_kv wide with GQA)
    kv          (K, V)  (B, S, d) each                 layer, cfg          prefix tuning
                (d_kv = n_kv·d_h wide with GQA; after RoPE)
    ff_hidden   GELU(x W₁ᵀ + b₁)  (B, T, d_ff)         layer, cfg          (IA)³ l_ff
                (SwiGLU: SiLU(x W_gᵀ) ⊙ x W_1ᵀ, W_2's input)
    mlp         MLP(LN₂(X'))  (B, T, d)                x_norm, x_resid,    AdaptFormer
                                                        layer, cfg
    after       a module's output (B, T, d);           layer, name, cfg    serial adapters,
                name ∈ ln1, attn, ln2, mlp, ln_f                               SSF on LN

``layer`` counts blocks from 0 (block ℓ of the notes is layer ℓ-1); it is None at ln_f.
"attn" is after the output projection, "mlp" after W₂, both before the residual add;
on the MLP branch "after" runs before "mlp".

Where each seam sits in a post-LN block (same names, same meaning: "the output of that
module"): q, k, v read X_{ℓ-1} itself (there is no LN before attention); "after attn" and
"after mlp" are still before the residual add — Houlsby's adapters, whose original
setting is this post-LN BERT block; "after ln1" is LN₁(X_{ℓ-1} + O) = X'_ℓ, the MLP's
input; "after ln2" is LN₂(X'_ℓ + M) = X_ℓ, the block's output; "mlp" (AdaptFormer) gets
x_norm = x_resid = X'_ℓ (the MLP's input is already normalised) and adds s·X̃ before the
add & LN₂. "after ln_f" never runs (no LN_f). SSF's and BitFit's LN folds are the same
formula wherever the LN sits.

Padding (text batches of shape (B, 3, n), see inputs.check_batch): the attention mask
hides padded keys (weight exactly 0) in every block; rows a tokens-seam method inserts
(prompts, which sit right after row 0) and prefix keys are always visible. Padded rows
are computed but never read: "mean" pooling averages the real input tokens only.
Positions: the real tokens keep ids 0..n-1 (the table is added in ``embed``, before the
"tokens" seam), whatever prompts or prefixes a method adds — unless a method says otherwise
(HF peft's conventions, ``placement="peft"``): rows the "inputs" seam puts in front take
positions 0..k-1 and the real tokens k..k+n-1; a method's ``position_offset`` (prefix
tuning's p) shifts every position by that much. Rows the "inputs" seam added are visible
keys, and "mean" pooling skips them; "cls"/"pooler" read row 0, which is then the first
such row (as BertModel's pooler does under peft's prompt tuning).

On a decoder (Llama) the same choice, stated: with RoPE the real tokens keep rotary
positions 0..n-1; rows a method adds carry no rotary position (rotation 0): prompt rows
(cls="no_cls": before row 0, the prompt text after them) and prefix keys P_k (they join K
after RoPE, at the "kv" seam). Hugging Face peft instead shifts the real tokens by p.
The causal mask hides later rows; prefix keys are visible to every query, prompt rows to
every later row. Padding: right padding only (a causal row never reads a later one).
KV cache (``cache``, generation): the "kv" seam runs once, at the first call, so P_k, P_v
are the cache's first entries; later calls append only the new rows' K, V and skip the
"tokens" seam (prompt rows are already in the cache).
"""
from __future__ import annotations

import autograd.numpy as np
import numpy as onp
from autograd.tracer import isbox

from .. import runtime
from ..backend import like, to_host
from ..nn import attention, gelu, gelu_erf, layer_norm, linear, prepend
from ..nn import quant
from ..nn.gqa import repeat_kv
from ..nn.rmsnorm import rms_norm
from ..nn.rope import rope
from ..nn.swiglu import swiglu
from ..nn.ff import frozen_mlp, linear_gelu, linear_gelu_values
from .config import Config
from .inputs import check_batch, text_parts
from .schema import LINEARS, anchor

#: the seams, in the order a forward pass meets them; a method fills seam s with ``on_<s>``
SEAMS = ("inputs", "tokens", "layer_in", "linear", "kv", "ff_hidden", "mlp", "after")


def prepared(params, methods, cfg: Config) -> dict:
    """{method name: θ_m as its hooks read it}: ``m.prepare(params[m.name], cfg)``, once per
    forward pass ({} for a method with no entry in params, e.g. BitFit's optional marker)."""
    return {m.name: m.prepare(params[m.name] if m.name in params else {}, cfg) for m in methods}


def _seam(methods, thetas, seam, value, **ctx):
    """Pass ``value`` through each method's hook ``on_<seam>`` (identity when none has it)."""
    for m in methods:
        hook = getattr(m, "on_" + seam)
        if hook is not None:
            value = hook(thetas[m.name], value, **ctx)
    return value


def _proj(methods, thetas, bp, x, layer, name, cfg):
    """y = x Wᵀ + b for projection ``name`` of block params ``bp``, then the "linear" seam.
    (B, T, d_in) -> (B, T, d_out)."""
    mod, W, b = LINEARS[name]  # a bias-free model (cfg.bias=False) has no b (a merged SSF may add one)
    Wm = bp[mod][W]
    lin = quant.linear if quant.is_quantized(Wm) else linear  # a frozen 4-bit W stays in its blocks
    return _seam(methods, thetas, "linear", lin(x, Wm, bp[mod].get(b)), x=x, layer=layer, name=name, cfg=cfg)


def patchify(images, patch):
    """(B, C, H, W) -> (B, m, C·patch²), patches in row-major order (I_j of the notes)."""
    B, C, H, W = images.shape
    x = np.reshape(images, (B, C, H // patch, patch, W // patch, patch))
    x = np.transpose(x, (0, 2, 4, 1, 3, 5))  # (B, H/P, W/P, C, P, P)
    return np.reshape(x, (B, (H // patch) * (W // patch), C * patch * patch))


def embed(params, x, cfg: Config, lead=None, offset: int = 0):
    """Z₀, the rows entering block 1.  -> (B, k + n_cls + n, d).

        vision  Z₀ = [x₀; Embed(I_j)] + pos
        text    Z₀ = [L;] [x₀;] W_tok[ids] + pos (+ W_type[type ids])    x₀ only when cfg.cls="learned"
        then, with cfg.embed_ln, Z₀ ← LN_emb(Z₀) (BERT).

    lead: None or L (B, k, d), text only: rows joining the word embeddings in front (the
    "inputs" seam; peft's prompt tuning), with token type 0. offset: the first position id
    (pos[offset : offset + rows] is added; peft's prefix tuning shifts by p).
    """
    p = params["embed"]
    types = None
    if cfg.front == "vision":
        E = linear(patchify(x, cfg.patch), p["W"], p["b"])  # (B, m, d)
    else:
        ids, types, _ = text_parts(x)
        E = _rows(params, ids)  # (B, n, d)
    Z = prepend(p["cls"][None], E) if cfg.cls == "learned" else E  # (B, n_cls + n, d)
    k = 0 if lead is None else lead.shape[1]
    if k:
        Z = np.concatenate([lead, Z], axis=1)  # (B, k + n_cls + n, d)
    if cfg.pos == "learned":  # RoPE adds no table here: it turns Q and K in every block
        if offset + Z.shape[1] > p["pos"].shape[0]:
            raise ValueError(f"x: {k} leading rows + {Z.shape[1] - k} tokens from position {offset} need "
                             f"{offset + Z.shape[1]} positions, the table has {p['pos'].shape[0]}")
        Z = Z + p["pos"][offset: offset + Z.shape[1]]
    if cfg.type_vocab:
        W = p["W_type"][types] if types is not None else p["W_type"][0]  # type 0 when x has no types
        if k:  # the rows in front take type 0
            W = np.concatenate([p["W_type"][0] + np.zeros_like(Z[:, :k]), W + np.zeros_like(Z[:, k:])], axis=1)
        Z = Z + W
    if cfg.embed_ln:
        Z = layer_norm(Z, p["ln"]["gamma"], p["ln"]["beta"], cfg.eps)
    return Z


def _rows(params, ids):
    """W_tok[ids], dequantizing only those rows when W_tok is block-quantized.  (...) -> (..., d)."""
    W = params["embed"]["W_tok"]
    return quant.embedding_rows(W, to_host(ids), anchor(params).dtype) if quant.is_quantized(W) else W[ids]


def token_embedding(params, ids, cfg: Config):
    """The row the tokens seam sees for token t with no position: W_tok[t] (+ W_type[0]),
    then LN_emb when cfg.embed_ln.  ids (k,) int -> (k, d). (Prompt tuning's word init.)"""
    p = params["embed"]
    E = _rows(params, ids)  # (k, d)
    if cfg.type_vocab:
        E = E + p["W_type"][0]
    if cfg.embed_ln:
        E = layer_norm(E, p["ln"]["gamma"], p["ln"]["beta"], cfg.eps)
    return E


def _norm(g, Y, cfg: Config):
    """LayerNorm γ ⊙ Ŷ + β, or RMSNorm g ⊙ Y / rms(Y) (cfg.norm="rms", g = "gamma").
    (B, T, d) -> (B, T, d)."""
    if cfg.norm == "rms":
        return rms_norm(Y, g["gamma"], cfg.eps)
    return layer_norm(Y, g["gamma"], g["beta"], cfg.eps)


def _residual(methods, th, params, X, ln, layer, cfg, branch):
    """One sub-layer with its residual add and LayerNorm: the only pre/post-LN fork.

        pre   X + branch(after_ln(LN(X)))         post   after_ln(LN(X + branch(X)))

    ``ln`` is "ln1" or "ln2" (its "after" seam runs right after that LN), ``branch(h)``
    the attention or MLP sub-layer applied to its input h.  (B, T, d) -> (B, T, d).
    """
    g = params["blocks"][layer][ln]

    def norm(Y):
        return _seam(methods, th, "after", _norm(g, Y, cfg), layer=layer, name=ln, cfg=cfg)

    if cfg.norm != "post":  # pre-LN and pre-RMSNorm
        return X + branch(norm(X))
    return norm(X + branch(X))


def block(params, X, layer, cfg: Config, methods=(), trace=None, thetas=None, mask=None, positions=None,
          cache=None):
    """One block ℓ = layer + 1 with all its seams (pre- or post-LN).  (B, T, d) -> (B, T, d).

    thetas: ``prepared(params, methods, cfg)`` (computed here when None).
    mask: None, (B, S) bool (the rows keys may be read from; padding False) or (B or 1, T, S)
    bool per query (causal). positions: (T,) rotary positions of the rows (pos="rope").
    cache: a ``KVCache`` (generation) or None.
    """
    th = prepared(params, methods, cfg) if thetas is None else thetas
    bp = params["blocks"][layer]
    act = gelu if cfg.act == "gelu_tanh" else gelu_erf  # (unused with swiglu)
    X = _seam(methods, th, "layer_in", X, layer=layer, cfg=cfg)

    def msa(h1):
        Q = _proj(methods, th, bp, h1, layer, "q", cfg)
        K = _proj(methods, th, bp, h1, layer, "k", cfg)
        V = _proj(methods, th, bp, h1, layer, "v", cfg)  # K, V (B, T, d_kv)
        if cfg.pos == "rope":
            if positions is None or len(positions) != Q.shape[1]:
                raise ValueError("methods: rows inserted inside the blocks (VPT-Deep) have no rotary position; "
                                 "pos='rope' allows prompts at the tokens seam (prompt tuning) and prefixes")
            Q = rope(Q, positions, cfg.h, cfg.rope_base)
            K = rope(K, positions, cfg.kv_heads, cfg.rope_base)
        if cache is not None and cache.has(layer):  # decoding: the prefix is already the cache's first rows
            K, V = cache.extend(layer, K, V)
        else:
            K, V = _seam(methods, th, "kv", (K, V), layer=layer, cfg=cfg)  # (B, S, d_kv), S ≥ T
            if cache is not None:
                cache.store(layer, K, V)
        if cfg.kv_heads != cfg.h:  # GQA: each K, V head serves h / n_kv query heads
            K, V = (repeat_kv(Y, cfg.kv_heads, cfg.h // cfg.kv_heads) for Y in (K, V))  # (B, S, d)
        if trace is not None:
            Z, A = attention(Q, K, V, cfg.h, return_weights=True, mask=mask)  # (B, T, d), (B, h, T, S)
            trace.setdefault("attn", []).append(A)
        else:  # the weights not returned: traced, attention is one node with one fused backward
            Z = attention(Q, K, V, cfg.h, mask=mask)  # (B, T, d)
        O = _proj(methods, th, bp, Z, layer, "o", cfg)
        return _seam(methods, th, "after", O, layer=layer, name="attn", cfg=cfg)

    X1 = _residual(methods, th, params, X, "ln1", layer, cfg, msa)  # X'_ℓ

    def mlp(h2):
        if _fuse_mlp(methods, bp, h2, layer, cfg):  # frozen, no seam inside: the same numbers as one node (nn/ff.py)
            M = frozen_mlp(h2, bp["mlp"]["W_1"], bp["mlp"]["b_1"], bp["mlp"]["W_2"], bp["mlp"]["b_2"])  # (B, T, d)
            return _seam(methods, th, "mlp", _seam(methods, th, "after", M, layer=layer, name="mlp", cfg=cfg),
                         x_norm=h2, x_resid=X1, layer=layer, cfg=cfg)
        if cfg.act == "swiglu":  # SiLU(h W_gᵀ) ⊙ h W_1ᵀ (gate, up)
            H = swiglu(_proj(methods, th, bp, h2, layer, "gate", cfg), _proj(methods, th, bp, h2, layer, "mlp1", cfg))
        elif _fuse_mlp1(methods, bp, h2, layer, cfg):  # the same numbers as one node (nn/ff.py)
            H = linear_gelu(h2, bp["mlp"]["W_1"], bp["mlp"]["b_1"])  # (B, T, d_ff)
        elif _plain_mlp1(methods, bp, layer, cfg) and not _traced(bp, h2):  # a forward pass alone: the same numbers
            H = linear_gelu_values(h2, bp["mlp"]["W_1"], bp["mlp"]["b_1"], exact=cfg.act == "gelu_erf")
        else:
            H = act(_proj(methods, th, bp, h2, layer, "mlp1", cfg))  # (B, T, d_ff)
        x_norm = h2 if any(m.on_mlp is not None for m in methods) else None  # read by the "mlp" seam only
        del h2  # so that LN₂(X') is freed now when nothing else holds it (W₁ frozen: no dW₁ = gᵀ h2)
        H = _seam(methods, th, "ff_hidden", H, layer=layer, cfg=cfg)
        M = _proj(methods, th, bp, H, layer, "mlp2", cfg)  # (B, T, d)
        M = _seam(methods, th, "after", M, layer=layer, name="mlp", cfg=cfg)
        return _seam(methods, th, "mlp", M, x_norm=x_norm, x_resid=X1, layer=layer, cfg=cfg)

    return _residual(methods, th, params, X1, "ln2", layer, cfg, mlp)  # X_ℓ


def _plain_mlp1(methods, bp, layer, cfg: Config) -> bool:
    """Whether mlp1 is the plain GELU(h2 W₁ᵀ + b₁): a GELU activation, a bias, a W₁ that is
    not block-quantized (that goes through quant.linear), no method touching mlp1's "linear"
    seam in this block."""
    if cfg.act not in ("gelu_tanh", "gelu_erf") or not cfg.bias or LINEARS["mlp1"] != ("mlp", "W_1", "b_1"):
        return False
    if quant.is_quantized(bp["mlp"]["W_1"]):
        return False
    return not any(("linear", layer, "mlp1") in m.hook_points(cfg.N) for m in methods)


def _traced(bp, h2) -> bool:
    """Whether mlp1's input or weights are traced (a gradient is being taken through them)."""
    return isbox(h2) or isbox(bp["mlp"]["W_1"]) or isbox(bp["mlp"].get("b_1"))


def _fuse_mlp1(methods, bp, h2, layer, cfg: Config) -> bool:
    """Whether GELU(h2 W₁ᵀ + b₁) may run as the one node ``linear_gelu``: a plain mlp1
    (``_plain_mlp1``) with the tanh GELU, and something traced (the fused node forms GELU'
    for the backward pass, wasted work in a forward pass alone: ``linear_gelu_values``)."""
    return cfg.act == "gelu_tanh" and _plain_mlp1(methods, bp, layer, cfg) and _traced(bp, h2)


def _fuse_mlp(methods, bp, h2, layer, cfg: Config) -> bool:
    """Whether the whole MLP may run as the one node ``frozen_mlp``, which recomputes U = h2 W₁ᵀ + b₁
    in the backward pass instead of keeping GELU'(U): MINIPEFT_RECOMPUTE=mlp (``runtime.recompute``),
    the conditions of ``_fuse_mlp1``, W₁, b₁, W₂, b₂ all frozen, and no method touching the MLP
    between h2 and W₂'s output (mlp1's or mlp2's "linear" seam, mlp2's input, "ff_hidden")."""
    p = bp["mlp"]
    if not _fuse_mlp1(methods, bp, h2, layer, cfg) or runtime.recompute() != "mlp":
        return False
    if LINEARS["mlp2"] != ("mlp", "W_2", "b_2"):
        return False
    if quant.is_quantized(p["W_2"]) or any(isbox(p[k]) for k in ("W_1", "b_1", "W_2", "b_2")) or not isbox(h2):
        return False
    inside = {("linear", layer, "mlp2"), ("linear_in", layer, "mlp2"), ("ff_hidden", layer, None)}
    return not any(inside & m.hook_points(cfg.N) for m in methods)


def _row_masks(x, cfg: Config, T0: int, T: int):
    """(visible, pooled) for the T rows after the tokens seam; visible is None when nothing is padded.

    visible (B, T) bool: keys that may be read; rows the tokens seam inserted after row 0
    (T − T0 of them; before row 0 with cls="no_cls") are visible. pooled (B, T): 1/(real input
    tokens) on the real input rows, 0 on padding and inserted rows — the weights of "mean"
    pooling ("last" reads the last row where it is > 0).
    """
    mask = text_parts(to_host(x))[2] if cfg.front == "text" and x.ndim == 3 else None
    if mask is None:
        mask = onp.ones((x.shape[0], T0 - cfg.n_cls), dtype=bool)
        padded = False
    else:
        mask = mask.astype(bool)
        padded = not mask.all()
    B, k = mask.shape[0], _insert_at(cfg)
    real = onp.concatenate([onp.ones((B, cfg.n_cls), bool), mask], axis=1)  # (B, T0)
    inserted = onp.zeros((B, T - T0), bool)
    pooled = onp.concatenate([real[:, :k], inserted, real[:, k:]], axis=1)  # real input rows
    if cfg.n_cls:
        pooled[:, 0] = False  # a learned x₀ is not an input token
    visible = onp.concatenate([real[:, :k], ~inserted, real[:, k:]], axis=1)
    return (visible if padded else None), pooled / pooled.sum(axis=1, keepdims=True)


def _insert_at(cfg: Config) -> int:
    """The row where the tokens seam inserts prompts: 1 (after CLS / row 0), 0 with cls="no_cls"."""
    return 0 if cfg.cls == "no_cls" else 1


def _positions(cfg: Config, T0: int, T: int, start: int = 0):
    """Rotary positions (T,) of the rows after the tokens seam: the T0 model rows get
    start, start+1, …; the T − T0 inserted prompt rows get 0 (no rotation)."""
    k, real = _insert_at(cfg), start + onp.arange(T0)
    return onp.concatenate([real[:k], onp.zeros(T - T0, int), real[k:]])  # (T,)


def _causal(visible, T: int, n_past: int = 0):
    """The per-query key mask of a causal model: (1 or B, T, n_past + T) bool, query t seeing
    keys s ≤ n_past + t (and ``visible``'s (B, T) key mask, padding False, when given)."""
    tri = onp.tril(onp.ones((T, n_past + T), bool), k=n_past)[None]  # (1, T, S)
    return tri if visible is None else tri & visible[:, None, :]


def pool(params, X, weights, cfg: Config):
    """What the head reads.  X (B, T, d) -> (B, d).

        cls     x₀ = X[:, 0]
        mean    Σ_t w_t X_t with w_t = 1/n_real on the real input tokens (padding and prompts 0)
        pooler  tanh(x₀ W_pᵀ + b_p)   (BERT's pooler)
        last    X[:, t_last], the last real input token (a causal decoder's summary)
    """
    if cfg.pool == "cls":
        return X[:, 0]
    if cfg.pool == "last":
        T = weights.shape[1]
        last = T - 1 - onp.argmax(weights[:, ::-1] > 0, axis=1)  # (B,) index of the last real row
        return X[onp.arange(X.shape[0]), last]
    if cfg.pool == "mean":
        return np.sum(X * like(weights.astype(X.dtype), X)[..., None], axis=1)
    return np.tanh(linear(X[:, 0], params["pooler"]["W"], params["pooler"]["b"]))


def hidden(params, x, cfg: Config, methods=(), trace=None, cache=None, checked=False):
    """(LN_f(X_N) (pre-LN; X_N post-LN) (B, T, d), pooling weights (B, T) on the host): every
    row before the head, with the weights ``pool`` reads (``_row_masks``).

    ``trace``, if a dict, receives "hidden": [Z₀ after the tokens seam, X_1, …, X_N]
    and "attn": [A_1, …, A_N], A_ℓ (B, h, T, S) the attention weights of block ℓ.
    ``cache``: a ``KVCache`` (causal RoPE models): filled at the first call, extended by
    later ones, whose x holds only the new tokens (module docstring).
    ``checked``: the caller already ran ``check_model`` on these params and methods and
    ``check_batch`` on x, on the model's device (``fit``, once, before its steps): the
    per-call checks are skipped.
    """
    if not checked:
        _check_params(params, cfg)
    if cache is not None and (cfg.pos != "rope" or not cfg.causal):
        raise ValueError(f"cache: a KV cache needs a causal model with rotary positions (causal=True, pos='rope'), "
                         f"got causal={cfg.causal}, pos={cfg.pos!r}")
    ref = anchor(params)
    if not checked:  # (what check_model and check_batch do, once, in fit)
        x = like(check_batch(x, cfg, ref.dtype), ref)  # on the model's device
        _check_methods(params, methods)
    th = prepared(params, methods, cfg)  # once per forward pass, shared by every block
    L = _seam(methods, th, "inputs", np.zeros_like(ref, shape=(x.shape[0], 0, cfg.d)), cfg=cfg)
    offset = sum(m.position_offset for m in methods)  # peft's prefix tuning: positions from p
    if (offset or L.shape[1]) and cfg.pos != "learned":
        raise ValueError(f"placement: 'peft' (HF peft's BERT conventions) needs a learned position table, the "
                         f"model has pos={cfg.pos!r}; use placement='minipeft' on a RoPE decoder")
    X = embed(params, x, cfg, L if L.shape[1] else None, offset)  # (B, k + T0, d)
    T0 = X.shape[1]
    n_past = cache.n_rows if cache is not None else 0
    if not n_past:  # decoding with a cache: prompt rows are already in it
        X = _seam(methods, th, "tokens", X, cfg=cfg)  # (B, T, d), T = T0 (+ prompts)
    k = L.shape[1]
    visible, weights = _row_masks(x, cfg, T0 - k, X.shape[1] - k)  # host arrays
    if k:  # the k rows in front of row 0 ("inputs" seam): visible keys, not pooled
        weights = onp.concatenate([onp.zeros((weights.shape[0], k)), weights], axis=1)
        visible = None if visible is None else onp.concatenate([onp.ones((visible.shape[0], k), bool), visible],
                                                               axis=1)
    positions = _positions(cfg, T0, X.shape[1], cache.next_pos if cache is not None else 0)
    mask = _causal(visible, X.shape[1], n_past) if cfg.causal else visible
    if mask is not None:
        mask = like(mask, X)
    if trace is not None:
        trace["hidden"] = [X]
    for layer in range(cfg.N):
        X = block(params, X, layer, cfg, methods, trace, th, mask, positions, cache)
        if trace is not None:
            trace["hidden"].append(X)
    if cache is not None:
        cache.next_pos += T0
    if cfg.has_ln_f:
        X = _norm(params["ln_f"], X, cfg)
        X = _seam(methods, th, "after", X, layer=None, name="ln_f", cfg=cfg)
    extra = X.shape[1] - weights.shape[1]  # rows a layer_in method (VPT-Deep) inserted after row 0
    if extra:
        weights = onp.concatenate([weights[:, :1], onp.zeros((weights.shape[0], extra)), weights[:, 1:]], axis=1)
    return X, weights


def features(params, x, cfg: Config, methods=(), trace=None, checked=False):
    """pool(LN_f(X_N)) (pre-LN) or pool(X_N) (post-LN), the representation the head reads.  x -> (B, d).

    ``trace``, ``checked``: as ``hidden``'s.
    """
    X, weights = hidden(params, x, cfg, methods, trace, checked=checked)
    return pool(params, X, weights, cfg)  # (B, d)


def lm_head(params, H):
    """The tied LM head: logits = H W_tokᵀ (+ b when a merged SSF on RMSNorm_f put one in
    params["head"]).  H (..., d) -> (..., vocab). Call it on the rows that need logits only."""
    b = params["head"]["b"] if "head" in params else None
    return quant.linear(H, params["embed"]["W_tok"], b)  # W_tok a float array, or Q8_0 blocks


def forward(params, x, cfg: Config, methods=(), trace=None, checked=False):
    """Logits y = Head(features) = f Wᵀ + b (head="tied_lm": f W_tokᵀ, the next-token logits at
    the pooled row, pool="last").  x (see ``check_batch``) -> (B, n_classes).
    ``checked``: as ``hidden``'s."""
    f = features(params, x, cfg, methods, trace, checked)
    if cfg.head == "tied_lm":
        return lm_head(params, f)
    return linear(f, params["head"]["W"], params["head"]["b"])


def check_model(params, cfg: Config, methods=()) -> None:
    """The model-side checks every forward pass runs (``_check_params``: the backbone's shapes
    against cfg; ``_check_methods``: the active methods' invariants), callable once by a loop
    that then calls ``forward(..., checked=True)`` (``train.fit``). ValueError naming the field."""
    _check_params(params, cfg)
    _check_methods(params, methods)


def _check_params(params, cfg: Config):
    """ValueError when the backbone in ``params`` is not one of ``cfg``'s shape.

    Checks everything the shapes can tell: the front (embed.W or embed.W_tok), patch size
    and channels (W is d × channels·patch²), vocab, N, d, d_ff, the position table. h and
    eps leave no trace in the shapes: a saved backbone carries its config (``load_backbone``
    returns it in info["config"]; adapter and merged files record it).
    """
    hint = "; pass the config the params were built with (a saved backbone carries it)"
    emb = params["embed"]
    N, pos = len(params["blocks"]), tuple(emb["pos"].shape) if "pos" in emb else (0, cfg.d)
    if N != cfg.N or pos != ((cfg.n_positions if cfg.pos == "learned" else 0), cfg.d):
        raise ValueError(f"params: the backbone has N={N} blocks and a position table of shape {pos}, but cfg "
                         f"says N={cfg.N} and ({cfg.n_positions}, {cfg.d}) (1 + tokens, d){hint}")
    key, want = (("W", (cfg.d, cfg.patch_dim)) if cfg.front == "vision" else ("W_tok", (cfg.vocab, cfg.d)))
    if key not in emb:
        other = "text" if cfg.front == "vision" else "vision"
        raise ValueError(f"params: cfg.front={cfg.front!r} needs embed.{key}, the backbone has none (a {other} "
                         f"backbone?){hint}")
    got = tuple(emb[key].shape)
    if got != want:
        what = ("d × channels·patch² = " if cfg.front == "vision" else "vocab × d = ") + str(want)
        raise ValueError(f"params: embed.{key} has shape {got}, cfg says {what} (patch={cfg.patch}, "
                         f"channels={cfg.channels}, vocab={cfg.vocab}){hint}")
    for ell, bp in enumerate(params["blocks"]):
        for mod, leaf, shape in (("attn", "W_q", (cfg.d, cfg.d)), ("attn", "W_k", (cfg.d_kv, cfg.d)),
                                 ("mlp", "W_1", (cfg.d_ff, cfg.d))):
            got = tuple(bp[mod][leaf].shape)
            if got != shape:
                raise ValueError(f"params: blocks.{ell}.{mod}.{leaf} has shape {got}, cfg says {shape} "
                                 f"(d={cfg.d}, d_kv={cfg.d_kv}, d_ff={cfg.d_ff}){hint}")
    if cfg.head == "tied_lm":
        return
    if "head" not in params or "W" not in params["head"]:
        raise ValueError(f"params: cfg.head='classes' needs head.W (n_classes, d), the params have none{hint}")
    hw = tuple(params["head"]["W"].shape)
    if len(hw) != 2 or hw[1] != cfg.d:
        raise ValueError(f"params: head.W has shape {hw}, expected (n_classes, d={cfg.d}){hint}")


def _check_methods(params, methods):
    """The invariants of a list of active methods, checked before any computation: distinct
    names, θ attached where a hook reads it, and at most one method whose prompts replace
    rows at every block's input (``prompt_seam == "layer_in"``, VPT-Deep: a second one would
    overwrite the first's rows), and no prompts in front of [CLS] ("inputs") together with
    prompts inserted after row 0."""
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"methods: each active method needs its own name, got {names}")
    deep = [m.name for m in methods if m.prompt_seam == "layer_in"]
    if len(deep) > 1:
        raise ValueError(f"methods: at most one VPT-Deep (prompt_seam 'layer_in') can be active, got {deep}")
    front = [m.name for m in methods if m.prompt_seam == "inputs"]
    after = [m.name for m in methods if m.prompt_seam in ("tokens", "layer_in")]
    if front and after:  # rows "after row 0" would land among the rows in front of [CLS]
        raise ValueError(f"methods: prompts in front of [CLS] (placement='peft': {front}) cannot be combined with "
                         f"prompts inserted after row 0 ({after})")
    for m in methods:
        if m.needs_params and m.name not in params:
            raise ValueError(f"methods: params has no entry {m.name!r} for method {type(m).__name__}; "
                             f"call attach(params, methods, cfg) first (or it was merged already)")

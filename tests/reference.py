"""The model minipeft computes, written again in plain NumPy: read this file first.

Every function here is one equation of /work/shared/notes/equations.md, section
"Transformer" (the pre-LN ViT), with the places where the PEFT methods of the later
sections insert something. It uses NumPy only: no autograd, no function of minipeft, so
when a test finds ``minipeft.forward`` equal to ``forward`` below (to float64 rounding),
the two were computed by different code from the same equations.

Conventions (equations.md, "Conventions"): row vectors; a linear layer stores
W ∈ R^{d_out×d_in} and computes x Wᵀ + b; B examples, T tokens, d width, h heads,
d_h = d/h, d_ff MLP width, p prompt/prefix length, d̂ adapter width.

    layer_norm, gelu       LN(x), GELU(x)
    adapter                ReLU(h W_downᵀ + b_down) W_upᵀ + b_up
    naive_attention        softmax(q·k/√d_h) v, one example, head and query at a time
    rows, patches          the same rows for every example; images cut into patches I_j
    embed                  Z₀ = [x₀; E₀] + pos
    after_cls              [x₀; P; …]: prompt rows right after CLS
    linear                 y = x (W₀ + ΔW)ᵀ + b, then l ⊙ y, then γ ⊙ y + β
    block                  X_ℓ from X_{ℓ-1}, with the block's insertions
    forward                logits = Head(LN_f(X_N)[CLS])

``cfg`` is anything with the attributes h, eps, front and patch (a minipeft ``Config``
serves: only those numbers are read). The tiny configurations the tests share are at
the end, as plain numbers; conftest.py makes ``Config`` objects of them.
"""
import math

import numpy as np


# ---------------------------------------------------------------- the pieces
def layer_norm(x, gamma, beta, eps):
    """LN(x) = γ ⊙ (x − μ(x)) / sqrt(σ²(x) + ε) + β, over the last axis.  (..., d) -> (..., d)."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def gelu(x):
    """GELU(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³))), the tanh form ViT uses.  Same shape."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def adapter(a, h):
    """The bottleneck of "Adapters": ReLU(h W_downᵀ + b_down) W_upᵀ + b_up.

    a: {"W_down": (d̂, d), "b_down": (d̂,), "W_up": (d, d̂), "b_up": (d,)};  h (B, T, d) -> (B, T, d).
    """
    return np.maximum(h @ a["W_down"].T + a["b_down"], 0.0) @ a["W_up"].T + a["b_up"]


def naive_attention(Q, K, V, h):
    """concat_heads(Attn(Q, K, V)), Attn = softmax(Q Kᵀ / sqrt(d_h)) V, by loops.

    For example b, head j (columns j·d_h … (j+1)·d_h) and query t:
        w_s = softmax_s(q_t · k_s / √d_h),   z_t = Σ_s w_s v_s.
    Q (B, T, d), K and V (B, S, d) -> (B, T, d).  S may differ from T (prefix keys).
    """
    B, T, d = Q.shape
    d_h = d // h
    Z = np.zeros_like(Q)
    for b in range(B):
        for j in range(h):
            cols = slice(j * d_h, (j + 1) * d_h)
            for t in range(T):
                scores = np.array([Q[b, t, cols] @ K[b, s, cols] for s in range(K.shape[1])]) / math.sqrt(d_h)
                w = np.exp(scores - scores.max())
                w /= w.sum()
                Z[b, t, cols] = sum(w[s] * V[b, s, cols] for s in range(K.shape[1]))
    return Z


def rows(P, B):
    """The same (p, d) rows for each of B examples.  -> (B, p, d)."""
    return np.repeat(np.asarray(P)[None], B, 0)


# ------------------------------------------------------------------ the input
def patches(images, P):
    """Cut (B, C, H, W) images into P×P patches I_j, row-major, each flattened.  -> (B, m, C·P²)."""
    B, _, H, W = images.shape
    return np.stack([images[:, :, i * P:(i + 1) * P, j * P:(j + 1) * P].reshape(B, -1)
                     for i in range(H // P) for j in range(W // P)], 1)


def embed(e, x, cfg):
    """Z₀ = [x₀; E₀] + pos ("Transformer", Input), the CLS token x₀ first.

    vision: E₀ = patches(x) W_eᵀ + b_e   (x (B, C, H, W); W_e (d, C·P²))
    text:   E₀ = W_tok[ids]              (x (B, n) token ids; W_tok (vocab, d))
    e: params["embed"], with "cls" x₀ (d,) and "pos" (n_positions, d).  -> (B, 1 + n, d).
    """
    E = patches(x, cfg.patch) @ e["W"].T + e["b"] if cfg.front == "vision" else e["W_tok"][x]  # (B, n, d)
    Z = np.concatenate([rows(e["cls"][None], len(x)), E], 1)  # (B, 1 + n, d)
    return Z + e["pos"][:Z.shape[1]]


def after_cls(X, P, replace=0):
    """[x; P; rest]: the prompt rows P (p, d) right after CLS, in place of the ``replace``
    rows that stood there.  (B, T, d) -> (B, T − replace + p, d)."""
    return np.concatenate([X[:, :1], rows(P, len(X)), X[:, 1 + replace:]], 1)


# -------------------------------------------------------------- one block
# The insertions of one block, a dict ``ins`` whose keys are all optional (an empty dict:
# the frozen block). ``name`` is a projection q, k, v, o, mlp1, mlp2 or a LayerNorm ln1, ln2.
#
#   ins["delta"][name]   ΔW (d_out, d_in)      W = W₀ + ΔW                 "Reparameterisation", LoRA
#   ins["scale"][name]   l (d_out,)            y ← l ⊙ y                   "(IA)³"
#   ins["l_ff"]          l_ff (d_ff,)          H ← l_ff ⊙ GELU(x W₁ᵀ + b₁)  "(IA)³"
#   ins["ssf"][name]     (γ, β), (width,) each y ← γ ⊙ y + β, after a linear or an LN   "SSF"
#   ins["P_k"], ["P_v"]  (p, d) each           K' = [P_k; K], V' = [P_v; V] "Prefix tuning"
#   ins["serial"][site]  adapter dict          O ← O + adapter(O) at site "attn" (after W_o),
#                                              M ← M + adapter(M) at "mlp" (after W₂)   "Adapters: serial"
#   ins["parallel"]      (adapter dict, s, input)  M ← M + s · adapter(LN₂(X') if input is
#                                              "normed", X' if "residual")  "Adapters: AdaptFormer"
#   ins["P"]             (p, d)                VPT-Deep's P_{ℓ-1}, read by ``forward``
#
# On the MLP branch the serial adapter acts first, then the parallel one adds s·X̃.

def linear(x, W, b, name, ins):
    """One projection with its insertions, in this order:

        y = x (W₀ + ΔW)ᵀ + b;   y ← l ⊙ y;   y ← γ ⊙ y + β.
    x (B, T, d_in), W (d_out, d_in), b (d_out,) -> (B, T, d_out).
    """
    y = x @ (W + ins.get("delta", {}).get(name, 0.0)).T + b
    if name in ins.get("scale", {}):
        y = ins["scale"][name] * y
    return ssf(y, name, ins)


def ssf(y, name, ins):
    """y ← γ ⊙ y + β where ins["ssf"] has a pair for ``name``, else y.  Same shape."""
    if name not in ins.get("ssf", {}):
        return y
    gamma, beta = ins["ssf"][name]
    return gamma * y + beta


def block(bp, X, cfg, ins):
    """X_ℓ from X_{ℓ-1} (pre-LN, "Transformer"):

        X'_ℓ = X_{ℓ-1} + MSA(LN₁(X_{ℓ-1})),  MSA(X) = concat_heads(Attn(Q, K, V)) W_oᵀ + b_o
        X_ℓ  = X'_ℓ + MLP(LN₂(X'_ℓ)),        MLP(x) = GELU(x W₁ᵀ + b₁) W₂ᵀ + b₂
    bp: params["blocks"][ℓ-1]; ins: the block's insertions (see above).  (B, T, d) -> (B, T, d).
    """
    a, m, serial = bp["attn"], bp["mlp"], ins.get("serial", {})
    h1 = ssf(layer_norm(X, bp["ln1"]["gamma"], bp["ln1"]["beta"], cfg.eps), "ln1", ins)
    Q, K, V = (linear(h1, a["W_" + c], a["b_" + c], c, ins) for c in "qkv")  # (B, T, d) each
    if "P_k" in ins:
        K = np.concatenate([rows(ins["P_k"], len(X)), K], 1)  # (B, p + T, d)
        V = np.concatenate([rows(ins["P_v"], len(X)), V], 1)
    O = linear(naive_attention(Q, K, V, cfg.h), a["W_o"], a["b_o"], "o", ins)  # (B, T, d)
    if "attn" in serial:
        O = O + adapter(serial["attn"], O)
    X1 = X + O  # X'_ℓ

    h2 = ssf(layer_norm(X1, bp["ln2"]["gamma"], bp["ln2"]["beta"], cfg.eps), "ln2", ins)
    H = gelu(linear(h2, m["W_1"], m["b_1"], "mlp1", ins))  # (B, T, d_ff)
    if "l_ff" in ins:
        H = ins["l_ff"] * H
    M = linear(H, m["W_2"], m["b_2"], "mlp2", ins)  # (B, T, d)
    if "mlp" in serial:
        M = M + adapter(serial["mlp"], M)
    if "parallel" in ins:
        ad, s, source = ins["parallel"]
        M = M + s * adapter(ad, h2 if source == "normed" else X1)  # + s·X̃_ℓ
    return X1 + M  # X_ℓ


# ---------------------------------------------------------- the whole model
def forward(params, x, cfg, prompt=None, blocks=None, ln_f_ssf=None):
    """Logits y = Head(LN_f(X_N)[CLS]) = LN_f(X_N)[:, 0] W_headᵀ + b_head  ("Transformer").

    prompt: (p, d) rows after CLS at the input, [x₀; P; E₀] ("Prompt tuning", "VPT-Shallow").
    blocks: one insertion dict per block, or None (a dict None or {}: the frozen block). A block whose
        dict has "P" (VPT-Deep's P_{ℓ-1}, (p, d)) gets those rows after CLS; from the
        second such block on they replace the previous block's prompt outputs:
        [x_ℓ, _, E_ℓ] = L_ℓ([x_{ℓ-1}, P_{ℓ-1}, E_{ℓ-1}]).
    ln_f_ssf: (γ, β) (d,) each, SSF after the final LayerNorm.
    params: minipeft's nested dict of arrays (only read).  x: images or ids -> (B, n_classes).
    """
    X = embed(params["embed"], x, cfg)  # (B, 1 + n, d)
    if prompt is not None:
        X = after_cls(X, prompt)  # (B, 1 + p + n, d)
    deep_rows = 0  # VPT-Deep rows standing after CLS
    for ell, bp in enumerate(params["blocks"]):
        ins = (blocks[ell] if blocks else None) or {}
        if "P" in ins:
            X = after_cls(X, ins["P"], replace=deep_rows)
            deep_rows = len(ins["P"])
        X = block(bp, X, cfg, ins)
    X = layer_norm(X, params["ln_f"]["gamma"], params["ln_f"]["beta"], cfg.eps)
    if ln_f_ssf is not None:
        X = ln_f_ssf[0] * X + ln_f_ssf[1]
    return X[:, 0] @ params["head"]["W"].T + params["head"]["b"]  # CLS row (B, d) -> (B, n_classes)


# ----------------------------------------------------- the tests' tiny models
#: A 2-layer ViT on 8×8 one-channel images, patch 4: T = 1 + 4 tokens.
TINY = dict(d=16, h=2, N=2, d_ff=24, n_classes=3, image_size=8, patch=4)
#: A 2-layer text model: vocabulary of 11 ids, at most 6 of them, T ≤ 1 + 6.
TINY_TEXT = dict(d=16, h=4, N=2, d_ff=32, n_classes=3, front="text", vocab=11, max_len=6)

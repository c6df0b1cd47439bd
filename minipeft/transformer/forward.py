"""The forward pass, with the named seams where PEFT methods enter.

    X'_ℓ = X_{ℓ-1} + MSA(LN₁(X_{ℓ-1}))            (equations.md, "Transformer")
    X_ℓ  = X'_ℓ   + MLP(LN₂(X'_ℓ))
    y    = Head(LN_f(X_N)[CLS])

Seams. Each is a call ``_seam(methods, thetas, "<seam>", value, **ctx)`` that hands
``value`` through every active method's hook ``on_<seam>``, in the order the methods
are listed, and is the identity when none has one. A hook is called as
``hook(theta_m, value, **ctx)`` and returns the new value; θ_m is
``method.prepare(params[method.name], cfg)``, computed once per forward pass (θ itself
for every method but reparameterised prefix tuning, whose MLP makes its table there).
``SEAMS`` below is the one list of seams; ``methods.Method`` derives its hooks from it.

    seam        value (shape)                          ctx                 who uses it
    tokens      Z₀ = [x₀; E₀]  (B, 1+n, d)             cfg                 prompt tuning, VPT-Shallow
    layer_in    X_{ℓ-1}  (B, T, d) entering block ℓ    layer, cfg          VPT-Deep
    linear      y = x Wᵀ + b (B, T, d_out)             x, layer, name, cfg LoRA, (IA)³, SSF
                name ∈ q, k, v, o, mlp1, mlp2
    kv          (K, V)  (B, S, d) each                 layer, cfg          prefix tuning
    ff_hidden   GELU(x W₁ᵀ + b₁)  (B, T, d_ff)         layer, cfg          (IA)³ l_ff
    mlp         MLP(LN₂(X'))  (B, T, d)                x_norm, x_resid,    AdaptFormer
                                                        layer, cfg
    after       a module's output (B, T, d);           layer, name, cfg    serial adapters,
                name ∈ ln1, attn, ln2, mlp, ln_f                               SSF on LN

``layer`` counts blocks from 0 (block ℓ of the notes is layer ℓ-1); it is None at ln_f.
"attn" is after the output projection, "mlp" after W₂, both before the residual add;
on the MLP branch "after" runs before "mlp".
"""
from __future__ import annotations

import autograd.numpy as np

from ..backend import like
from ..nn import attention, gelu, layer_norm, linear, prepend
from .config import Config
from .inputs import check_batch
from .schema import LINEARS

#: the seams, in the order a forward pass meets them; a method fills seam s with ``on_<s>``
SEAMS = ("tokens", "layer_in", "linear", "kv", "ff_hidden", "mlp", "after")


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
    mod, W, b = LINEARS[name]
    return _seam(methods, thetas, "linear", linear(x, bp[mod][W], bp[mod][b]), x=x, layer=layer, name=name, cfg=cfg)


def patchify(images, patch):
    """(B, C, H, W) -> (B, m, C·patch²), patches in row-major order (I_j of the notes)."""
    B, C, H, W = images.shape
    x = np.reshape(images, (B, C, H // patch, patch, W // patch, patch))
    x = np.transpose(x, (0, 2, 4, 1, 3, 5))  # (B, H/P, W/P, C, P, P)
    return np.reshape(x, (B, (H // patch) * (W // patch), C * patch * patch))


def embed(params, x, cfg: Config):
    """Z₀ = [x₀; E₀] + pos.  vision: E₀ = Embed(I_j); text: E₀ = W_tok[ids].  -> (B, 1+n, d)."""
    p = params["embed"]
    if cfg.front == "vision":
        E = linear(patchify(x, cfg.patch), p["W"], p["b"])  # (B, m, d)
    else:
        E = p["W_tok"][x]  # (B, n, d)
    Z = prepend(p["cls"][None], E)  # (B, 1+n, d)
    return Z + p["pos"][: Z.shape[1]]


def block(params, X, layer, cfg: Config, methods=(), trace=None, thetas=None):
    """One pre-LN block ℓ = layer + 1 with all its seams.  (B, T, d) -> (B, T, d).

    thetas: ``prepared(params, methods, cfg)`` (computed here when None).
    """
    th = prepared(params, methods, cfg) if thetas is None else thetas
    bp = params["blocks"][layer]
    X = _seam(methods, th, "layer_in", X, layer=layer, cfg=cfg)

    h1 = layer_norm(X, bp["ln1"]["gamma"], bp["ln1"]["beta"], cfg.eps)
    h1 = _seam(methods, th, "after", h1, layer=layer, name="ln1", cfg=cfg)
    Q = _proj(methods, th, bp, h1, layer, "q", cfg)
    K = _proj(methods, th, bp, h1, layer, "k", cfg)
    V = _proj(methods, th, bp, h1, layer, "v", cfg)
    K, V = _seam(methods, th, "kv", (K, V), layer=layer, cfg=cfg)  # (B, S, d), S ≥ T
    Z, A = attention(Q, K, V, cfg.h, return_weights=True)  # (B, T, d), (B, h, T, S)
    O = _proj(methods, th, bp, Z, layer, "o", cfg)
    O = _seam(methods, th, "after", O, layer=layer, name="attn", cfg=cfg)
    X1 = X + O  # X'_ℓ

    h2 = layer_norm(X1, bp["ln2"]["gamma"], bp["ln2"]["beta"], cfg.eps)
    h2 = _seam(methods, th, "after", h2, layer=layer, name="ln2", cfg=cfg)
    H = gelu(_proj(methods, th, bp, h2, layer, "mlp1", cfg))  # (B, T, d_ff)
    H = _seam(methods, th, "ff_hidden", H, layer=layer, cfg=cfg)
    M = _proj(methods, th, bp, H, layer, "mlp2", cfg)  # (B, T, d)
    M = _seam(methods, th, "after", M, layer=layer, name="mlp", cfg=cfg)
    M = _seam(methods, th, "mlp", M, x_norm=h2, x_resid=X1, layer=layer, cfg=cfg)
    if trace is not None:
        trace.setdefault("attn", []).append(A)
    return X1 + M  # X_ℓ


def features(params, x, cfg: Config, methods=(), trace=None):
    """LN_f(X_N)[CLS], the representation the head reads.  x -> (B, d).

    ``trace``, if a dict, receives "hidden": [Z₀ after the tokens seam, X_1, …, X_N]
    and "attn": [A_1, …, A_N], A_ℓ (B, h, T, S) the attention weights of block ℓ.
    """
    _check_params(params, cfg)
    x = like(check_batch(x, cfg, params["embed"]["pos"].dtype), params["embed"]["pos"])  # on the model's device
    _check_methods(params, methods)
    th = prepared(params, methods, cfg)  # once per forward pass, shared by every block
    X = embed(params, x, cfg)
    X = _seam(methods, th, "tokens", X, cfg=cfg)  # (B, T, d), T = 1 + n (+ prompts)
    if trace is not None:
        trace["hidden"] = [X]
    for layer in range(cfg.N):
        X = block(params, X, layer, cfg, methods, trace, th)
        if trace is not None:
            trace["hidden"].append(X)
    X = layer_norm(X, params["ln_f"]["gamma"], params["ln_f"]["beta"], cfg.eps)
    X = _seam(methods, th, "after", X, layer=None, name="ln_f", cfg=cfg)
    return X[:, 0]  # CLS row, (B, d)


def forward(params, x, cfg: Config, methods=(), trace=None):
    """Logits y = Head(LN_f(X_N)[CLS]) = CLS Wᵀ + b.  x (see ``check_batch``) -> (B, n_classes)."""
    f = features(params, x, cfg, methods, trace)
    return linear(f, params["head"]["W"], params["head"]["b"])


def _check_params(params, cfg: Config):
    """ValueError when the backbone in ``params`` is not one of ``cfg``'s shape (N blocks, width d)."""
    N, pos = len(params["blocks"]), tuple(params["embed"]["pos"].shape)
    if N != cfg.N or pos != (cfg.n_positions, cfg.d):
        raise ValueError(f"params: the backbone has N={N} blocks and a position table of shape {pos}, but cfg "
                         f"says N={cfg.N} and ({cfg.n_positions}, {cfg.d}) (1 + tokens, d); pass the config the "
                         f"params were built with")


def _check_methods(params, methods):
    """The invariants of a list of active methods, checked before any computation: distinct
    names, θ attached where a hook reads it, and at most one method whose prompts replace
    rows at every block's input (``prompt_seam == "layer_in"``, VPT-Deep: a second one would
    overwrite the first's rows)."""
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"methods: each active method needs its own name, got {names}")
    deep = [m.name for m in methods if m.prompt_seam == "layer_in"]
    if len(deep) > 1:
        raise ValueError(f"methods: at most one VPT-Deep (prompt_seam 'layer_in') can be active, got {deep}")
    for m in methods:
        if m.needs_params and m.name not in params:
            raise ValueError(f"methods: params has no entry {m.name!r} for method {type(m).__name__}; "
                             f"call attach(params, methods, cfg) first (or it was merged already)")

"""The same ViT in PyTorch eager, built from minipeft's parameter dict (the benchmark's twin).

Same weights, same equations (equations.md, "Transformer"; pre-LN, tanh GELU, CLS
first), written the way a student would write them in PyTorch: ``F.linear`` on 3-D
activations, ``F.layer_norm``, an explicit ``softmax(Q Kᵀ / sqrt(d_h)) V`` per head (as
minipeft, which also returns the attention weights), and optionally
``F.scaled_dot_product_attention`` (``sdpa=True``, PyTorch's fused kernel). The PEFT
methods are their equations in torch, nothing imported from minipeft:

    LoRA ("LoRA")                 h = x W₀ᵀ + b + (α/r)(x Aᵀ)Bᵀ   on the adapted projections
    prompt tuning ("Prompt tuning") Z₀ = [x₀; E₀] → [x₀; P_e; E₀]  (after CLS, as minipeft)
    (IA)³ ("(IA)³")               Q, K, V → l_q ⊙ Q, l_k ⊙ K, l_v ⊙ V;  H → l_ff ⊙ H (paper variant)

Frozen tensors have ``requires_grad=False``, so autograd computes no gradient for them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minipeft import tree


def to_torch(params, trainable=lambda path, leaf: True):
    """{path: tensor} for every leaf of ``params``; requires_grad where ``trainable(path, leaf)``.

    The tensors are copies: minipeft's arrays are never touched.
    """
    return {path: torch.tensor(leaf.copy(), requires_grad=bool(trainable(path, leaf)))
            for path, leaf in tree.leaves_with_paths(params)}


def _lora_delta(P, x, layer, target, lora):
    """(α/r)(x Aᵀ)Bᵀ for an adapted (layer, target), else None.  x (B, T, k) -> (B, T, d)."""
    if lora is None:
        return None
    name, scaling = lora
    key = (name, "blocks", layer, target)
    if key + ("A",) not in P:
        return None
    return scaling * F.linear(F.linear(x, P[key + ("A",)]), P[key + ("B",)])


def _scale(P, y, layer, key, ia3):
    """l ⊙ y when (IA)³ has a vector ``key`` (l_q, l_k, l_v, l_ff) in ``layer``, else y."""
    k = (ia3, "blocks", layer, key) if ia3 is not None else None
    return y if k is None or k not in P else P[k] * y


def _proj(P, x, layer, target, W, b, lora, ia3=None):
    """y = x Wᵀ + b (+ the LoRA term), then (IA)³'s l ⊙ y.  (B, T, k) -> (B, T, d)."""
    blk = ("blocks", layer)
    mod = "mlp" if target.startswith("mlp") else "attn"
    y = F.linear(x, P[blk + (mod, W)], P[blk + (mod, b)])
    delta = _lora_delta(P, x, layer, target, lora)
    return _scale(P, y if delta is None else y + delta, layer, "l_" + target, ia3)


def forward(P, x, cfg, lora=None, prompt=None, sdpa=False, ia3=None):
    """Logits of the ViT for images x (B, C, H, W).

    P: {path: tensor} from ``to_torch``; lora: (name, α/r) when LoRA θ lives at
    P[(name, "blocks", ℓ, target, "A"|"B")]; prompt: the key of P_e (p, d) at
    P[(prompt, "P")], inserted after CLS; ia3: the name under which (IA)³'s vectors live
    (P[(ia3, "blocks", ℓ, "l_q" | "l_k" | "l_v" | "l_ff")]).  -> (B, n_classes).
    """
    B = x.shape[0]
    g, p = cfg.image_size // cfg.patch, cfg.patch
    patches = x.reshape(B, cfg.channels, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, -1)
    e = lambda k: P[("embed", k)]  # noqa: E731
    Z = torch.cat([e("cls").expand(B, 1, -1), F.linear(patches, e("W"), e("b"))], 1) + e("pos")  # (B, 1+m, d)
    if prompt is not None:
        Pe = P[(prompt, "P")]
        Z = torch.cat([Z[:, :1], Pe.expand(B, -1, -1), Z[:, 1:]], 1)  # (B, 1+p+m, d)
    d, h = cfg.d, cfg.h
    heads = lambda t: t.reshape(B, -1, h, d // h).transpose(1, 2)  # noqa: E731  (B, h, T, d_h)
    for i in range(cfg.N):
        q = lambda *k: P[("blocks", i) + k]  # noqa: E731
        h1 = F.layer_norm(Z, (d,), q("ln1", "gamma"), q("ln1", "beta"), cfg.eps)
        Q, K, V = (heads(_proj(P, h1, i, t, "W_" + t, "b_" + t, lora, ia3)) for t in "qkv")
        if sdpa:
            Zh = F.scaled_dot_product_attention(Q, K, V)
        else:
            Zh = torch.softmax(Q @ K.transpose(-1, -2) / (d // h) ** 0.5, -1) @ V
        O = _proj(P, Zh.transpose(1, 2).reshape(B, -1, d), i, "o", "W_o", "b_o", lora)
        Z = Z + O
        h2 = F.layer_norm(Z, (d,), q("ln2", "gamma"), q("ln2", "beta"), cfg.eps)
        H = _scale(P, F.gelu(_proj(P, h2, i, "mlp1", "W_1", "b_1", lora), approximate="tanh"), i, "l_ff", ia3)
        Z = Z + _proj(P, H, i, "mlp2", "W_2", "b_2", lora)
    cls = F.layer_norm(Z, (d,), P[("ln_f", "gamma")], P[("ln_f", "beta")], cfg.eps)[:, 0]
    return F.linear(cls, P[("head", "W")], P[("head", "b")])

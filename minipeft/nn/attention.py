"""Multi-head scaled dot-product attention (equations.md, "Transformer").

``attention_composed`` writes the equation with autograd.numpy ops, one line per symbol
(split heads, Q Kᵀ, softmax, ·V, concat heads): the version to read beside the notes.
``attention`` computes the same with two fused primitives, ``attention_weights`` and
``attend``, each with a hand-written VJP: two graph nodes per layer instead of about
fifteen, heads read as strided views of (B, T, d) (copied only where BLAS's plain kernel pays
for it: Kᵀ and Vᵀ of Q Kᵀ and G Vᵀ, ``_transposed``), the key mask added inside softmax's
blocks, and the softmax backward fused into the score gradient, which is formed a group of
heads at a time in one reused buffer and read by ∂Q's and ∂K's products while it is in cache.
Traced without the weights returned (a training step), the two are one node,
``_attention_node``, whose backward forms ∂L/∂A = G Vᵀ in that buffer too, so no (B, h, T, S)
gradient array is made (the same bits as the two nodes). Tests check all agree in value and
gradient (tests/test_kernels.py, tests/test_attention_kernels.py).
"""
from __future__ import annotations

import math

import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp, defvjp_argnums, primitive
from autograd.tracer import isbox

from .primitives import _softmax, _softmax_blocks, _softmax_vjp_of, _Stash, softmax


def split_heads(X, h):
    """(B, T, d) -> (B, h, T, d_h) with d_h = d / h."""
    B, T, d = X.shape
    return np.transpose(np.reshape(X, (B, T, h, d // h)), (0, 2, 1, 3))


def merge_heads(Z):
    """(B, h, T, d_h) -> (B, T, h·d_h): concat_heads."""
    B, h, T, d_h = Z.shape
    return np.reshape(np.transpose(Z, (0, 2, 1, 3)), (B, T, h * d_h))


def prepend(P, X):
    """[P; X] along the sequence axis, P shared over the batch.

    P: (p, d) or (B, p, d), X: (B, n, d) -> (B, p + n, d). Built with an add of zeros
    rather than ``broadcast_to`` (whose VJP fails in autograd, issue 384).
    """
    if P.ndim == 2:
        P = P[None] + np.zeros_like(X, shape=(X.shape[0], 1, 1))  # (B, p, d), zeros on X's device
    return np.concatenate([P, X], axis=1)


# ------------------------------------------------------------------ fused primitives
def _heads(X, h):
    """(B, T, d) -> (B, h, T, d_h) as a strided view (no copy; plain NumPy)."""
    B, T, d = X.shape
    return X.reshape(B, T, h, d // h).transpose(0, 2, 1, 3)


#: where the per-head products A Bᵀ of attention (Q Kᵀ, G Vᵀ) first copy Bᵀ into C order: head
#: width d_h ≤ _NN_MAX_DH and S ≥ _NN_MIN_KEYS keys. There OpenBLAS's plain (NN) kernel on these
#: small matrices beat its kernel for a transposed operand by more than the copy cost; for wider
#: heads or fewer keys it did not (``benchmarks/transpose_bench.py`` times the grid on this
#: machine). The choice depends on the shape only: the same shapes always give the same bits.
_NN_MAX_DH, _NN_MIN_KEYS = 32, 33


def copies_transposed(S, d_h) -> bool:
    """Whether a per-head product A Bᵀ, A (…, T, d_h), B (…, S, d_h) -> (…, T, S) (Q Kᵀ, or
    G Vᵀ: S keys, heads d_h wide), first copies Bᵀ (…, d_h, S) into C order on the host:
    d_h ≤ ``_NN_MAX_DH`` and S ≥ ``_NN_MIN_KEYS`` (the comment above says why)."""
    return d_h <= _NN_MAX_DH and S >= _NN_MIN_KEYS


def _transposed(X):
    """Each head's matrix transposed: (B, h, S, d_h) -> (B, h, d_h, S), for the products A Bᵀ.
    A C-contiguous copy on the host where ``copies_transposed(S, d_h)``, else a view."""
    T = X.swapaxes(-1, -2)
    if type(X) is not onp.ndarray or not copies_transposed(X.shape[-2], X.shape[-1]):
        return T
    out = onp.empty(T.shape, X.dtype)
    onp.copyto(out, T)
    return out


def _heads_matmul(a, b, h):
    """a @ b per head, in concat_heads layout: (B, h, T, ·) @ (B, h, ·, d_h) -> (B, T, h·d_h).

    NumPy writes the products straight into that layout (no transposed copy)."""
    B, _, T, _ = a.shape
    if type(a) is not onp.ndarray or type(b) is not onp.ndarray:  # a device array
        return (a @ b).transpose(0, 2, 1, 3).reshape(B, T, h * b.shape[-1])
    out = onp.empty((B, T, h, b.shape[-1]), dtype=onp.result_type(a, b))
    onp.matmul(a, b, out=out.transpose(0, 2, 1, 3))
    return out.reshape(B, T, h * b.shape[-1])


def key_bias(mask, dtype):
    """The additive score bias of a key mask: 0 where a key is visible, −∞ where it is not.

    mask: (B, S) bool, True = visible  ->  (B, 1, 1, S) in ``dtype`` (broadcast over heads
    and queries); or (B or 1, T, S) per query (a causal mask) -> (B or 1, 1, T, S).
    exp(−∞) = 0, so a hidden key gets exactly zero weight.
    """
    bias = onp.zeros_like(mask, dtype=dtype)
    bias[~mask] = -onp.inf
    return bias[:, None, None, :] if mask.ndim == 2 else bias[:, None]


def _head_groups(A):
    """(batch, head) index tuples covering scores A (B, h, T, S) in groups of whole heads, as
    softmax's blocks (``_softmax_blocks``): a few heads of one batch element, or a few whole
    batch elements."""
    return _softmax_blocks(A, A.shape[:2] + (A.shape[2] * A.shape[3],))


def _grad_buffers(rows, other, A, h):
    """Gradients in concat_heads layout, to be written a group of heads at a time: for each i of
    ``rows`` ({i: (B, n_i)}), out[i] (B, n_i, h, d_h) (d_h from other[i], dtype that of A and
    other[i]) and heads[i], its (B, h, n_i, d_h) view."""
    out = {i: onp.empty(tuple(n) + (h, other[i].shape[-1]), dtype=onp.result_type(A, other[i]))
           for i, n in rows.items()}
    return out, {i: o.transpose(0, 2, 1, 3) for i, o in out.items()}


def _score_grads(dS, g, heads, Kh, Qh):
    """Group g's ∂L/∂S K into heads[0][g] and ∂L/∂Sᵀ Q into heads[1][g], those that are asked for."""
    if 0 in heads:
        onp.matmul(dS, Kh[g], out=heads[0][g])  # ∂L/∂S K
    if 1 in heads:
        onp.matmul(dS.swapaxes(-1, -2), Qh[g], out=heads[1][g])  # ∂L/∂Sᵀ Q


def _merged(out, argnums):
    """out[i] (B, n, h, d_h) -> (B, n, h·d_h) for each i of argnums (concat_heads; no copy)."""
    return tuple(out[i].reshape(out[i].shape[:2] + (out[i].shape[2] * out[i].shape[3],)) for i in argnums)


@primitive
def attention_weights(Q, K, h, mask=None):
    """Attention weights of every head (equations.md, "Transformer").

        A = softmax(Q Kᵀ / sqrt(d_h) + M)        per head; M_s = 0 (key s visible) or −∞ (hidden)

    Q: (B, T, d), K: (B, S, d), mask: None (every key visible), (B, S) bool, True =
    visible, at least one per row, or (B or 1, T, S) per query (causal)  ->  A: (B, h, T, S),
    each row summing to 1, exactly 0 on hidden keys (padding).
    Gradient, with G = ∂L/∂A:  ∂L/∂S = A ⊙ (G − Σ_s G A) (the softmax VJP), then
    ∂L/∂Q = concat_heads(∂L/∂S K) / sqrt(d_h),  ∂L/∂K = concat_heads(∂L/∂Sᵀ Q) / sqrt(d_h)
    (zero in the hidden columns, where A = 0).
    """
    # exercise attention [3 pts] "Transformer": A = softmax(Q Kᵀ / sqrt(d_h) + M) per head, (B, h, T, S), plain NumPy (M: −∞ on hidden keys)
    scale = 1.0 / math.sqrt(Q.shape[-1] // h)
    S = onp.matmul(_heads(Q, h), _transposed(_heads(K, h)))  # Q Kᵀ (B, h, T, S) (Kᵀ copied where that is faster)
    M = None if mask is None else key_bias(mask, S.dtype)  # (B, 1, 1, S), or (B or 1, 1, T, S) per query
    return _softmax(S, inplace=True, scale=scale, bias=M)  # A in S's buffer: softmax(scale · S + M)
    # end exercise


def _attention_weights_vjp(argnums, A, args, kwargs):
    """``attention_weights``' VJP maker: G = ∂L/∂A (B, h, T, S) -> the asked-for ∂L/∂Q (B, T, d),
    ∂L/∂K (B, S, d) (the equations in ``attention_weights``' docstring)."""
    Q, K, h = args[:3]
    if any(i not in (0, 1) for i in argnums):
        raise ValueError("attention_weights: h and mask are not differentiable")
    scale = 1.0 / math.sqrt(Q.shape[-1] // h)
    # ∂Q reads K and ∂K reads Q: hold only the one a computed gradient needs
    Kh = _heads(K, h) if 0 in argnums else None
    Qh = _heads(Q, h) if 1 in argnums else None

    def vjp(G):
        groups = _head_groups(A)
        if len(groups) <= 1:  # all heads at once (a device array: one kernel per step over everything)
            dS = _softmax_vjp_of(A, G, scale)  # A ⊙ (G − Σ_s G A) / sqrt(d_h), in one buffer
            return tuple(_heads_matmul(dS, Kh, h) if i == 0 else _heads_matmul(dS.transpose(0, 1, 3, 2), Qh, h)
                         for i in argnums)
        # a group of heads at a time: its ∂L/∂S is formed in one reused buffer and read by both
        # products while it is in cache
        out, heads = _grad_buffers({i: (A.shape[0], A.shape[2 + i]) for i in argnums}, {0: Kh, 1: Qh}, A, h)
        # ∂Q (B, T, h, d_h), ∂K (B, S, h, d_h): concat_heads layout; heads: (B, h, ·, d_h) views
        buf = onp.empty(A[groups[0]].size, A.dtype)
        for g in groups:
            dS = _softmax_vjp_of(A[g], G[g], scale, out=buf[:A[g].size].reshape(A[g].shape))
            _score_grads(dS, g, heads, Kh, Qh)
        return _merged(out, argnums)  # (B, ·, d)

    return vjp


defvjp_argnums(attention_weights, _attention_weights_vjp)


@primitive
def attend(A, V):
    """Mix the values with the weights, per head, and concatenate the heads.

        Z = concat_heads(A V)

    A: (B, h, T, S), V: (B, S, d)  ->  Z: (B, T, d).
    Gradient, with G = ∂L/∂Z split into heads: ∂L/∂A = G Vᵀ,  ∂L/∂V = concat_heads(Aᵀ G).
    """
    return _heads_matmul(A, _heads(V, A.shape[1]), A.shape[1])


def _attend_vjp_A(Z, A, V):
    h = A.shape[1]  # ∂L/∂A = G Vᵀ reads V, not A
    return lambda G: onp.matmul(_heads(G, h), _transposed(_heads(V, h)))  # (B, h, T, S)


def _attend_vjp_V(Z, A, V):
    h = A.shape[1]  # ∂L/∂V = concat_heads(Aᵀ G) reads A, not V
    return lambda G: _heads_matmul(A.transpose(0, 1, 3, 2), _heads(G, h), h)  # (B, S, d)


defvjp(attend, _attend_vjp_A, _attend_vjp_V)


_ATTN = _Stash()  # _attention_node's forward hands its weights A to its VJP


def _attention_values(Q, K, V, h, mask=None):
    """Z = attend(attention_weights(Q, K, h, mask), V): Q (B, T, d), K, V (B, S, d), mask as
    ``attention_weights``' -> Z (B, T, d); A (B, h, T, S) kept for the VJP (``_ATTN``)."""
    A = attention_weights(Q, K, h, mask)  # (B, h, T, S)
    return _ATTN.put(attend(A, V), A)  # Z (B, T, d)


_attention_node = primitive(_attention_values)  # what autograd traces when the weights are not returned


def _attention_vjp(argnums, Z, args, kwargs):
    """The VJP of ``attend(attention_weights(Q, K, h, mask), V)`` as one node. With G = ∂L/∂Z
    (B, T, d) split into heads, per head:

        ∂L/∂V = concat_heads(Aᵀ G),  ∂L/∂A = G Vᵀ,  ∂L/∂S = A ⊙ (∂L/∂A − Σ_s ∂L/∂A ⊙ A),
        ∂L/∂Q = concat_heads(∂L/∂S K) / sqrt(d_h),  ∂L/∂K = concat_heads(∂L/∂Sᵀ Q) / sqrt(d_h)

    (1/sqrt(d_h) is applied to ∂L/∂S in its buffer); ∂L/∂Q: (B, T, d), ∂L/∂K, ∂L/∂V: (B, S, d).
    The same products and the same softmax backward as ``attend``'s and ``attention_weights``'
    VJPs (the same bits), but a group of heads at a time: ∂L/∂A is formed in one reused buffer,
    turned into ∂L/∂S there in place, and read by ∂Q's and ∂K's products while it is in cache;
    the group's A is read by ∂V's product and the softmax backward in the same visit. No
    (B, h, T, S) array is made for ∂L/∂A or ∂L/∂S."""
    Q, K, V, h = args[:4]
    mask = args[4] if len(args) > 4 else kwargs.get("mask")
    if any(i not in (0, 1, 2) for i in argnums):
        raise ValueError("attention: h and mask are not differentiable")
    A = _ATTN.take(Z)
    if A is None:  # not handed over: recompute
        A = attention_weights(Q, K, h, mask)
    qk = tuple(i for i in argnums if i < 2)  # ∂Q, ∂K: through ∂L/∂A = G Vᵀ, which reads V
    weights_vjp = _attention_weights_vjp(qk, A, (Q, K, h, mask), {}) if qk else None
    Vh = _heads(V, h) if qk else None
    scale = 1.0 / math.sqrt(Q.shape[-1] // h)
    Kh = _heads(K, h) if 0 in argnums else None
    Qh = _heads(Q, h) if 1 in argnums else None
    # the closure keeps only what a computed gradient reads (shapes and dtype, not Q, K, V themselves)
    rows, v_dtype = {i: args[i].shape[:2] for i in argnums}, V.dtype

    def vjp(G):
        Gh = _heads(G, h)  # (B, h, T, d_h) view
        if type(A) is not onp.ndarray or type(G) is not onp.ndarray or not A.dtype == G.dtype == v_dtype:
            # a device array (one kernel per step over everything), or mixed dtypes: the two nodes' VJPs
            dV = _heads_matmul(A.transpose(0, 1, 3, 2), Gh, h) if 2 in argnums else None  # (B, S, d)
            dQK = weights_vjp(onp.matmul(Gh, _transposed(Vh))) if qk else ()  # through ∂L/∂A (B, h, T, S)
            return tuple(dQK) + ((dV,) if 2 in argnums else ())
        groups = _head_groups(A)
        out, heads = _grad_buffers(rows, {0: Kh, 1: Qh, 2: Gh}, A, h)
        # ∂Q (B, T, h, d_h), ∂K, ∂V (B, S, h, d_h): concat_heads layout; heads: (B, h, ·, d_h) views
        buf = onp.empty(A[groups[0]].size, A.dtype) if qk and groups else None  # (no groups: an empty batch)
        Vt = _transposed(Vh) if qk else None  # (B, h, d_h, S)
        for g in groups:
            a = A[g]
            if 2 in out:
                onp.matmul(a.swapaxes(-1, -2), Gh[g], out=heads[2][g])  # Aᵀ G
            if not qk:
                continue
            dS = onp.matmul(Gh[g], Vt[g], out=buf[:a.size].reshape(a.shape))  # ∂L/∂A = G Vᵀ
            _softmax_vjp_of(a, dS, scale, out=dS)  # ∂L/∂S (times 1/sqrt(d_h)), in place
            _score_grads(dS, g, heads, Kh, Qh)
        return _merged(out, argnums)  # (B, ·, d)

    return vjp


defvjp_argnums(_attention_node, _attention_vjp)


# ------------------------------------------------------------------------ attention
def visible_keys(mask, S):
    """The key mask for S keys when the last ones carry ``mask`` and the first S − n are
    prefix keys, always visible.  mask: None or (B, n) bool -> None or (B, S) bool (or a
    per-query (B, T, n) mask -> (B, T, S))."""
    if mask is None or mask.shape[-1] == S:
        return mask
    return onp.concatenate([onp.ones_like(mask, shape=mask.shape[:-1] + (S - mask.shape[-1],)), mask], axis=-1)


def attention(Q, K, V, h, prefix=None, return_weights=False, mask=None):
    """Multi-head attention, optionally with extra (prefix) keys and values and a key mask.

        Attn(Q, K, V) = softmax(Q Kᵀ / sqrt(d_h) + M) V     per head, then concat_heads
        with prefix (P_k, P_v):  K' = [P_k; K],  V' = [P_v; V]   (prefix tuning)

    Q: (B, T, d); K, V: (B, S, d); P_k, P_v: (p, d) or (B, p, d); mask: None or (B, S)
    bool (True = visible; M = −∞ on hidden keys, e.g. padding), at least one key visible per
    text (a row with every key hidden has no softmax: NaN); prefix keys are always
    visible. Returns Z: (B, T, d) — as many outputs as queries — and, if
    ``return_weights``, the attention weights A: (B, h, T, p + S), each row summing to 1.
    Computed with the fused ``attention_weights`` and ``attend``; traced without
    ``return_weights``, both as one node (``_attention_node``) whose backward walks groups of
    heads once (``_attention_vjp``).
    """
    if prefix is not None:
        P_k, P_v = prefix
        K, V = prepend(P_k, K), prepend(P_v, V)  # (B, p + S, d)
    mask = visible_keys(mask, K.shape[1])
    if not return_weights and (isbox(Q) or isbox(K) or isbox(V)):  # traced: one node, one fused backward
        return _attention_node(Q, K, V, h, mask)  # (B, T, d)
    A = attention_weights(Q, K, h, mask)  # (B, h, T, S)
    Z = attend(A, V)  # (B, T, d)
    return (Z, A) if return_weights else Z


def attention_composed(Q, K, V, h, prefix=None, return_weights=False, mask=None):
    """``attention`` written with autograd.numpy ops, one line per symbol of the equation
    (same arguments, same results; each op its own autograd node)."""
    if prefix is not None:
        P_k, P_v = prefix
        K, V = prepend(P_k, K), prepend(P_v, V)  # (B, p + S, d)
    d_h = Q.shape[-1] // h
    q, k, v = split_heads(Q, h), split_heads(K, h), split_heads(V, h)  # (B, h, ·, d_h)
    scores = np.matmul(q, np.transpose(k, (0, 1, 3, 2))) * (1.0 / math.sqrt(d_h))  # (B, h, T, S)
    if mask is not None:
        scores = scores + key_bias(visible_keys(mask, K.shape[1]), Q.dtype)  # M: 0 or −∞
    A = softmax(scores)  # (B, h, T, S)
    Z = merge_heads(np.matmul(A, v))  # (B, T, d)
    return (Z, A) if return_weights else Z

"""Multi-head scaled dot-product attention (equations.md, "Transformer")."""
from __future__ import annotations

import math

import autograd.numpy as np

from .primitives import softmax


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
        P = P[None] + np.zeros((X.shape[0], 1, 1), dtype=X.dtype)  # (B, p, d)
    return np.concatenate([P, X], axis=1)


def attention(Q, K, V, h, prefix=None, return_weights=False):
    """Multi-head attention, optionally with extra (prefix) keys and values.

        Attn(Q, K, V) = softmax(Q Kᵀ / sqrt(d_h)) V        per head, then concat_heads
        with prefix (P_k, P_v):  K' = [P_k; K],  V' = [P_v; V]   (prefix tuning)

    Q: (B, T, d); K, V: (B, S, d); P_k, P_v: (p, d) or (B, p, d).
    Returns Z: (B, T, d) — as many outputs as queries — and, if ``return_weights``,
    the attention weights A: (B, h, T, p + S), each row summing to 1.
    """
    if prefix is not None:
        P_k, P_v = prefix
        K, V = prepend(P_k, K), prepend(P_v, V)  # (B, p + S, d)
    d_h = Q.shape[-1] // h
    q, k, v = split_heads(Q, h), split_heads(K, h), split_heads(V, h)  # (B, h, ·, d_h)
    A = softmax(np.matmul(q, np.transpose(k, (0, 1, 3, 2))) * (1.0 / math.sqrt(d_h)))  # (B, h, T, S)
    Z = merge_heads(np.matmul(A, v))  # (B, T, d)
    return (Z, A) if return_weights else Z

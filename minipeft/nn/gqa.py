"""Grouped-query attention's key/value sharing (Ainslie et al. 2023; equations.md, "Real
architectures"): h query heads, n_kv ≤ h key/value heads, each shared by a group of
g = h / n_kv consecutive query heads (query head j reads key/value head ⌊j / g⌋, as
Hugging Face's ``repeat_kv``).

    repeat_kv(K) = [K¹ (g times), K² (g times), …, K^{n_kv} (g times)]      heads side by side

K: (B, S, n_kv·d_h) -> (B, S, h·d_h), so the h-head attention of ``nn.attention`` reads it
as is. Its VJP sums each group's gradients back into its one head. n_kv = h is the identity
(multi-head attention).
"""
from __future__ import annotations

import numpy as onp
from autograd.extend import defvjp, primitive


@primitive
def repeat_kv(K, n_kv: int, n_rep: int):
    """Each of the n_kv heads of K written n_rep = h / n_kv times (module docstring).

    K: (B, S, n_kv·d_h) -> (B, S, n_kv·n_rep·d_h) = (B, S, h·d_h).
    """
    B, S, d_kv = K.shape
    k = K.reshape(B, S, n_kv, 1, d_kv // n_kv)  # (B, S, n_kv, 1, d_h)
    return onp.repeat(k, n_rep, axis=3).reshape(B, S, d_kv * n_rep)  # (B, S, n_kv, n_rep, d_h) -> (B, S, h·d_h)


def _vjp(ans, K, n_kv, n_rep):
    B, S, d_kv = K.shape
    # ∂L/∂K: the n_rep copies of each head summed back  (B, S, n_kv, n_rep, d_h) -> (B, S, n_kv·d_h)
    return lambda G: G.reshape(B, S, n_kv, n_rep, d_kv // n_kv).sum(axis=3).reshape(B, S, d_kv)


defvjp(repeat_kv, _vjp)

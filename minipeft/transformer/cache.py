"""The key/value cache of a causal decoder (generation; equations.md, "Real architectures").

Step by step generation reads, at every block ℓ, the keys and values of all earlier rows:

    K_ℓ = [P_k^ℓ; K_ℓ(rows so far)],  V_ℓ = [P_v^ℓ; V_ℓ(rows so far)]      (B, S, d_kv)

The first call of the forward pass (the whole prompt, with the "tokens" seam's prompt rows)
runs the "kv" seam once and stores its result, so prefix tuning's P_k, P_v are the cache's
first entries; each later call (the new tokens only) appends its rows' K, V (after RoPE at
their positions) and reads the whole cache. Nothing is recomputed for an earlier row.
"""
from __future__ import annotations

import autograd.numpy as np


class KVCache:
    """Per-block (K, V), each (B, S, d_kv), and the next rotary position.

    ``n_rows``: S, the key rows held (prefix + prompt rows + tokens seen); 0 before the
    first call. ``next_pos``: the position of the next real token (prompt rows and prefix
    keys have none). Mutable: one cache per generation, not shared between calls that
    should not see each other.
    """

    def __init__(self):
        self.kv = {}
        self.next_pos = 0

    @property
    def n_rows(self) -> int:
        """Key rows held in every block (0 when empty)."""
        return int(self.kv[0][0].shape[1]) if 0 in self.kv else 0

    def has(self, layer: int) -> bool:
        """Whether block ``layer`` already holds keys (a later call: append, no "kv" seam)."""
        return layer in self.kv

    def store(self, layer: int, K, V) -> None:
        """The first call's (K, V) of block ``layer``, after the "kv" seam (prefix first)."""
        self.kv[layer] = (K, V)

    def extend(self, layer: int, K, V):
        """Append the new rows' (K, V) (B, T, d_kv) and return the whole (B, S + T, d_kv) each."""
        K0, V0 = self.kv[layer]
        K, V = np.concatenate([K0, K], axis=1), np.concatenate([V0, V], axis=1)
        self.kv[layer] = (K, V)
        return K, V

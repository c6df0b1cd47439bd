"""Exercise attention: A = softmax(Q Kᵀ / sqrt(d_h)) per head (equations.md, "Transformer").

The region is the forward of ``nn.attention.attention_weights``; ``nn.attention`` mixes the
values with it. Checked against a loop over batch, head and query.
"""
import numpy as onp

import minipeft as mp
from exercise_helpers import check, check_close, check_gradient, naive_attention, rng

HINT = ("A = softmax(Q Kᵀ / sqrt(d_h)) for each head, with d_h = d / h the head width (not d): split the last "
        "axis of Q and K into h heads of d_h columns (head j is columns j·d_h .. (j+1)·d_h), softmax over the keys")


def _qkv(B=2, T=3, S=4, d=8, seed=0, dtype="float64"):
    r = rng(seed)
    return tuple(r.standard_normal(s).astype(dtype) for s in ((B, T, d), (B, S, d), (B, S, d)))


def test_weights_and_output_match_a_loop_over_heads():
    Q, K, V = _qkv()
    for h in (1, 2, 4):
        Z, A = mp.nn.attention(Q, K, V, h, return_weights=True)
        Zr, Ar = naive_attention(Q, K, V, h)
        check_close(A, Ar, f"attention weights A (h={h}), shape (B, h, T, S)", HINT)
        check_close(Z, Zr, f"attention output Z (h={h})", HINT)


def test_rows_sum_to_one_even_for_large_scores():
    Q, K, V = _qkv(seed=1)
    A = mp.nn.attention(60.0 * Q, 60.0 * K, V, 2, return_weights=True)[1]
    check(onp.all(onp.isfinite(A)), "attention weights for scores of size ~1000: NaN or inf",
          "subtract each row's maximum score before exp (softmax(z) = softmax(z − max z)); "
          "nn.primitives has a stable _softmax you may use")
    check_close(A.sum(-1), onp.ones(A.shape[:-1]), "each row of A sums to 1 over the keys", HINT)


def test_float32_stays_float32():
    Q, K, V = _qkv(dtype="float32")
    A = mp.nn.attention(Q, K, V, 2, return_weights=True)[1]
    check(A.dtype == onp.float32, f"float32 inputs gave attention weights of dtype {A.dtype}",
          "compute the scale as a Python float, 1.0 / math.sqrt(d_h): a NumPy float64 scalar turns float32 "
          "arrays into float64")


def test_gradient_matches_finite_differences():
    Q, K, V = _qkv(seed=2)
    G = rng(3).standard_normal(Q.shape)
    hint = HINT + "; the weights' VJP (already written) assumes exactly this forward"
    check_gradient(lambda q: onp.sum(G * mp.nn.attention(q, K, V, 2)), Q, "∂L/∂Q through attention", hint)
    check_gradient(lambda k: onp.sum(G * mp.nn.attention(Q, k, V, 2)), K, "∂L/∂K through attention", hint)


def test_prefix_keys_join_the_softmax():
    Q, K, V = _qkv(seed=4)
    r = rng(5)
    P_k, P_v = r.standard_normal((3, 8)), r.standard_normal((3, 8))
    Z = mp.nn.attention(Q, K, V, 2, prefix=(P_k, P_v))
    Kp = onp.concatenate([onp.broadcast_to(P_k, (2, 3, 8)), K], axis=1)
    Vp = onp.concatenate([onp.broadcast_to(P_v, (2, 3, 8)), V], axis=1)
    check_close(Z, naive_attention(Q, Kp, Vp, 2)[0], "attention with prefix keys (T queries, p + S keys)",
                HINT + "; the number of keys S may differ from the number of queries T")

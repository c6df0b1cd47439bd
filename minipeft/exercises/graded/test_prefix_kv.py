"""Exercise prefix-kv: K' = [P_k; K], V' = [P_v; V] at every layer (equations.md, "Prefix tuning").

The region is ``PrefixTuning.on_kv``: (K, V) (B, S, d) each -> (B, p+S, d) each, with the
prefixes of block ℓ = layer + 1. Its θ is the table {"P_k", "P_v"} (N, p, d) that
``prepare`` makes once per forward pass (through the MLP P = MLP_θ(P') when reparameterised).
"""
import numpy as onp
from autograd import grad

from minipeft.methods.prefix import PrefixTuning
from exercise_helpers import call, check_close, check_shape, rng, tiny_cfg, with_method

HINT = ("K' = [P_k^ℓ; K] and V' = [P_v^ℓ; V]: the prefix comes before the keys along the sequence axis (axis 1), "
        "the keys get P_k and the values P_v, of this layer (theta['P_k'][layer]); the same prefix for every example")


def _setup(reparam=False, seed=0):
    cfg = tiny_cfg(N=3)
    m = PrefixTuning(p=2, reparam=reparam, d_prime=3, hidden=5)
    theta = with_method(cfg, m, seed)[m.name]
    r = rng(seed + 1)
    K, V = r.standard_normal((2, 4, cfg.d)), r.standard_normal((2, 4, cfg.d))
    return cfg, m, theta, K, V


def _table(theta, cfg, p):
    """(P_k, P_v) (N, p, d): θ itself, or the MLP tanh(P' W_1ᵀ + b_1) W_2ᵀ + b_2 read as [P_k^1, P_v^1, …]."""
    if "P_k" in theta:
        return theta["P_k"], theta["P_v"]
    H = onp.tanh(theta["P_prime"] @ theta["W_1"].T + theta["b_1"])
    rows = H @ theta["W_2"].T + theta["b_2"]  # (p, 2·N·d)
    P = rows.reshape(p, cfg.N, 2, cfg.d)
    return P[:, :, 0].transpose(1, 0, 2), P[:, :, 1].transpose(1, 0, 2)


def test_prefixes_come_first_keys_get_P_k():
    for reparam in (False, True):
        cfg, m, theta, K, V = _setup(reparam)
        P_k, P_v = _table(theta, cfg, 2)
        table = m.prepare(theta, cfg)  # already written: the table this layer's on_kv reads
        for layer in range(cfg.N):
            Kp, Vp = call(m.on_kv, table, (K, V), layer, cfg, what=f"on_kv at layer {layer}", hint=HINT)
            check_shape(Kp, (2, 2 + 4, cfg.d), f"K' at layer {layer}", HINT)
            check_close(Kp, onp.concatenate([onp.repeat(P_k[layer][None], 2, 0), K], 1),
                        f"K' at layer {layer} (reparam={reparam})", HINT)
            check_close(Vp, onp.concatenate([onp.repeat(P_v[layer][None], 2, 0), V], 1),
                        f"V' at layer {layer} (reparam={reparam})", HINT)


def test_gradient_reaches_the_prefix():
    cfg, m, theta, K, V = _setup()
    G = rng(7).standard_normal((2, 6, cfg.d))
    hint = HINT + "; use np.concatenate (or nn.prepend), not np.broadcast_to (no VJP in autograd) or in-place writes"
    g = call(grad(lambda pk: onp.sum(G * m.on_kv({"P_k": pk, "P_v": theta["P_v"]}, (K, V), 1, cfg)[0])),
             theta["P_k"], what="∂L/∂P_k", hint=hint)
    want = onp.zeros_like(theta["P_k"])
    want[1] = G[:, :2].sum(0)
    check_close(g, want, "∂L/∂P_k (only layer 1's prefix gets a gradient)", hint)

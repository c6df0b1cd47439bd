"""Exercise vpt-deep: [x_ℓ, _, E_ℓ] = L_ℓ([x_{ℓ-1}, P_{ℓ-1}, E_{ℓ-1}]) (equations.md, "VPT").

The region is ``VPTDeep.on_layer_in``: before block 1 (layer 0) it inserts P[0] after CLS;
before every later block it replaces the previous block's prompt outputs (rows 1..p) by
that layer's fresh prompts P[layer]. Checked with stand-in blocks that mix the rows.
"""
import autograd.numpy as anp
import numpy as onp

from minipeft.methods.vpt import VPTDeep
from exercise_helpers import call, check_close, check_gradient, check_shape, rng, tiny_cfg

HINT = ("layer 0: [x₀; P[0]; E₀], (B, 1+n, d) -> (B, 1+p+n, d); layer ℓ ≥ 1: keep row 0 (x) and rows 1+p.. (E), "
        "and put P[ℓ] in rows 1..p in place of the previous block's prompt outputs, which are discarded — replaced, "
        "not accumulated: the sequence stays 1+p+n rows")


def _setup(p=2, B=2, seed=0):
    cfg = tiny_cfg(N=3)
    r = rng(seed)
    P = r.standard_normal((cfg.N, p, cfg.d))
    X0 = r.standard_normal((B, 1 + cfg.n_patches, cfg.d))
    Ms = r.standard_normal((cfg.N, cfg.d, cfg.d)) / cfg.d ** 0.5
    return cfg, P, X0, Ms


def _block(X, M):
    """A stand-in for L_ℓ that mixes the rows: tanh(X M + mean over rows of X)."""
    return anp.tanh(anp.matmul(X, M) + anp.mean(X, axis=1, keepdims=True))


def _run(m, P, X0, cfg, Ms):
    X = X0
    for layer in range(cfg.N):
        X = m.on_layer_in({"P": P}, X, layer, cfg)
        X = _block(X, Ms[layer])
    return X


def _reference_loop(P, X0, Ms):
    """The equations, one layer at a time, with plain NumPy."""
    p = P.shape[1]
    X = X0
    for layer in range(P.shape[0]):
        E = X[:, 1:] if layer == 0 else X[:, 1 + p:]
        Pl = onp.repeat(P[layer][None], X.shape[0], axis=0)
        Xin = onp.concatenate([X[:, :1], Pl, E], axis=1)
        X = onp.tanh(Xin @ Ms[layer] + Xin.mean(axis=1, keepdims=True))
    return X


def test_each_layer_sees_its_own_prompts():
    cfg, P, X0, Ms = _setup()
    m = VPTDeep(p=2)
    out = call(_run, m, P, X0, cfg, Ms, what="three blocks with VPT-Deep", hint=HINT)
    check_shape(out, (2, 1 + 2 + cfg.n_patches, cfg.d), "the last block's output X_N", HINT)
    check_close(out, _reference_loop(P, X0, Ms), "X_N after three blocks with VPT-Deep", HINT)


def test_later_layers_replace_the_prompt_rows():
    cfg, P, X0, Ms = _setup(p=3, seed=1)
    m = VPTDeep(p=3)
    X = rng(2).standard_normal((2, 1 + 3 + cfg.n_patches, cfg.d))
    for layer in (1, 2):
        out = call(m.on_layer_in, {"P": P}, X, layer, cfg, what=f"on_layer_in at layer {layer}", hint=HINT)
        check_shape(out, X.shape, f"on_layer_in at layer {layer} (the length must not grow)", HINT)
        check_close(out[:, 1:4], onp.repeat(P[layer][None], 2, axis=0), f"rows 1..p at layer {layer}: P[{layer}]",
                    HINT)
        check_close(out[:, :1], X[:, :1], f"the CLS row at layer {layer}", HINT)
        check_close(out[:, 4:], X[:, 4:], f"the patch rows E at layer {layer}", HINT)


def test_gradient_matches_finite_differences():
    cfg, P, X0, Ms = _setup(seed=3)
    m = VPTDeep(p=2)
    G = rng(4).standard_normal((2, 1 + 2 + cfg.n_patches, cfg.d))
    check_gradient(lambda q: anp.sum(G * _run(m, q, X0, cfg, Ms)), P, "∂L/∂P (all layers' prompts)",
                   HINT + "; build the new sequence with np.concatenate (no in-place writes into X)")

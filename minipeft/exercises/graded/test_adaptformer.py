"""Exercise adaptformer: X_ℓ = X'_ℓ + MLP(LN₂(X'_ℓ)) + s · X̃_ℓ (equations.md, "Adapters: AdaptFormer").

The region is ``AdaptFormer.on_mlp``: the "mlp" seam hands it M = MLP(LN₂(X')) and
returns M + s · X̃, X̃ = ReLU(x W_downᵀ + b_down) W_upᵀ + b_up of x = LN₂(X') (input
"normed") or X' (input "residual"); ``adapter.bottleneck`` computes X̃.
"""
from minipeft.methods.adapter import AdaptFormer
from exercise_helpers import call, check_close, check_same, naive_bottleneck, rng, tiny_cfg, with_method

HINT = ("return M + s · X̃: the frozen branch M = MLP(LN₂(X')) is added unscaled, only the adapter branch X̃ is "
        "multiplied by s; X̃ reads LN₂(X') (x_norm) for input='normed' and X' (x_resid) for input='residual'; blocks "
        "without an adapter return M unchanged; θ['blocks'][layer] is that block's adapter ({} when not adapted)")


def _setup(seed=0, **kw):
    cfg = tiny_cfg(N=3)
    m = AdaptFormer(d_hat=3, **kw)
    theta = with_method(cfg, m, seed)[m.name]
    r = rng(seed + 1)
    M, xn, xr = (r.standard_normal((2, 5, cfg.d)) for _ in range(3))
    return cfg, m, theta, M, xn, xr


def test_parallel_branch_scaled_by_s():
    for kw in ({"s": 0.3}, {"s": 2.0, "input": "residual"}):
        cfg, m, theta, M, xn, xr = _setup(**kw)
        for layer in range(cfg.N):
            out = call(m.on_mlp, theta, M, xn, xr, layer, cfg, what=f"on_mlp at layer {layer} ({kw})", hint=HINT)
            x = xn if m.input == "normed" else xr
            want = M + m.s * naive_bottleneck(x, theta["blocks"][layer])
            check_close(out, want, f"MLP(LN₂(X')) + s·X̃ at layer {layer} ({kw})", HINT)


def test_learnable_s_and_adapted_layers():
    cfg, m, theta, M, xn, xr = _setup(s=0.5, learnable_s=True, layers=(0, 2))
    for layer in (0, 2):
        a = theta["blocks"][layer]
        out = call(m.on_mlp, theta, M, xn, xr, layer, cfg, what=f"on_mlp at layer {layer}", hint=HINT)
        check_close(out, M + a["s"] * naive_bottleneck(xn, a), f"learnable s, layer {layer}",
                    HINT + "; with learnable_s the scale is θ's own s of that adapter")
    out = call(m.on_mlp, theta, M, xn, xr, 1, cfg, what="on_mlp at layer 1 (no adapter)", hint=HINT)
    check_same(out, M, "on_mlp at a block without an adapter", HINT)


def test_s_zero_is_the_original_model():
    cfg, m, theta, M, xn, xr = _setup(s=0.0)
    out = call(m.on_mlp, theta, M, xn, xr, 1, cfg, what="on_mlp with s = 0", hint=HINT)
    check_close(out, M, "on_mlp with s = 0: the original MLP output", HINT)

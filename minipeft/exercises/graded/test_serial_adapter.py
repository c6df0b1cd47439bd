"""Exercise serial-adapter: A(h) = h + ReLU(h W_downᵀ + b_down) W_upᵀ + b_up (equations.md, "Adapters: serial").

The region is ``SerialAdapter.on_after``: at the adapted sites ("attn" after W_o and "mlp"
after W₂ for Houlsby; "mlp" only for Pfeiffer) of the adapted blocks it returns A(h); at
every other point (ln1, ln2, ln_f, other blocks) h unchanged.
"""
from minipeft.methods.adapter import SerialAdapter
from exercise_helpers import call, check_close, check_same, naive_bottleneck, rng, tiny_cfg, with_method

HINT = ("A(h) = h + bottleneck(h) (the residual h is part of the adapter), only where name is one of the "
        "placement's sites (self.sites) and the block has an adapter (θ['blocks'][layer] = {site: adapter}, {} "
        "when not adapted; layer is None at ln_f); everything else passes through unchanged")


def _setup(seed=0, **kw):
    cfg = tiny_cfg(N=3)
    m = SerialAdapter(d_hat=3, **kw)
    theta = with_method(cfg, m, seed)[m.name]
    return cfg, m, theta, rng(seed + 1).standard_normal((2, 5, cfg.d))


def test_houlsby_adapts_attention_and_mlp_outputs():
    cfg, m, theta, h = _setup()
    for layer in range(cfg.N):
        for site in ("attn", "mlp"):
            out = call(m.on_after, theta, h, layer, site, cfg, what=f"on_after({site!r}, layer {layer})", hint=HINT)
            check_close(out, h + naive_bottleneck(h, theta["blocks"][layer][site]),
                        f"A(h) after {site} in block {layer}", HINT)
        for site in ("ln1", "ln2"):
            out = call(m.on_after, theta, h, layer, site, cfg, what=f"on_after({site!r})", hint=HINT)
            check_same(out, h, f"on_after({site!r}, layer {layer}): not an adapter site", HINT)
    check_same(call(m.on_after, theta, h, None, "ln_f", cfg, what="on_after('ln_f')", hint=HINT), h,
               "on_after('ln_f', layer None)", HINT)


def test_pfeiffer_and_chosen_layers():
    cfg, m, theta, h = _setup(placement="pfeiffer", layers=(1,))
    out = call(m.on_after, theta, h, 1, "mlp", cfg, what="on_after('mlp', layer 1)", hint=HINT)
    check_close(out, h + naive_bottleneck(h, theta["blocks"][1]["mlp"]), "Pfeiffer A(h) after the MLP of block 1",
                HINT)
    for layer, site in ((1, "attn"), (0, "mlp"), (2, "mlp")):
        out = call(m.on_after, theta, h, layer, site, cfg, what=f"on_after({site!r}, layer {layer})", hint=HINT)
        check_same(out, h, f"Pfeiffer on blocks (1,): on_after({site!r}, layer {layer})", HINT)

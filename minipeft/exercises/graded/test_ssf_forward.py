"""Exercise ssf-forward: y = γ ⊙ x + β after each placed operation (equations.md, "SSF").

Two regions: ``SSF.on_linear`` (after the projections q, k, v, o, mlp1, mlp2 that are
placements) and ``SSF.on_after`` (after LN₁, LN₂ of a block and LN_f; θ['ln_f'] for LN_f).
"""
from minipeft.methods.ssf import SSF
from exercise_helpers import call, check_close, check_same, rng, tiny_cfg, with_method

HINT = ("γ ⊙ y + β with the (γ, β) of that placement: θ['blocks'][layer][name] for a projection or ln1/ln2, "
        "θ['ln_f'] for LN_f (layer is None there); names that are not placements (and 'attn'/'mlp' at the 'after' "
        "seam, which are not LayerNorms) pass through unchanged")


def _setup(placements, seed=0):
    cfg = tiny_cfg()
    m = SSF(placements=placements)
    return cfg, m, with_method(cfg, m, seed)[m.name]


def test_scale_and_shift_after_projections():
    cfg, m, theta = _setup(("q", "mlp1", "ln1"))
    for layer in range(cfg.N):
        for name in ("q", "mlp1", "k", "mlp2"):
            width = cfg.d_ff if name == "mlp1" else cfg.d
            x, y = rng(layer).standard_normal((2, 2, 5, width))
            out = call(m.on_linear, theta, y, x, layer, name, cfg, what=f"on_linear({name!r})", hint=HINT)
            if name in m.placements:
                gb = theta["blocks"][layer][name]
                check_close(out, gb["gamma"] * y + gb["beta"], f"γ ⊙ y + β after {name} in block {layer}", HINT)
            else:
                check_same(out, y, f"on_linear({name!r}) (not a placement)", HINT)


def test_scale_and_shift_after_layer_norms():
    cfg, m, theta = _setup(("ln1", "ln2", "ln_f", "o"), seed=1)
    y = rng(3).standard_normal((2, 5, cfg.d))
    for layer in range(cfg.N):
        for name in ("ln1", "ln2"):
            gb = theta["blocks"][layer][name]
            out = call(m.on_after, theta, y, layer, name, cfg, what=f"on_after({name!r})", hint=HINT)
            check_close(out, gb["gamma"] * y + gb["beta"], f"γ ⊙ LN(x) + β after {name} in block {layer}", HINT)
        for name in ("attn", "mlp"):
            out = call(m.on_after, theta, y, layer, name, cfg, what=f"on_after({name!r})", hint=HINT)
            check_same(out, y, f"on_after({name!r}): not a LayerNorm", HINT)
    out = call(m.on_after, theta, y, None, "ln_f", cfg, what="on_after('ln_f')", hint=HINT)
    check_close(out, theta["ln_f"]["gamma"] * y + theta["ln_f"]["beta"], "γ ⊙ LN_f(x) + β", HINT)
    cfg, m2, theta2 = _setup(("q",), seed=2)
    check_same(call(m2.on_after, theta2, y, 0, "ln1", cfg, what="on_after('ln1')", hint=HINT), y,
               "on_after('ln1') when ln1 is not a placement", HINT)

"""Exercise lora-forward: h = x W₀ᵀ + b + (α/r)(x Aᵀ)Bᵀ (equations.md, "LoRA").

The region is ``LoRA.on_linear``: the "linear" seam hands it y = x W₀ᵀ + b of projection
``name`` in block ``layer``, and x; it adds (α/r)(x Aᵀ)Bᵀ on the targets of the adapted layers.
"""
from minipeft.methods.lora import LoRA
from exercise_helpers import call, check_close, check_same, naive_linear, rng, tiny_cfg, with_method

HINT = ("y + (α/r)(x Aᵀ)Bᵀ with A (r, k), B (d, r) of this (layer, target), θ['blocks'][layer][name]; the scale "
        "is α/r (self.scaling), not α; projections not in targets, and layers not adapted, return y unchanged")

def _setup(seed=0, **kw):
    cfg = tiny_cfg()
    m = LoRA(**kw)
    return cfg, m, with_method(cfg, m, seed)[m.name]


def _xy(cfg, name, seed):
    r = rng(seed)
    d_in = cfg.d_ff if name == "mlp2" else cfg.d
    d_out = cfg.d_ff if name == "mlp1" else cfg.d
    return r.standard_normal((2, 5, d_in)), r.standard_normal((2, 5, d_out))


def test_adds_the_scaled_low_rank_update():
    cfg, m, theta = _setup(r=2, alpha=5.0, targets=("q", "v", "mlp1", "mlp2"))
    for layer in range(cfg.N):
        for name in m.targets:
            x, y = _xy(cfg, name, layer)
            ab = theta["blocks"][layer][name]
            out = call(m.on_linear, theta, y, x, layer, name, cfg, what=f"on_linear({name!r}, layer {layer})",
                       hint=HINT)
            want = y + (5.0 / 2) * naive_linear(naive_linear(x, ab["A"]), ab["B"])
            check_close(out, want, f"y + (α/r)(x Aᵀ)Bᵀ for {name} in block {layer} (α = 5, r = 2)", HINT)


def test_other_projections_and_layers_unchanged():
    cfg, m, theta = _setup(r=2, targets=("q",), layers=(1,))
    for layer, name in ((0, "q"), (1, "v"), (1, "o"), (0, "mlp1")):
        x, y = _xy(cfg, name, 3)
        out = call(m.on_linear, theta, y, x, layer, name, cfg, what=f"on_linear({name!r}, layer {layer})", hint=HINT)
        check_same(out, y, f"on_linear({name!r}, layer {layer}) with targets ('q',), layers (1,)", HINT)
    x, y = _xy(cfg, "q", 4)
    ab = theta["blocks"][1]["q"]
    out = call(m.on_linear, theta, y, x, 1, "q", cfg, what="on_linear('q', layer 1)", hint=HINT)
    check_close(out, y + naive_linear(naive_linear(x, ab["A"]), ab["B"]), "LoRA with α = r (scale 1) on W_q of block 1",
                HINT)

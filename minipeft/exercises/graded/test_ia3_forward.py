"""Exercise ia3-forward: l_k ⊙ K, l_v ⊙ V (l_q ⊙ Q), and l_ff ⊙ GELU(x W₁ᵀ + b₁) (equations.md, "(IA)³").

Two regions: ``IA3.on_linear`` rescales the outputs of the scaled projections (q, k, v for
the notes' variant; k, v for the paper's) and ``IA3.on_ff_hidden`` rescales the MLP's hidden
activation, after the GELU (paper variant). Checked by running one MLP the way the
forward pass does and comparing with the equation.
"""
import minipeft as mp
from minipeft.methods.ia3 import IA3
from exercise_helpers import call, check_close, check_same, naive_gelu, naive_linear, rng, tiny_cfg, with_method

HINT = ("on_linear: return l ⊙ y for name in self.scaled with l = θ['blocks'][layer]['l_' + name], y unchanged for "
        "the other projections (o, mlp1, mlp2); on_ff_hidden: l_ff ⊙ H, H = GELU(x W₁ᵀ + b₁) already after the GELU, "
        "in the paper variant only (self.ff), H unchanged otherwise")


def _setup(variant, seed=0):
    cfg = tiny_cfg()
    m = IA3(variant=variant)
    return cfg, m, with_method(cfg, m, seed)


def _mlp(m, params, x, layer, cfg):
    """MLP(x) through the seams as transformer/forward.py runs them."""
    th, mlp = params[m.name], params["blocks"][layer]["mlp"]
    H = m.on_linear(th, mp.nn.linear(x, mlp["W_1"], mlp["b_1"]), x, layer, "mlp1", cfg)
    H = m.on_ff_hidden(th, mp.nn.gelu(H), layer, cfg)
    return m.on_linear(th, mp.nn.linear(H, mlp["W_2"], mlp["b_2"]), H, layer, "mlp2", cfg)


def test_scaled_projections():
    for variant, scaled in (("notes", ("q", "k", "v")), ("paper", ("k", "v"))):
        cfg, m, params = _setup(variant)
        for layer in range(cfg.N):
            for name in ("q", "k", "v", "o"):
                x, y = rng(layer).standard_normal((2, 2, 5, cfg.d))
                out = call(m.on_linear, params["ia3"], y, x, layer, name, cfg, what=f"on_linear({name!r})", hint=HINT)
                if name in scaled:
                    check_close(out, params["ia3"]["blocks"][layer]["l_" + name] * y,
                                f"l_{name} ⊙ {name.upper()} in block {layer} ({variant})", HINT)
                else:
                    check_same(out, y, f"on_linear({name!r}) in the {variant} variant", HINT)


def test_l_ff_scales_after_the_gelu():
    for variant in ("paper", "notes"):
        cfg, m, params = _setup(variant, seed=1)
        for layer in range(cfg.N):
            x = rng(5 + layer).standard_normal((2, 5, cfg.d))
            mlp = params["blocks"][layer]["mlp"]
            H = naive_gelu(naive_linear(x, mlp["W_1"], mlp["b_1"]))
            if variant == "paper":
                H = params["ia3"]["blocks"][layer]["l_ff"] * H
            out = call(_mlp, m, params, x, layer, cfg, what=f"the MLP of block {layer} with (IA)³ ({variant})",
                       hint=HINT)
            check_close(out, naive_linear(H, mlp["W_2"], mlp["b_2"]),
                        f"(l_ff ⊙ GELU(x W₁ᵀ + b₁)) W₂ᵀ + b₂ in block {layer} ({variant} variant)", HINT)

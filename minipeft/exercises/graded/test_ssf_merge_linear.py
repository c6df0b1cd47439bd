"""Exercise ssf-merge-linear: γ ⊙ (x Wᵀ + b) + β = x (diag(γ) W)ᵀ + (γ ⊙ b + β) (equations.md, "SSF").

The region is the linear branch of ``SSF.merge``: W' = diag(γ) W, b' = γ ⊙ b + β.
Checked as a property: each merged projection equals the unmerged one followed by SSF.
"""
from minipeft.methods.ssf import SSF
from exercise_helpers import call, check, check_close, check_same, naive_linear, rng, tiny_cfg, with_method

HINT = ("after a linear: W' = diag(γ) W (γ[:, None] * W scales W's rows, one per output unit) and b' = γ ⊙ b + β "
        "— the bias is scaled by γ and then shifted by β; only the weight and bias keys of that module change")
MODS = {"q": ("attn", "W_q", "b_q"), "o": ("attn", "W_o", "b_o"), "mlp1": ("mlp", "W_1", "b_1"),
        "mlp2": ("mlp", "W_2", "b_2")}


def test_merged_projection_equals_ssf_after_it():
    cfg = tiny_cfg()
    m = SSF(placements=tuple(MODS))
    params = with_method(cfg, m)
    merged = call(m.merge, params, what="SSF.merge", hint=HINT)
    check("ssf" not in merged, "merge must drop θ (params['ssf'])", "this part is already written")
    for layer in range(cfg.N):
        for name, (mod, W, b) in MODS.items():
            gb = params["ssf"]["blocks"][layer][name]
            p0, p1 = params["blocks"][layer][mod], merged["blocks"][layer][mod]
            x = rng(layer).standard_normal((3, p0[W].shape[1]))
            check_close(naive_linear(x, p1[W], p1[b]), gb["gamma"] * naive_linear(x, p0[W], p0[b]) + gb["beta"],
                        f"x W'ᵀ + b' vs γ ⊙ (x Wᵀ + b) + β for {name} in block {layer}", HINT)
        check_same(merged["blocks"][layer]["attn"]["W_k"], params["blocks"][layer]["attn"]["W_k"],
                   f"W_k of block {layer} (not a placement)", HINT)
        check_same(merged["blocks"][layer]["ln1"]["gamma"], params["blocks"][layer]["ln1"]["gamma"],
                   f"LN₁ γ of block {layer} (not a placement)", HINT)

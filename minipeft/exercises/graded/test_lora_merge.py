"""Exercise lora-merge: W = W₀ + (α/r) B A (equations.md, "LoRA").

The region is the body of LoRA's ΔW (the update ``merge`` adds to and ``unmerge``
subtracts from each adapted W₀). Checked as a property: the merged projection equals the
unmerged one, x W'ᵀ + b = x W₀ᵀ + b + (α/r)(x Aᵀ)Bᵀ, computed here with loops.
"""
from minipeft.methods.lora import LoRA
from exercise_helpers import call, check, check_close, check_same, naive_linear, rng, tiny_cfg, with_method

HINT = ("ΔW = (α/r) B A: B (d, r) @ A (r, k) is (d, k), the shape of W₀ (A B would be (r, r) or fail); scale by "
        "α/r (self.scaling), not α and not 1")
MODS = {"q": ("attn", "W_q", "b_q"), "v": ("attn", "W_v", "b_v"), "mlp1": ("mlp", "W_1", "b_1"),
        "mlp2": ("mlp", "W_2", "b_2")}


def _setup(seed=0, **kw):
    cfg = tiny_cfg()
    m = LoRA(**kw)
    return cfg, m, with_method(cfg, m, seed)


def test_merged_projection_equals_the_unmerged_one():
    cfg, m, params = _setup(r=2, alpha=5.0, targets=("q", "mlp1", "mlp2"))
    merged = call(m.merge, params, what="LoRA.merge", hint=HINT)
    check("lora" not in merged, "merge must drop θ from params (params['lora'])", "this part is already written")
    for layer in range(cfg.N):
        for t in m.targets:
            mod, W, b = MODS[t]
            ab = params["lora"]["blocks"][layer][t]
            W0, b0 = params["blocks"][layer][mod][W], params["blocks"][layer][mod][b]
            x = rng(layer).standard_normal((3, W0.shape[1]))
            want = naive_linear(x, W0, b0) + 2.5 * naive_linear(naive_linear(x, ab["A"]), ab["B"])
            check_close(naive_linear(x, merged["blocks"][layer][mod][W], b0), want,
                        f"x W'ᵀ + b vs x W₀ᵀ + b + (α/r)(x Aᵀ)Bᵀ for {t} in block {layer} (α = 5, r = 2)", HINT)
        check_same(merged["blocks"][layer]["attn"]["W_k"], params["blocks"][layer]["attn"]["W_k"],
                   f"W_k of block {layer} (not a target)", HINT)


def test_unmerge_restores_W0():
    cfg, m, params = _setup(r=3, alpha=1.5, targets=("v",))
    merged = call(m.merge, params, what="LoRA.merge", hint=HINT)
    back = call(m.unmerge, merged, params["lora"], what="LoRA.unmerge", hint=HINT)
    for layer in range(cfg.N):
        check_close(back["blocks"][layer]["attn"]["W_v"], params["blocks"][layer]["attn"]["W_v"],
                    f"W_v of block {layer} after merge then unmerge", HINT)

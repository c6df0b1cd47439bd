"""Exercise ia3-merge: l ⊙ (x Wᵀ + b) = x (diag(l) W)ᵀ + l ⊙ b and (l_ff ⊙ H) W₂ᵀ = H (W₂ diag(l_ff))ᵀ
(equations.md, "(IA)³").

Two regions in merge.py: ``fold_out`` (output side: scale W's rows and b; with a shift t
also add t to b) and ``fold_in`` (input side: scale W's columns). IA3.merge applies them.
Checked as a property: each merged projection equals the rescaled unmerged one.
"""
from minipeft.methods.ia3 import IA3
from exercise_helpers import call, check_close, check_same, naive_linear, rng, tiny_cfg, with_method

HINT = ("fold_out(W, b, s, t): W' = diag(s) W scales the rows (output units; s[:, None] * W for a matrix), b' = s ⊙ b "
        "(+ t when t is given); fold_in(W, l): W' = W diag(l) scales the columns (input units, l[None, :]), the bias "
        "is untouched: l_ff sits between the GELU and W₂, so it folds into W₂'s inputs, not into W₁")
MODS = {"q": ("W_q", "b_q"), "k": ("W_k", "b_k"), "v": ("W_v", "b_v")}


def _setup(variant, seed=0):
    cfg = tiny_cfg()
    m = IA3(variant=variant)
    return cfg, m, with_method(cfg, m, seed)


def test_merged_model_equals_the_rescaled_one():
    for variant in ("notes", "paper"):
        cfg, m, params = _setup(variant)
        merged = call(m.merge, params, what=f"IA3({variant!r}).merge", hint=HINT)
        for layer in range(cfg.N):
            th, a, am = params["ia3"]["blocks"][layer], params["blocks"][layer]["attn"], merged["blocks"][layer]["attn"]
            x = rng(layer).standard_normal((3, cfg.d))
            for t in m.scaled:
                W, b = MODS[t]
                check_close(naive_linear(x, am[W], am[b]), th["l_" + t] * naive_linear(x, a[W], a[b]),
                            f"x W'ᵀ + b' vs l_{t} ⊙ (x Wᵀ + b) for {t} in block {layer} ({variant})", HINT)
            mlp, mlpm = params["blocks"][layer]["mlp"], merged["blocks"][layer]["mlp"]
            H = rng(10 + layer).standard_normal((3, cfg.d_ff))
            want = naive_linear(th["l_ff"] * H if m.ff else H, mlp["W_2"], mlp["b_2"])
            check_close(naive_linear(H, mlpm["W_2"], mlpm["b_2"]), want,
                        f"H W₂'ᵀ + b₂ vs (l_ff ⊙ H) W₂ᵀ + b₂ in block {layer} ({variant})", HINT)
            check_same(mlpm["W_1"], mlp["W_1"], f"W₁ of block {layer} (l_ff is after the GELU)", HINT)
            check_same(am["W_o"], a["W_o"], f"W_o of block {layer}", HINT)


def test_unmerge_restores_the_backbone():
    cfg, m, params = _setup("paper", seed=2)
    merged = call(m.merge, params, what="IA3('paper').merge", hint=HINT)
    back = call(m.unmerge, merged, params["ia3"], what="IA3('paper').unmerge", hint=HINT)
    for layer in range(cfg.N):
        for mod, key in (("attn", "W_k"), ("attn", "b_v"), ("mlp", "W_2")):
            check_close(back["blocks"][layer][mod][key], params["blocks"][layer][mod][key],
                        f"{key} of block {layer} after merge then unmerge", HINT)

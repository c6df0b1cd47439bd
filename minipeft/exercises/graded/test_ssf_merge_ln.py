"""Exercise ssf-merge-ln: γ ⊙ LN(x) + β is a LayerNorm with γ'_LN = γ ⊙ γ_LN, β'_LN = γ ⊙ β_LN + β
(equations.md, "SSF").

The region is the LayerNorm branch of ``SSF.merge``. Checked as a property: the merged
LayerNorm equals the unmerged one followed by SSF (LN computed here by a loop over rows).
"""
import minipeft as mp
from minipeft.methods.ssf import SSF
from exercise_helpers import call, check_close, check_same, check_shape, naive_layer_norm, rng, tiny_cfg, with_method

HINT = ("after a LayerNorm: γ'_LN = γ ⊙ γ_LN and β'_LN = γ ⊙ β_LN + β — the LN's shift β_LN is scaled by γ too, "
        "then the SSF shift β is added; the module's keys are 'gamma' and 'beta'")


def test_merged_layer_norm_equals_ssf_after_it():
    cfg = tiny_cfg()
    m = SSF(placements=("ln1", "ln2", "ln_f"))  # LayerNorms only: the linear branch is another exercise
    params = with_method(cfg, m)
    merged = call(m.merge, params, what="SSF.merge", hint=HINT)
    x = rng(1).standard_normal((3, 5, cfg.d))
    sites = [(("blocks", ell, n), params["ssf"]["blocks"][ell][n]) for ell in range(cfg.N) for n in ("ln1", "ln2")]
    sites.append((("ln_f",), params["ssf"]["ln_f"]))
    for path, gb in sites:
        ln0, ln1 = mp.tree.get(params, path), mp.tree.get(merged, path)
        want = gb["gamma"] * naive_layer_norm(x, ln0["gamma"], ln0["beta"], cfg.eps) + gb["beta"]
        check_close(naive_layer_norm(x, ln1["gamma"], ln1["beta"], cfg.eps), want,
                    f"LN'(x) vs γ ⊙ LN(x) + β at {path}", HINT)
    check_shape(merged["blocks"][0]["ln1"]["gamma"], (cfg.d,), "LN₁ γ' of block 0", HINT)
    check_same(merged["blocks"][1]["attn"]["W_v"], params["blocks"][1]["attn"]["W_v"], "W_v (not a placement)", HINT)

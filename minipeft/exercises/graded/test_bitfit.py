"""Exercise bitfit: train only the selected bias terms (equations.md, "BitFit").

The region is ``BitFit.trains_backbone(path)``: True exactly for the selected biases —
b_q, b_k, b_v, b_o of each block's attention, b_1, b_2 of its MLP, and β of LN₁, LN₂ and
LN_f for "beta" — and False for every weight, every LayerNorm γ, the patch embedding and
the head (the head trains by its own flag).
"""
import minipeft as mp
from minipeft.methods.bitfit import BitFit
from exercise_helpers import call, check, leaf_paths, tiny_cfg

HINT = ("path is a tuple such as ('blocks', 0, 'attn', 'b_q') or ('ln_f', 'beta'): select a leaf when its name "
        "path[-1] is one of self.biases and it sits where that bias lives — b_q..b_o in a block's 'attn', b_1/b_2 in "
        "its 'mlp', 'beta' in ln1/ln2 of a block or in ln_f; never the embedding's b or the head's b")

WHERE = {"b_q": "attn", "b_k": "attn", "b_v": "attn", "b_o": "attn", "b_1": "mlp", "b_2": "mlp"}


def _expected(cfg, biases):
    out = set()
    for ell in range(cfg.N):
        for b in biases:
            if b == "beta":
                out |= {("blocks", ell, "ln1", "beta"), ("blocks", ell, "ln2", "beta")}
            else:
                out.add(("blocks", ell, WHERE[b], b))
    if "beta" in biases:
        out.add(("ln_f", "beta"))
    return out


def test_selects_exactly_the_chosen_biases():
    for cfg in (tiny_cfg(), tiny_cfg(front="text", vocab=7, max_len=4)):
        paths = leaf_paths(mp.init_params(cfg, dtype="float64"))
        for biases in (None, ("b_q", "b_1"), ("beta",), ("b_o", "b_2", "beta")):
            m = BitFit() if biases is None else BitFit(biases=biases)
            got = {p for p in paths if call(m.trains_backbone, p, what=f"trains_backbone({p})", hint=HINT)}
            want = _expected(cfg, m.biases)
            extra, missing = sorted(map(str, got - want)), sorted(map(str, want - got))
            check(not extra and not missing,
                  f"BitFit(biases={m.biases}) on a {cfg.front} model selects {len(got)} leaves; wrongly selected: "
                  f"{extra[:4]}; missed: {missing[:4]}", HINT)
            n = sum(int(mp.tree.get(mp.init_params(cfg, dtype='float64'), p).size) for p in got)
            check(n == m.n_params(cfg), f"{n} trainable numbers selected, the closed form says {m.n_params(cfg)}", HINT)

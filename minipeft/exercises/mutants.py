"""Classic mistakes, each written as a wrong body of one exercise's region.

The test suite applies each to a copy that holds the reference everywhere else and checks
that the grader fails exactly that exercise (``benchmarks/exercises_table.py`` prints the
grading table of every mutant). ``LIMITS`` are bodies that never finish or allocate
without bound, which the grader's time and memory limits must stop.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    """A wrong solution: ``bodies`` maps a part index of ``exercise`` to its lines."""

    exercise: str
    mistake: str
    bodies: dict


def _lines(text):
    return text.strip("\n").split("\n")


MUTANTS = {
    "attention-sqrt-d": Mutant("attention", "scores scaled by 1/√d instead of 1/√d_h", {0: _lines("""
scale = 1.0 / math.sqrt(Q.shape[-1])
S = onp.matmul(_heads(Q, h), _heads(K, h).transpose(0, 1, 3, 2))
return _softmax(S * scale)
""")}),
    "layer-norm-in-place": Mutant("layer-norm", "μ subtracted in place from the caller's x", {0: _lines("""
inv_d = 1.0 / x.shape[-1]
x -= _row_sum(x) * inv_d
rstd = 1.0 / onp.sqrt(_row_dot(x, x) * inv_d + eps)
x *= rstd
return x, rstd
""")}),
    "linear-vjp-no-reshape": Mutant("linear-vjp", "dW = gᵀ x without the 2-D views", {0: _lines("""
return lambda g: g.T @ x
""")}),
    "prompt-broadcast-to": Mutant("prompt-tuning", "P_e repeated by np.broadcast_to (no VJP)", {0: _lines("""
return np.concatenate([Z[:, :1], np.broadcast_to(P, (Z.shape[0],) + P.shape), Z[:, 1:]], axis=1)
""")}),
    "vpt-shallow-fan-in-d": Mutant("vpt-shallow", "Xavier bound with fan-in d instead of the patch size", {0: _lines("""
return math.sqrt(6.0 / (2 * cfg.d))
""")}),
    "vpt-deep-accumulate": Mutant("vpt-deep", "VPT-Deep accumulates prompts instead of replacing them", {0: _lines("""
return np.concatenate([X[:, :1], prepend(P[layer], X[:, 1:])], axis=1)
""")}),
    "prefix-after-k": Mutant("prefix-kv", "prefix concatenated after K (and V) instead of before", {0: _lines("""
K, V = kv
B = K.shape[0]
return (np.concatenate([K, np.tile(theta["P_k"][layer], (B, 1, 1))], axis=1),
        np.concatenate([V, np.tile(theta["P_v"][layer], (B, 1, 1))], axis=1))
""")}),
    "prefix-swapped": Mutant("prefix-kv", "P_k and P_v swapped", {0: _lines("""
K, V = kv
return prepend(theta["P_v"][layer], K), prepend(theta["P_k"][layer], V)
""")}),
    "adaptformer-s-on-frozen": Mutant("adaptformer", "AdaptFormer with s applied to the frozen MLP", {0: _lines("""
if self.layers is not None and layer not in self.layers:
    return M
a = theta["blocks"][layer]
Xt = bottleneck(a, x_norm if self.input == "normed" else x_resid)
s = a["s"] if self.learnable_s else float(self.s)
return s * M + Xt
""")}),
    "serial-no-residual": Mutant("serial-adapter", "serial adapter without its residual h", {0: _lines("""
if name not in self.sites or layer is None:
    return h
if self.layers is not None and layer not in self.layers:
    return h
return bottleneck(theta["blocks"][layer][name], h)
""")}),
    "lora-forward-alpha": Mutant("lora-forward", "LoRA update scaled by α instead of α/r", {0: _lines("""
if name not in self.targets or (self.layers is not None and layer not in self.layers):
    return y
ab = theta["blocks"][layer][name]
return y + float(self.alpha if self.alpha is not None else self.r) * linear(linear(x, ab["A"]), ab["B"])
""")}),
    "lora-merge-AB": Mutant("lora-merge", "LoRA merge with W₀ + A B instead of B A", {0: _lines("""
return self.scaling * (ab["A"] @ ab["B"])
""")}),
    "lora-merge-no-scale": Mutant("lora-merge", "LoRA merge without α/r", {0: _lines("""
return ab["B"] @ ab["A"]
""")}),
    "bitfit-every-b": Mutant("bitfit", "BitFit trains every leaf whose name starts with b", {0: _lines("""
return path[-1].startswith("b")
""")}),
    "ia3-l-ff-before-gelu": Mutant("ia3-forward", "(IA)³'s l_ff applied before the GELU", {0: _lines("""
if name == "mlp1" and self.ff:
    return theta["blocks"][layer]["l_ff"] * y
if name not in self.scaled:
    return y
return theta["blocks"][layer]["l_" + name] * y
"""), 1: ["return H"]}),
    "ia3-merge-l-ff-rows": Mutant("ia3-merge", "l_ff folded into W₂'s rows instead of its columns", {1: _lines("""
return W * l[:, None]
""")}),
    "ssf-forward-shift-first": Mutant("ssf-forward", "SSF as γ ⊙ (x + β)", {0: _lines("""
if name not in self.placements:
    return y
gb = theta["blocks"][layer][name]
return gb["gamma"] * (y + gb["beta"])
""")}),
    "ssf-merge-linear-no-bias": Mutant("ssf-merge-linear", "SSF merged as γ ⊙ W without the bias term", {0: _lines("""
new = {**m, W: g[:, None] * m[W]}
""")}),
    "ssf-merge-ln-beta": Mutant("ssf-merge-ln", "SSF into a LayerNorm as β' = β_LN + β", {0: _lines("""
new = {**m, "gamma": g * m["gamma"], "beta": m["beta"] + t}
""")}),
}

#: bodies the grader's limits must stop (time, memory); each costs its exercise only
LIMITS = {
    "loop-forever": Mutant("bitfit", "a body that never returns", {0: _lines("""
while True:
    pass
""")}),
    "allocate-forever": Mutant("lora-merge", "a body that allocates without bound", {0: _lines("""
blocks = []
while True:
    blocks.append(onp.ones(2 ** 24))
""")}),
}

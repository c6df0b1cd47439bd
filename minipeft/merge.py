"""Merging reparameterisation methods into the backbone (equations.md, "Reparameterisation:
the general form": W = W₀ + ΔW, ΔW = f(θ)).

The folds the methods share:

    linear, output side   s ⊙ (x Wᵀ + b) + t = x (diag(s) W)ᵀ + (s ⊙ b + t)     ("SSF", "(IA)³")
    linear, input side    (l ⊙ H) Wᵀ = H (W diag(l))ᵀ                          ("(IA)³" l_ff → W₂)
    LayerNorm             s ⊙ LN(x) + t = LN with γ' = s ⊙ γ, β' = s ⊙ β + t   ("SSF")
    low rank              x W₀ᵀ + (α/r)(x Aᵀ) Bᵀ = x (W₀ + (α/r) B A)ᵀ          ("LoRA")

When merging is exact with several methods active. The hooks at one point of the forward
pass (say the output of W_q in block ℓ) run in the order the methods are listed; a merge
moves a method's hook into the weights, i.e. to the front of that point. So merging m is
exact when no method that stays active runs before m at a point m folds into; and for a
fold into W₂'s columns (input side) also no staying method reads W₂'s input or rescales
H after m. ``merge_methods`` checks this from each method's ``hook_points`` (methods
without it are assumed to touch every point of each seam they hook) and refuses, saying
which method blocks which point, rather than return a model that differs.
"""
from __future__ import annotations

#: linear projections of a block: target name -> (module, weight key, bias key); W ∈ R^{d_out×d_in}
LINEARS = {
    "q": ("attn", "W_q", "b_q"), "k": ("attn", "W_k", "b_k"), "v": ("attn", "W_v", "b_v"),
    "o": ("attn", "W_o", "b_o"), "mlp1": ("mlp", "W_1", "b_1"), "mlp2": ("mlp", "W_2", "b_2"),
}
#: LayerNorms: name -> its key (in a block for ln1/ln2; top level for ln_f)
LAYER_NORMS = ("ln1", "ln2", "ln_f")


def linear_shape(cfg, name: str) -> tuple:
    """(d_out, d_in) of the projection ``name``: W_q..W_o d×d, W₁ d_ff×d, W₂ d×d_ff."""
    return {"mlp1": (cfg.d_ff, cfg.d), "mlp2": (cfg.d, cfg.d_ff)}.get(name, (cfg.d, cfg.d))


def linear_width(cfg, name: str) -> int:
    """d_out of the projection ``name`` (the length of a vector scaling its output)."""
    return linear_shape(cfg, name)[0]


def ln_path(layer, name: str) -> tuple:
    """Path of a LayerNorm's dict: ("blocks", ℓ, "ln1"), ("blocks", ℓ, "ln2") or ("ln_f",)."""
    return ("ln_f",) if name == "ln_f" else ("blocks", layer, name)


def check_choice(field: str, values, allowed, *, allow_empty: bool = False) -> tuple:
    """``values`` as a tuple of distinct members of ``allowed``; ValueError naming ``field`` otherwise."""
    if isinstance(values, str) or not isinstance(values, (tuple, list)):
        raise ValueError(f"{field} must be a tuple of names among {tuple(allowed)}, got {values!r}")
    values = tuple(values)
    if not values and not allow_empty:
        raise ValueError(f"{field} must not be empty; allowed names: {tuple(allowed)}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{field}: unknown name(s) {bad}; allowed: {tuple(allowed)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{field}: each name at most once, got {values}")
    return values


def take_theta(params, method):
    """params[method.name], or a ValueError saying the method is already merged."""
    if method.name not in params:
        raise ValueError(f"{type(method).__name__} {method.name!r}: params has no entry {method.name!r}: "
                         f"it is already merged (or was never attached); merging twice would apply θ twice")
    return params[method.name]


def check_unmerge(params, method):
    """ValueError when params still holds θ_m: unmerge needs a merged model."""
    if method.name in params:
        raise ValueError(f"{type(method).__name__} {method.name!r}: params still has an entry {method.name!r}: "
                         f"it is not merged, so there is nothing to unmerge")


def without(params, key):
    """A shallow copy of ``params`` without ``key``."""
    return {k: v for k, v in params.items() if k != key}


def nonzero(field: str, s):
    """ValueError when a scale vector has a zero (its fold cannot be undone by division)."""
    if not (s != 0).all():
        raise ValueError(f"{field}: has a zero entry, so diag({field}) is not invertible and unmerge is undefined")


# ----------------------------------------------------------------------------- folds
def _rows(s, W):
    """s shaped to scale the rows of W: (d_out, 1) for a matrix W, (d_out,) for a vector."""
    return s.reshape(s.shape + (1,) * (W.ndim - 1))


def fold_out(W, b, s, t=None):
    """Output-side fold: s ⊙ (x Wᵀ + b) + t = x W'ᵀ + b' with W' = diag(s) W, b' = s ⊙ b + t.

    W (d_out, d_in), b, s, t (d_out,)  ->  (W', b').  W may also be a LayerNorm's γ (d,),
    with b its β: s ⊙ LN(x) + t has γ' = s ⊙ γ, β' = s ⊙ β + t (the same formula).
    """
    return _rows(s, W) * W, (s * b if t is None else s * b + t)


def unfold_out(W, b, s, t=None):
    """Inverse of ``fold_out``: W = diag(s)⁻¹ W', b = (b' − t) / s (W a matrix or an LN γ)."""
    return W / _rows(s, W), (b / s if t is None else (b - t) / s)


def fold_in(W, l):
    """Input-side fold: (l ⊙ H) Wᵀ = H (W diag(l))ᵀ.  W (d_out, d_in), l (d_in,) -> W diag(l)."""
    return W * l[None, :]


def unfold_in(W, l):
    """Inverse of ``fold_in``: W = W' diag(l)⁻¹."""
    return W / l[None, :]


# ---------------------------------------------------------------- exactness of merges


def all_points(method, n_layers: int) -> set:
    """Points of the forward pass a method's hooks touch.

    ("linear", ℓ, n): the output of projection n of block ℓ; ("linear_in", ℓ, n): its
    input, read; ("after", ℓ, n): a module output (n ∈ ln1, attn, ln2, mlp; ℓ None for
    ln_f); ("ff_hidden", ℓ, None): the MLP's hidden activation. A method may say
    exactly (``hook_points(n_layers)``); otherwise each seam it hooks counts everywhere.
    """
    if hasattr(method, "hook_points"):
        return set(method.hook_points(n_layers))
    pts = set()
    layers = range(n_layers)
    if getattr(method, "on_linear", None) is not None:
        pts |= {(k, ell, n) for k in ("linear", "linear_in") for ell in layers for n in LINEARS}
    if getattr(method, "on_after", None) is not None:
        pts |= {("after", ell, n) for ell in layers for n in ("ln1", "attn", "ln2", "mlp")} | {("after", None, "ln_f")}
    if getattr(method, "on_ff_hidden", None) is not None:
        pts |= {("ff_hidden", ell, None) for ell in layers}
    return pts


def merge_blocker(method, active, n_layers: int):
    """Why merging ``method`` now would change the function of ``active`` (the methods
    active, in order, ``method`` among them), or None when the merge is exact."""
    i = [m.name for m in active].index(method.name)
    before, after = active[:i], active[i + 1:]
    for p in sorted(all_points(method, n_layers), key=str):
        kind, ell, n = p
        if kind in ("linear", "after"):
            for o in before:
                if p in all_points(o, n_layers):
                    return (f"{o.name!r} is listed before {method.name!r} and also acts on {kind} {n} of layer {ell}; "
                            f"merge {o.name!r} first (or list {method.name!r} first)")
        elif kind == "ff_hidden":
            for o in after:
                if p in all_points(o, n_layers):
                    return f"{o.name!r} acts on the MLP hidden activation of layer {ell} after {method.name!r}"
            for o in before + after:
                if ("linear_in", ell, "mlp2") in all_points(o, n_layers):
                    return f"{o.name!r} reads the input of W_2 in layer {ell}, which folding l_ff into W_2 changes"
    return None


def check_mergeable(methods) -> None:
    """ValueError naming each method that cannot fold into the weights, and why."""
    if not methods:
        raise ValueError("methods: nothing to merge (no method given)")
    refused = [m for m in methods if not m.mergeable]
    if refused:
        raise ValueError("cannot merge: " + "; ".join(
            f"method {m.name!r} ({type(m).__name__}) cannot be merged: {m.not_mergeable_because}" for m in refused))


def merge_methods(params, methods, which=None):
    """Fold the methods named in ``which`` (default: all) into the backbone, exactly.

        forward(params', x, remaining) = forward(params, x, methods)

    Returns (params', remaining): the remaining methods, in their order, stay active.
    Merges in an order that keeps the function exact (see the module docstring); a
    ValueError names any method that cannot be merged (not mergeable, unknown name, or
    blocked by a method that stays active). ``params`` is not modified.
    """
    methods = list(methods)
    names = [m.name for m in methods]
    wanted = names if which is None else list(which)
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValueError(f"which: unknown method name(s) {unknown}; the active methods are {names}")
    pending = [m for m in methods if m.name in wanted]
    check_mergeable(pending)
    n_layers = len(params["blocks"])
    active = list(methods)
    while pending:
        reasons = {m.name: merge_blocker(m, active, n_layers) for m in pending}
        ready = [m for m in pending if reasons[m.name] is None]
        if not ready:
            raise ValueError("cannot merge exactly: " + "; ".join(f"{k}: {v}" for k, v in reasons.items()))
        m = ready[0]
        params = m.merge(params)
        active = [a for a in active if a.name != m.name]
        pending = [p for p in pending if p.name != m.name]
    return params, active

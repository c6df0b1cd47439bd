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
H after m. ``merge_methods`` checks this from each method's ``hook_points`` (by default
every point of each seam it hooks, see ``methods.Method.hook_points``) and refuses,
saying which method blocks which point, rather than return a model that differs.

This file holds the folds and the merge ordering only; the backbone's schema (which
projection is where) lives in transformer/schema.py, the θ bookkeeping of one method's
merge (``theta_of``, ``check_merged``) on ``methods.Method``.
"""
from __future__ import annotations

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
    """The points of the forward pass ``method``'s hooks touch (``Method.hook_points``)."""
    return set(method.hook_points(n_layers))


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

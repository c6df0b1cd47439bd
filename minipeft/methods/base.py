"""What every PEFT method is: a frozen dataclass of its options that fills some seams.

The whole protocol is declared, with its default, on ``Method`` below: a new method
subclasses it, sets the fields it needs and overrides the parts it uses. In short:

- a frozen dataclass; its fields are its options (validated in ``check_options`` with
  ``minipeft.validate``, raising an error naming the field) and ``name``, the key of its
  θ in ``params`` (checked for every method);
- ``init(cfg, params, rng) -> theta_m``: its new parameters (a nested dict of arrays);
  ``attach`` casts them to the backbone's dtype and device and stores them at params[name];
- ``on_<seam>(self, theta_m, value, **ctx)`` for each seam it fills (the seams:
  ``transformer.SEAMS``; signatures in transformer/forward.py); ``prepare`` turns θ_m
  into what the hooks read, once per forward pass;
- ``trains_backbone(path)``, ``n_params(cfg)``, ``suggested_lr``, ``prompt_seam``, ``position_offset``,
  ``hook_points(n_layers)``, ``merge(params)`` / ``unmerge(params, theta)``,
  ``options()`` / ``from_options(dict)``.
"""
from __future__ import annotations

import dataclasses

import numpy as onp

from .. import tree
from ..backend import cast_like
from ..transformer import SEAMS
from ..transformer.schema import BACKBONE_KEYS, LINEARS, anchor
from ..validate import layer_indices, method_name

#: the hook names, one per seam of the forward pass: "on_tokens", ..., "on_after"
HOOKS = tuple(f"on_{s}" for s in SEAMS)


class Method:
    """Base class of PEFT methods. Subclasses are ``@dataclass(frozen=True)``.

    Each attribute and method below is one part of the protocol, with the default a
    subclass gets when it does not override it.
    """

    #: the key of θ_m in params (a dataclass field in every subclass)
    name: str = "method"
    #: why ``merge`` is impossible for this method (shown in the error)
    not_mergeable_because: str = "it adds computation that has no equivalent weight matrix"
    #: the learning rate ``minipeft train`` and the tour use when none is given (Adam); a
    #: subclass states how it chose its value (a property where it depends on the options)
    suggested_lr: float = 1e-3
    #: for a method that adds rows to the sequence or to the keys: the seam where they enter
    #: ("tokens": after CLS, before block 1; "layer_in": at every block's input, at most one
    #: such method; "kv": prefix keys/values); None for every other method. ``layout`` reads it.
    prompt_seam = None
    #: how far the real tokens' position ids shift (peft's prefix tuning on BERT: p); forward sums it
    position_offset = 0

    def __post_init__(self):
        """Run by the dataclass after ``__init__``: checks ``name`` (``validate.method_name``)
        for every method, then the subclass's ``check_options``."""
        method_name(self.name)
        self.check_options()

    def check_options(self) -> None:
        """Validate the options, raising an error naming the field (``minipeft.validate``),
        and normalise them with ``object.__setattr__`` (the dataclass is frozen). Default:
        nothing to check."""

    # The seam hooks: ``on_<seam>`` for each seam of transformer.SEAMS, called as
    # ``hook(theta_m, value, **ctx)`` (signatures: transformer/forward.py). Each is None
    # (not filled) here, set just below the class from HOOKS: the seams are listed once.

    @property
    def needs_params(self) -> bool:
        """True when some seam hook reads θ_m, so params must hold params[name]."""
        return any(getattr(self, h) is not None for h in HOOKS)

    def init(self, cfg, params, rng) -> dict:
        """θ_m for this method, drawn from ``rng`` (default: nothing). Any float dtype and
        module: ``attach`` casts it to the backbone's."""
        return {}

    def prepare(self, theta, cfg):
        """θ_m as the hooks read it, computed once per forward pass (default: θ_m itself;
        reparameterised prefix tuning evaluates its MLP here, not once per layer)."""
        return theta

    def trains_backbone(self, path) -> bool:
        """Whether the backbone leaf at ``path`` trains with this method (default: none)."""
        return False

    def n_params(self, cfg) -> int:
        """Closed-form count of trainable numbers this method adds or unfreezes."""
        raise NotImplementedError

    def hook_points(self, n_layers: int) -> set:
        """Points of the forward pass its hooks touch, for ``merge.merge_methods``.

        ("linear", ℓ, n): the output of projection n of block ℓ; ("linear_in", ℓ, n): its
        input, read; ("after", ℓ, n): a module output (n ∈ ln1, attn, ln2, mlp; ℓ None for
        ln_f); ("ff_hidden", ℓ, None): the MLP's hidden activation. Default: every point
        of each seam it hooks (safe: a merge is refused rather than made inexact); a
        method says exactly by overriding this.
        """
        pts = set()
        layers = range(n_layers)
        if self.on_linear is not None:
            pts |= {(k, ell, n) for k in ("linear", "linear_in") for ell in layers for n in LINEARS}
        if self.on_after is not None:
            pts |= {("after", ell, n) for ell in layers for n in ("ln1", "attn", "ln2", "mlp")}
            pts.add(("after", None, "ln_f"))
        if self.on_ff_hidden is not None:
            pts |= {("ff_hidden", ell, None) for ell in layers}
        return pts

    @property
    def mergeable(self) -> bool:
        """True when ``merge`` folds θ_m into the backbone's weights."""
        return type(self).merge is not Method.merge

    def merge(self, params) -> dict:
        """Fold θ_m into the backbone, removing params[name]; the default refuses, saying why."""
        raise ValueError(f"method {self.name!r} ({type(self).__name__}) cannot be merged: "
                         f"{self.not_mergeable_because}")

    def unmerge(self, params, theta) -> dict:
        """Undo ``merge``: the backbone before it, with θ_m back at params[name]; the
        default refuses (a method that merges defines it)."""
        raise ValueError(f"method {self.name!r} ({type(self).__name__}) cannot be unmerged: "
                         + ("it has no unmerge" if self.mergeable else self.not_mergeable_because))

    # ------------------------------------------------ helpers for merge and unmerge
    def theta_of(self, params):
        """params[name] (for ``merge``), or a ValueError saying the method is already merged."""
        if self.name not in params:
            raise ValueError(f"{type(self).__name__} {self.name!r}: params has no entry {self.name!r}: "
                             f"it is already merged (or was never attached); merging twice would apply θ twice")
        return params[self.name]

    def check_merged(self, params) -> None:
        """ValueError when params still holds θ_m (for ``unmerge``: it needs a merged model)."""
        if self.name in params:
            raise ValueError(f"{type(self).__name__} {self.name!r}: params still has an entry {self.name!r}: "
                             f"it is not merged, so there is nothing to unmerge")

    # ---------------------------------------------------------------- the record
    def options(self) -> dict:
        """The method's options as a JSON-ready dict (tuples as lists)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_options(cls, options: dict):
        """The inverse of ``options()``: ``cls(**options)`` with lists back as tuples. An
        unknown option is a ValueError naming it and the allowed ones."""
        if not isinstance(options, dict):
            raise ValueError(f"options of {cls.__name__} must be a dict, got {type(options).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        extra = sorted(k for k in options if k not in known)
        if extra:
            raise ValueError(f"{cls.__name__}: unknown option(s) {extra}; allowed: {known}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


for _hook in HOOKS:  # the seam hooks, declared once from the seam list: None = not filled
    setattr(Method, _hook, None)
del _hook


def layers_option(layers):
    """A ``layers`` option checked and normalised: None (every block) or a sorted tuple of
    distinct block indices ≥ 0 (ValueError naming "layers"; the bound < N needs the config,
    see ``adapted_layers``)."""
    layers = layer_indices("layers", layers,
                           allowed_sequence="None (every block) or a non-empty tuple of block indices",
                           allowed_items="distinct non-negative ints (block indices ≥ 0, counted from 0)")
    return None if layers is None else tuple(sorted(layers))


def adapted_layers(layers, n_layers: int) -> tuple:
    """The block indices a method with a ``layers`` option adapts, increasing: all of
    range(N) when ``layers`` is None; a ValueError when an index is ≥ N."""
    if layers is None:
        return tuple(range(n_layers))
    if max(layers) >= n_layers:
        raise ValueError(f"layers must be block indices in 0..{n_layers - 1} (the backbone has N={n_layers} "
                         f"blocks, counted from 0), got {tuple(layers)!r}")
    return tuple(sorted(layers))


def per_layer(n_layers: int, layers, make) -> dict:
    """The one layout of per-layer θ: {"blocks": [make(ℓ) for an adapted block ℓ, {}
    otherwise] for ℓ = 0..N-1}. ``make`` is called in increasing ℓ (the order of the draws)."""
    adapted = set(adapted_layers(layers, n_layers))
    return {"blocks": [make(ell) if ell in adapted else {} for ell in range(n_layers)]}


def attach(params: dict, methods, cfg, seed: int = 0) -> dict:
    """``params`` with each method's θ_m added at params[method.name].

    Method i draws from ``numpy.random.default_rng([seed, i])``: same seed, same θ.
    θ_m is cast to the backbone's dtype and put on its device (a method may build it with
    NumPy in float64): the one place that decides θ's dtype and device.
    """
    out = dict(params)
    ref = anchor(params)  # embed.pos, or W_tok in a model without a position table
    for i, m in enumerate(methods):
        if m.name in BACKBONE_KEYS:
            raise ValueError(f"name: {m.name!r} is a backbone key; choose another method name")
        out[m.name] = cast_like(m.init(cfg, out, onp.random.default_rng([seed, i])), ref)
    return out


def trainable(methods, train_head: bool = True):
    """Predicate (path, leaf) -> bool selecting θ: every method's own leaves, the backbone
    leaves some method unfreezes, and the head when ``train_head``."""
    names = {m.name for m in methods}

    def pred(path, leaf):
        if path[0] in names:
            return True
        if train_head and path[0] == "head":
            return True
        return any(m.trains_backbone(path) for m in methods)

    return pred


def count_trainable(params, methods, train_head: bool = True) -> int:
    """Number of scalars under ``trainable(methods, train_head)``."""
    theta, _ = tree.split(params, trainable(methods, train_head))
    return tree.count(theta)

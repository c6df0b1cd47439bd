"""What every PEFT method is: a frozen dataclass of its options that fills some seams.

A method (see transformer/forward.py for the seams and their hook signatures):
- is a frozen dataclass; its fields are its options (validated in ``__post_init__``,
  raising ValueError naming the field) and ``name``, the key of its θ in ``params``;
- ``init(cfg, params, rng) -> theta_m``: its new parameters (a nested dict of arrays in
  the backbone's dtype); ``attach`` stores them at params[name];
- defines ``on_<seam>(self, theta_m, value, **ctx)`` for each seam it fills;
- ``trains_backbone(path) -> bool``: backbone leaves it unfreezes (BitFit's biases);
- ``n_params(cfg) -> int``: the closed form of its trainable numbers (equations.md);
- ``merge(params) -> params`` where the notes say it folds into the weights; the
  default raises ValueError saying why it cannot.
"""
from __future__ import annotations

import dataclasses

import numpy as onp

from .. import tree
from ..backend import like


HOOKS = ("on_tokens", "on_layer_in", "on_linear", "on_kv", "on_ff_hidden", "on_mlp", "on_after")


class Method:
    """Base class of PEFT methods. Subclasses are ``@dataclass(frozen=True)``."""

    name: str = "method"
    #: why ``merge`` is impossible for this method (shown in the error)
    not_mergeable_because: str = "it adds computation that has no equivalent weight matrix"

    on_tokens = on_layer_in = on_linear = on_kv = on_ff_hidden = on_mlp = on_after = None

    @property
    def needs_params(self) -> bool:
        """True when some seam hook reads θ_m, so params must hold params[name]."""
        return any(getattr(self, h) is not None for h in HOOKS)

    def init(self, cfg, params, rng) -> dict:
        """θ_m for this method (default: nothing)."""
        return {}

    def trains_backbone(self, path) -> bool:
        """Whether the backbone leaf at ``path`` trains with this method (default: none)."""
        return False

    def n_params(self, cfg) -> int:
        """Closed-form count of trainable numbers this method adds or unfreezes."""
        raise NotImplementedError

    @property
    def mergeable(self) -> bool:
        """True when ``merge`` folds θ_m into the backbone's weights."""
        return type(self).merge is not Method.merge

    def merge(self, params) -> dict:
        """Fold θ_m into the backbone; the default refuses, saying why."""
        raise ValueError(f"method {self.name!r} ({type(self).__name__}) cannot be merged: "
                         f"{self.not_mergeable_because}")

    def options(self) -> dict:
        """The method's options as a JSON-ready dict."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


def attach(params: dict, methods, cfg, seed: int = 0) -> dict:
    """``params`` with each method's θ_m added at params[method.name].

    Method i draws from ``numpy.random.default_rng([seed, i])``: same seed, same θ.
    θ_m is put on the backbone's device (a method may build it with NumPy).
    """
    out = dict(params)
    for i, m in enumerate(methods):
        if m.name in tree_backbone_keys():
            raise ValueError(f"name: {m.name!r} is a backbone key; choose another method name")
        out[m.name] = like(m.init(cfg, out, onp.random.default_rng([seed, i])), params["embed"]["pos"])
    return out


def tree_backbone_keys():
    """Top-level keys of the backbone φ."""
    return ("embed", "blocks", "ln_f", "pooler", "head")


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
    """Number of trainable scalars under ``trainable(methods, train_head)``."""
    theta, _ = tree.split(params, trainable(methods, train_head))
    return tree.count(theta)

"""The benchmark's cases: one ViT size and dtype, its methods, and one step of each framework.

Imported by bench.py (in-process tables) and by fresh.py's workers (one framework per fresh
process). Importing this module loads neither PyTorch nor anything a plain ``minipeft train``
would not load: the PyTorch halves import it when called.
"""
from __future__ import annotations

import math

import autograd
import numpy as onp

import minipeft as mp
from minipeft import tree
from minipeft.transformer import check_model

BATCH, N_LAYERS, HEADS, PATCH, CLASSES = 64, 4, 4, 4, 10
#: the methods every case attaches (θ perturbed so that B ≠ 0 for LoRA)
METHODS = ("lora", "prompt", "ia3")


# ---------------------------------------------------------------------------- cases
def config(d, T):
    """The benchmark's ViT with T = 1 + g² tokens: g×g patches of 4×4 pixels."""
    g = math.isqrt(T - 1) if T > 1 else 0
    if T < 2 or g * g != T - 1:
        raise ValueError(f"T must be 1 + g² tokens (CLS + g×g patches), e.g. 5, 17, 65; got {T}")
    if d % HEADS:
        raise ValueError(f"d must be a multiple of h = {HEADS}, got {d}")
    return mp.Config(d=d, h=HEADS, N=N_LAYERS, d_ff=2 * d, n_classes=CLASSES, image_size=g * PATCH, patch=PATCH)


def method(name):
    """A fresh instance of a registered method, or None when its module is not there yet."""
    try:
        return mp.method_class(name)()
    except (ImportError, AttributeError):
        return None


class Case:
    """One size and dtype: the backbone (every leaf perturbed, so LN γ ≠ 1, biases ≠ 0),
    LoRA, prompt-tuning and (IA)³ θ (perturbed: LoRA's B ≠ 0, l ≠ 1), a batch of images in
    [0, 1] and labels."""

    def __init__(self, d, T, dtype, batch=BATCH, seed=0):
        self.cfg, self.dtype, self.T = config(d, T), dtype, T
        rng = onp.random.default_rng(seed)
        base = mp.init_params(self.cfg, seed, dtype)
        self.params = tree.map_leaves(
            lambda p, a: (a + 0.05 * rng.standard_normal(a.shape)).astype(dtype), base)
        self.x = rng.random((batch, 1, self.cfg.image_size, self.cfg.image_size)).astype(dtype)
        self.y = rng.integers(0, CLASSES, batch)
        self.methods = {}
        for name in METHODS:
            m = method(name)
            if m is not None:
                p = mp.attach(self.params, [m], self.cfg, seed)
                p[m.name] = tree.map_leaves(
                    lambda q, a: (a + 0.05 * rng.standard_normal(a.shape)).astype(dtype), p[m.name])
                self.methods[name] = (m, p)

    def setup(self, kind):
        """(params, methods, predicate of θ) for a step of ``kind`` (lora, prompt, ia3 or full)."""
        if kind == "full":
            return self.params, [], (lambda path, leaf: True)
        m, p = self.methods[kind]
        return p, [m], mp.trainable([m])

    def torch_args(self, kind):
        """The twin's keyword arguments for ``kind``."""
        if kind == "lora":
            m = self.methods["lora"][0]
            return {"lora": (m.name, m.scaling)}
        if kind in ("prompt", "ia3"):
            return {kind: self.methods[kind][0].name}
        return {}


# ----------------------------------------------------------------- the two halves
def mp_forward(case, params=None, methods=()):
    """minipeft's forward (no trace)."""
    params = case.params if params is None else params
    return lambda: mp.forward(params, case.x, case.cfg, methods)


def mp_step(case, kind, grad="value_and_grad"):
    """One minipeft training step as ``fit`` runs it: loss (the model and batch checked once,
    before the steps), gradients of θ, one Adam update."""
    params, methods, pred = case.setup(kind)
    theta, phi = mp.split(params, pred)
    box = {"theta": theta, "state": mp.adam_init(theta, inplace=True)}
    x, y, cfg = case.x, case.y, case.cfg
    check_model(params, cfg, methods)

    def objective(th):
        return mp.loss(th, phi, x, y, cfg, methods, checked=True)

    def step():
        if grad == "value_and_grad":
            _, g = mp.value_and_grad(objective, box["theta"])
        else:  # autograd boxing the whole dict: the O(P²) bookkeeping
            g = autograd.grad(objective)(box["theta"])
        box["theta"], box["state"] = mp.adam_step(box["theta"], g, box["state"], lr=1e-3, inplace=True)  # as fit

    return step


def _torch():
    import torch
    import torch.nn.functional as F

    import torch_model as tm
    return torch, F, tm


def torch_forward(case, sdpa=False):
    """The twin's forward under ``torch.no_grad()``."""
    torch, _, tm = _torch()
    P = tm.to_torch(case.params, lambda p, a: False)
    x = torch.from_numpy(case.x)

    def fwd():
        with torch.no_grad():
            return tm.forward(P, x, case.cfg, sdpa=sdpa)

    return fwd


def torch_step(case, kind, sdpa=False):
    """One PyTorch training step: zero_grad, forward, cross-entropy, backward, Adam."""
    torch, F, tm = _torch()
    params, _, pred = case.setup(kind)
    P = tm.to_torch(params, pred)
    opt = torch.optim.Adam([t for t in P.values() if t.requires_grad], lr=1e-3)
    x, y, kw = torch.from_numpy(case.x), torch.from_numpy(case.y), case.torch_args(kind)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(tm.forward(P, x, case.cfg, sdpa=sdpa, **kw), y).backward()
        opt.step()

    return step

import os

import numpy as onp
import pytest
from hypothesis import HealthCheck, settings

# Numeric code on a slow shared 2-core machine has no fair deadline.
settings.register_profile("minipeft", deadline=None, print_blob=True, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minipeft"))

import minipeft as mp  # noqa: E402


@pytest.fixture
def tiny_cfg():
    """A 2-layer ViT on 8×8 images, patch 4: T = 1 + 4 tokens."""
    return mp.Config(d=16, h=2, N=2, d_ff=24, n_classes=3, image_size=8, patch=4)


@pytest.fixture
def text_cfg():
    return mp.Config(d=16, h=4, N=2, d_ff=32, n_classes=3, front="text", vocab=11, max_len=6)


def images(cfg, B, seed=0, dtype="float64"):
    """A reproducible batch of random images for ``cfg``: (B, C, H, W) in [0, 1]."""
    rng = onp.random.default_rng(seed)
    return rng.random((B, cfg.channels, cfg.image_size, cfg.image_size)).astype(dtype)


def randomize(params, seed=0, scale=0.3):
    """A copy of ``params`` with every leaf perturbed (so LN γ ≠ 1, biases ≠ 0, …)."""
    rng = onp.random.default_rng(seed)
    noise = lambda a: mp.backend.like(scale * rng.standard_normal(a.shape), a)  # noqa: E731  (on a's device)
    return mp.tree.map_leaves(lambda p, a: (a + noise(a)).astype(a.dtype), params)


def finite_diff_check(f, x, eps=1e-6, n=6, seed=0, rtol=1e-5, atol=1e-7):
    """Compare autograd's gradient of scalar f at x (float64) with central differences
    along ``n`` random directions: g·u ≈ (f(x+εu) − f(x−εu)) / 2ε."""
    from autograd import grad

    g = grad(f)(x)
    rng = onp.random.default_rng(seed)
    for _ in range(n):
        u = rng.standard_normal(x.shape)
        fd = (f(x + eps * u) - f(x - eps * u)) / (2 * eps)
        assert onp.allclose(onp.sum(g * u), fd, rtol=rtol, atol=atol), (onp.sum(g * u), fd)


def theta_vec_fn(params, methods, x, y, cfg, train_head=True):
    """(θ as one vector, L(vector), autograd's gradient as one vector)."""
    th, ph = mp.split(params, mp.trainable(methods, train_head))
    paths = [(q, a.shape) for q, a in mp.tree.leaves_with_paths(th)]
    vec = onp.concatenate([a.ravel() for _, a in mp.tree.leaves_with_paths(th)])

    def unvec(v):
        out, i = th, 0
        for q, s in paths:
            n = int(onp.prod(s))
            out = mp.tree.replace(out, q, v[i:i + n].reshape(s))
            i += n
        return out
    f = lambda v: float(mp.loss(unvec(v), ph, x, y, cfg, methods))  # noqa: E731
    _, g = mp.value_and_grad(lambda t: mp.loss(t, ph, x, y, cfg, methods), th)
    return vec, f, onp.concatenate([a.ravel() for _, a in mp.tree.leaves_with_paths(g)])


_MINILM = {}


@pytest.fixture(scope="session")
def minilm():
    """``minilm(dtype)`` -> (params, cfg, tokenizer) of all-MiniLM-L6-v2 with pool="pooler"
    (so φ has the pooler too; use ``dataclasses.replace(cfg, pool=...)`` for the others),
    a 3-class head; loaded once per dtype per session (a few seconds each)."""
    from minipeft.models import minilm as M

    def get(dtype="float64"):
        if dtype not in _MINILM:
            _MINILM[dtype] = M.load(n_classes=3, pool="pooler", dtype=dtype)
        return _MINILM[dtype]

    return get

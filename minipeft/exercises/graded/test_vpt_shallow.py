"""Exercise vpt-shallow: the VPT prompts' init half-width v = sqrt(6 / (channels·patch² + d)) (equations.md, "VPT").

The region is ``methods.vpt.vpt_bound``: Xavier-uniform with the patch embedding's fan-in
(channels × pixels of a patch) and fan-out d. VPT-Shallow's P (p, d) ~ U[−v, v].
"""
import math

import numpy as onp

import minipeft as mp
from minipeft.methods.vpt import VPTShallow, vpt_bound
from exercise_helpers import call, check, tiny_cfg

HINT = ("Xavier-uniform: v = sqrt(6 / (fan_in + fan_out)) with fan_in = channels·patch² (cfg.patch_dim, the "
        "pixels one patch embedding reads) and fan_out = d")


def test_bound_is_xavier_uniform_of_the_patch_embedding():
    for kw in ({}, {"channels": 3}, {"patch": 2, "d": 16}, {"image_size": 12, "patch": 6, "channels": 3}):
        cfg = tiny_cfg(**kw)
        v = call(vpt_bound, cfg, what=f"vpt_bound for {kw or 'the tiny config'}", hint=HINT)
        fan_in = cfg.channels * cfg.patch ** 2
        want = math.sqrt(6.0 / (fan_in + cfg.d))
        check(isinstance(v, float) and abs(v - want) <= 1e-12 * want,
              f"vpt_bound with channels={cfg.channels}, patch={cfg.patch}, d={cfg.d}: got {v!r}, expected {want!r}",
              HINT)


def test_shallow_prompts_are_uniform_in_the_bound():
    cfg = tiny_cfg(d=16)
    params = mp.attach(mp.init_params(cfg, dtype="float64"), [VPTShallow(p=64)], cfg, seed=0)
    P = params["vpt_shallow"]["P"]
    v = math.sqrt(6.0 / (cfg.channels * cfg.patch ** 2 + cfg.d))
    check(onp.abs(P).max() <= v, f"max |P| = {onp.abs(P).max():.4f} > v = {v:.4f}", HINT)
    check(onp.abs(P).max() >= 0.9 * v, f"max |P| = {onp.abs(P).max():.4f} is far below v = {v:.4f}", HINT)
    # the variance of U[-v, v] is v²/3; 1024 draws estimate it within ~5 % (one standard deviation)
    check(abs(P.var() / (v * v / 3) - 1) < 0.2, f"var(P) = {P.var():.4f}, U[-v, v] has v²/3 = {v * v / 3:.4f}",
          HINT)

"""The work a training step does around its GEMMs: none below the lowest trainable parameter.

With θ only in block ℓ (LoRA on the last layer), the blocks below ℓ read nothing that is
traced: autograd builds no node for them, so no VJP — no dX = g W, no dW = gᵀ x, no
LayerNorm or softmax backward — runs there. These tests count the linear VJPs that run
in a real step, per weight matrix, and fail if one below ℓ ran.
"""
import dataclasses
import sys
from pathlib import Path

import numpy as onp
import pytest

import minipeft as mp
from minipeft import tree
from minipeft.autodiff import value_and_grad
from minipeft.nn import primitives as P
from minipeft.nn import ff as FF

from conftest import images, randomize


def _measure():
    """benchmarks/measure.py (its ``vjp_runs`` counts the VJPs a backward pass runs, per W)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import measure
    finally:
        sys.path.pop(0)
    return measure


@pytest.mark.parametrize("recompute", ["none", "mlp"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_no_backward_work_below_the_lowest_trainable_layer(tiny_cfg, method, recompute, monkeypatch):
    monkeypatch.setenv("MINIPEFT_RECOMPUTE", recompute)
    cfg = dataclasses.replace(tiny_cfg, N=3)
    params = randomize(mp.init_params(cfg, 0, "float64"))
    x, y = images(cfg, 4), onp.arange(4) % cfg.n_classes
    top = cfg.N - 1
    if method == "lora":
        methods = [mp.method_class("lora")(layers=(top,))]
        params = mp.attach(params, methods, cfg)
        pred = mp.trainable(methods)
    else:  # control: with every leaf trainable, every block's linears have VJPs that run
        methods, pred = [], (lambda path, leaf: True)
    theta, phi = tree.split(params, pred)
    runs = _measure().vjp_runs(lambda: value_and_grad(lambda th: mp.loss(th, phi, x, y, cfg, methods), theta),
                               (P.linear, FF.linear_gelu, FF.frozen_mlp))
    per_block = [sum(runs.get(id(W), 0) for W in (bp["attn"]["W_q"], bp["attn"]["W_k"], bp["attn"]["W_v"],
                                                  bp["attn"]["W_o"], bp["mlp"]["W_1"], bp["mlp"]["W_2"]))
                 for bp in params["blocks"]]
    if method == "lora":
        assert per_block[:top] == [0] * top  # nothing below block ℓ = top
        # block ℓ: dX through the frozen MLP (W₂'s linear and W₁'s linear_gelu; under "mlp" one
        # ``frozen_mlp`` node, counted on its W₁) and o to reach A, B of q, v; q, k, v themselves
        # read the untraced X_{ℓ-1} with a frozen W, so they have no node at all
        assert per_block[top] == (2 if recompute == "mlp" else 3)
    else:
        assert all(n == 6 for n in per_block)


def test_fit_validates_once_and_its_steps_skip_the_per_call_checks(monkeypatch, tiny_cfg):
    """fit checks the params, methods and data before its first step; the steps then run the
    forward with ``checked=True``: the model checks run once, not once per step."""
    import importlib
    fwd = importlib.import_module("minipeft.transformer.forward")
    calls = {"params": 0, "methods": 0}
    for name, key in (("_check_params", "params"), ("_check_methods", "methods")):
        real = getattr(fwd, name)

        def counted(*a, _real=real, _key=key):
            calls[_key] += 1
            return _real(*a)

        monkeypatch.setattr(fwd, name, counted)
    params = randomize(mp.init_params(tiny_cfg, 0, "float64"))
    methods = [mp.method_class("lora")()]
    params = mp.attach(params, methods, tiny_cfg)
    X, y = images(tiny_cfg, 8), onp.arange(8) % tiny_cfg.n_classes
    mp.fit(params, (X, y), tiny_cfg, methods, steps=3, batch_size=4, progress=False)
    assert calls == {"params": 1, "methods": 1}
    mp.forward(params, X, tiny_cfg, methods)  # a forward on its own still checks, every call
    assert calls == {"params": 2, "methods": 2}
    with pytest.raises(ValueError, match="x: expected images"):
        mp.forward(params, X[:, :, :4], tiny_cfg, methods)


def test_checked_forward_gives_the_same_bits(tiny_cfg):
    params = randomize(mp.init_params(tiny_cfg, 0, "float32"))
    X = images(tiny_cfg, 4, dtype="float32")
    a = mp.forward(params, X, tiny_cfg)
    b = mp.forward(params, X, tiny_cfg, checked=True)
    assert a.dtype == b.dtype and (a == b).all()


def _headline():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import headline
    finally:
        sys.path.pop(0)
    return headline


def test_the_headline_marks_the_gemm_targets_pass_or_fail():
    h = _headline()
    row = lambda d, share, lf: {"d": d, "T": 17, "batch": 64, "pairs": 2, "steps": 3, "full_ms": 10.0,  # noqa: E731
                                "lora_ms": 10.0 * lf, "share": share, "lora_full": lf, "floor": 0.68}
    res = {"headline": {"gemm": [row(64, 0.56, 0.72), row(128, 0.6, 0.70), row(256, 0.74, 0.80)],
                        "lowest": {"d": 64, "T": 17, "N": 4, "layer": 3, "vjps_per_block": [0, 0, 0, 3]}},
           "peaks": {}}
    text = h.render(res)
    assert "full step ≥ 55 % of the NumPy float32 GEMM peak at d = 64, T = 17: 56 % — pass" in text
    assert "full step ≥ 75 % of the NumPy float32 GEMM peak at d = 256, T = 17: 74 % — **FAIL**" in text
    assert "d = 128, T = 17: 60 %" not in text  # no share target at d = 128
    assert "at d = 64, T = 17: 0.72 vs 0.68 (+0.04) — pass" in text
    assert "at d = 256, T = 17: 0.80 vs 0.68 (+0.12) — **FAIL**" in text
    assert "0 linear VJPs below it — pass" in text
    res["headline"]["lowest"]["vjps_per_block"] = [3, 0, 0, 3]
    assert "3 linear VJPs below it — **FAIL**" in h.render(res)
    assert "GEMM share" not in h.render({"headline": {}, "peaks": {}})  # an older results file: nothing added


def test_the_reachable_figures_sit_under_the_gemm_targets_without_changing_them():
    """Rows with the products-alone and PyTorch figures: the same target lines and marks, each
    followed by one information line (no pass/FAIL), and the "What is reachable" table."""
    h = _headline()
    row = lambda d, share, lf: {"d": d, "T": 17, "batch": 64, "pairs": 2, "steps": 3, "full_ms": 10.0,  # noqa: E731
                                "lora_ms": 10.0 * lf, "share": share, "lora_full": lf, "floor": 0.68}
    rows = [row(64, 0.56, 0.72), row(256, 0.74, 0.80)]
    plain = h.gemm_targets([dict(r) for r in rows], None)
    for r, alone, torch in zip(rows, (0.81, 0.9), (0.47, 0.6)):
        r["alone"] = {"full_ms": 4.0, "lora_ms": 2.9, "share": alone, "time_floor": 0.73}
        r["torch"] = {"full_ms": 12.0, "lora_ms": 8.0, "share": torch, "lora_full": 0.66}
    lines = h.gemm_targets(rows, None)
    assert [x for x in lines if x.startswith("- ")] == plain  # the targets, unchanged
    info = [x for x in lines if not x.startswith("- ")]
    assert len(info) == len(plain) and all(x.startswith("  - reachable (information, not a target): ") for x in info)
    assert not any("pass" in x or "FAIL" in x for x in info)
    assert lines[lines.index(plain[0]) + 1] == ("  - reachable (information, not a target): the products alone reach 81 % "
                                                "of the NumPy peak (the most this step could reach if everything else "
                                                "cost nothing); PyTorch's full step reaches 47 % of its own peak")
    assert "time floor of 0.73 vs the FLOP floor's 0.68 (+0.05); PyTorch's LoRA / full is 0.66 vs the same FLOP " \
           "floor (-0.02)" in lines[lines.index(plain[2]) + 1]
    table = "\n".join(h.gemm_table(rows, None))
    assert "What is reachable" in table
    assert "| 64 | 17 | 56 % | 4.0, 81 % | 2.9 | 0.73 | 0.68 | 0.72 | 12.0, 47 % | 0.66 (-0.02) |" in table
    assert "What is reachable" not in "\n".join(h.gemm_table([row(64, 0.56, 0.72)], None))  # an older results file

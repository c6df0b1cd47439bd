"""A LayerNorm's output rebuilt in the backward pass, not kept (primitives.LNOutput).

In a frozen-backbone step LN₁'s output h₁ is read again only by LoRA's ∂L/∂A = ∂uᵀ h₁, and
LN₂'s h₂ only by ``frozen_mlp``'s recomputed h₂ W₁ᵀ, while each LayerNorm keeps x̂ of the same
size for its own gradient. Those nodes hold ``LNOutput`` (x̂, γ, β) instead and rebuild
h = γ ⊙ x̂ + β with the forward's own operations: the same bits, one (B, T, d) array less
per LayerNorm. These tests check the bits, the identity rule (only that very array is
rebuilt) and, at model level, that no LayerNorm output outlives the forward pass.
"""
import gc
import importlib
import weakref

import numpy as onp
import pytest

import minipeft as mp
from minipeft import tree
from minipeft.autodiff import value_and_grad

from conftest import alive_after_forward, assert_bit_identical, images, randomize

P = importlib.import_module("minipeft.nn.primitives")
FF = importlib.import_module("minipeft.nn.ff")
LR = importlib.import_module("minipeft.nn.lowrank")
FWD = importlib.import_module("minipeft.transformer.forward")


def _ln_case(dtype, rows=600, d=32, seed=0):
    r = onp.random.default_rng(seed)
    x = r.standard_normal((4, rows // 4, d)).astype(dtype)
    return x, (1 + 0.3 * r.standard_normal(d)).astype(dtype), (0.3 * r.standard_normal(d)).astype(dtype)


@pytest.mark.parametrize("block", [None, 64])  # the default row blocks (one), and many small ones
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rebuild_is_the_layer_norms_output_bit_for_bit(monkeypatch, block, dtype):
    """Traced LN: ``ln_output_of(y)`` exists while the graph lives and rebuilds y to the bit."""
    if block is not None:
        monkeypatch.setattr(P, "_BLOCK", block)  # 600 rows × 32 > 16 blocks: LN walks row blocks
    x, gamma, beta = _ln_case(dtype)
    seen = {}

    def f(t):
        y = P.layer_norm(t["x"], gamma, beta)
        rec = P.ln_output_of(y._value)
        seen["n_blocks"] = len(rec.stats)
        seen["same"] = rec.rebuild().tobytes() == y._value.tobytes()
        seen["dtype"] = rec.rebuild().dtype
        return (y * y).sum()

    value_and_grad(f, {"x": x})
    assert seen["same"] and seen["dtype"] == onp.dtype(dtype)
    assert (seen["n_blocks"] > 1) == (block is not None)


def test_only_that_very_array_is_rebuilt_and_nothing_is_kept_alive():
    """A copy, a reshaped view, an untraced LN's output and an array of another LN get None;
    the registry holds y and its recipe weakly: both die with the graph."""
    x, gamma, beta = _ln_case("float64")
    refs = {}

    def f(t):
        y = P.layer_norm(t["x"], gamma, beta)
        v = y._value
        assert P.ln_output_of(v) is not None
        assert P.ln_output_of(v.copy()) is None
        assert P.ln_output_of(v.reshape(-1, v.shape[-1])) is None
        assert P.ln_output_of(P.layer_norm(x, gamma, beta)) is None  # untraced: nothing kept, nothing registered
        refs["y"], refs["rec"] = weakref.ref(v), weakref.ref(P.ln_output_of(v))
        z = P.layer_norm(y * 2.0, gamma, beta)  # a later traced LN: the slot is its output's now
        assert P.ln_output_of(v) is None and P.ln_output_of(z._value) is not None
        return (z * z).sum()

    value_and_grad(f, {"x": x})
    gc.collect()
    assert refs["y"]() is None and refs["rec"]() is None


@pytest.mark.parametrize("s", [1.0, 0.75])  # a power of two (s on the rank-r side) and not
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lora_and_the_frozen_mlp_on_a_layer_norms_output_are_their_twins_bit_for_bit(s, dtype, monkeypatch):
    """low_rank_add(y, LN(x), A, B) (∂A from the rebuilt LN output) against its composed twin,
    whose linear(LN(x), A) holds LN(x) for ∂A; frozen_mlp(LN(x)) against linear(gelu(linear(·)));
    value and every gradient identical to the bit."""
    x, gamma, beta = _ln_case(dtype)
    r = onp.random.default_rng(3)
    A, B = (0.3 * r.standard_normal((4, 32))).astype(dtype), (0.3 * r.standard_normal((24, 4))).astype(dtype)
    y0, G = r.standard_normal((4, 150, 24)).astype(dtype), r.standard_normal((4, 150, 24)).astype(dtype)
    W1, b1 = (0.2 * r.standard_normal((64, 32))).astype(dtype), (0.1 * r.standard_normal(64)).astype(dtype)
    W2, b2 = (0.2 * r.standard_normal((24, 64))).astype(dtype), (0.1 * r.standard_normal(24)).astype(dtype)
    th = {"x": x, "A": A, "B": B}

    def loss(add, mlp):
        def f(t):
            h = P.layer_norm(t["x"], gamma, beta)
            return (add(y0, h, t["A"], t["B"], s) * G).sum() + (mlp(P.layer_norm(h, gamma, beta)) * G).sum()
        return f

    real, calls = P.LNOutput.rebuild, []
    monkeypatch.setattr(P.LNOutput, "rebuild", lambda self: calls.append(1) or real(self))
    fused = value_and_grad(loss(LR.low_rank_add, lambda h: FF.frozen_mlp(h, W1, b1, W2, b2)), th)
    assert len(calls) == 2  # ∂A's input and the frozen MLP's input were rebuilt, not held
    twin = value_and_grad(loss(LR.low_rank_add_composed, lambda h: P.linear(P.gelu(P.linear(h, W1, b1)), W2, b2)), th)
    assert onp.asarray(fused[0]).tobytes() == onp.asarray(twin[0]).tobytes()
    for k in th:
        assert fused[1][k].dtype == onp.dtype(dtype) and fused[1][k].tobytes() == twin[1][k].tobytes(), k


@pytest.mark.parametrize("s", [1.0, 0.75])
def test_two_branches_reading_one_layer_norms_output_rebuild_it_once(s, monkeypatch):
    """LoRA's q and v branches on the same LN output (as on LN₁'s h₁): one rebuild serves both
    ∂A, handed to the second reader read-only and let go after it; value and every gradient
    those of the composed twins to the bit."""
    x, gamma, beta = _ln_case("float64")
    r = onp.random.default_rng(5)
    th = {"x": x, **{k: (0.3 * r.standard_normal(shape)) for k, shape in
                     (("A_q", (4, 32)), ("B_q", (24, 4)), ("A_v", (4, 32)), ("B_v", (16, 4)))}}
    y_q, y_v = r.standard_normal((4, 150, 24)), r.standard_normal((4, 150, 16))
    recs = []

    def loss(add):
        def f(t):
            h = P.layer_norm(t["x"], gamma, beta)
            recs.append(P.ln_output_of(getattr(h, "_value", h)))
            q = add(y_q, h, t["A_q"], t["B_q"], s)
            v = add(y_v, h, t["A_v"], t["B_v"], s)
            return (q * q).sum() + (v * v).sum()
        return f

    real, calls = P.LNOutput.rebuild, []
    monkeypatch.setattr(P.LNOutput, "rebuild", lambda self: calls.append(1) or real(self))
    fused = value_and_grad(loss(LR.low_rank_add), th)
    assert len(calls) == 1 and recs[0].readers == 0 and recs[0].shared is None
    twin = value_and_grad(loss(LR.low_rank_add_composed), th)
    assert onp.asarray(fused[0]).tobytes() == onp.asarray(twin[0]).tobytes()
    assert_bit_identical(fused[1], twin[1])


@pytest.mark.parametrize("recompute", ["none", "mlp"])
@pytest.mark.parametrize("name", ["lora", "prompt"])
def test_in_a_frozen_backbone_step_no_layer_norm_output_outlives_the_forward(tiny_cfg, name, recompute,
                                                                              monkeypatch):
    """LoRA on q, v and prompt tuning, 2 blocks: no traced LayerNorm output — LN₁'s (read by
    LoRA's ∂A), LN₂'s (read by the frozen MLP's backward under MINIPEFT_RECOMPUTE=mlp), the
    final LN's — is alive after the forward; with the rebuild turned off (the nodes hold their
    input, as they once did) LoRA's LN₁ outputs and, under "mlp", the LN₂ outputs stay alive
    (the detector works; by default the MLP keeps GELU'(U), not its input). With LoRA, block
    1's LN₁ is not traced (its input is the frozen embedding): traced are LN₂ of block 1, LN₁
    and LN₂ of block 2, the final LN; with prompt tuning all five."""
    assert tiny_cfg.N == 2
    monkeypatch.setenv("MINIPEFT_RECOMPUTE", recompute)
    method = mp.method_class(name)()
    ln2 = recompute == "mlp"
    held_by_nodes = [ln2, True, ln2, False] if name == "lora" else [False, ln2, False, ln2, False]
    assert alive_after_forward(monkeypatch, FWD, "layer_norm", tiny_cfg, method) == [False] * len(held_by_nodes)
    monkeypatch.setattr(P, "ln_output_of", lambda x: None)  # input_again then holds x
    assert alive_after_forward(monkeypatch, FWD, "layer_norm", tiny_cfg, method) == held_by_nodes


@pytest.mark.parametrize("name", ["lora", "prompt"])
def test_recomputing_the_mlp_changes_no_bit_of_a_step(tiny_cfg, name, monkeypatch):
    """MINIPEFT_RECOMPUTE=mlp against the default: the same loss and gradients, to the bit."""
    method = mp.method_class(name)()
    params = mp.attach(randomize(mp.init_params(tiny_cfg, 0), seed=2), [method], tiny_cfg, 0)
    theta, phi = tree.split(params, mp.trainable([method]))
    x, y = images(tiny_cfg, 5), onp.arange(5) % tiny_cfg.n_classes
    got = {}
    for mode in ("none", "mlp"):
        monkeypatch.setenv("MINIPEFT_RECOMPUTE", mode)
        got[mode] = value_and_grad(lambda th: mp.loss(th, phi, x, y, tiny_cfg, [method]), theta)
    assert onp.asarray(got["none"][0]).tobytes() == onp.asarray(got["mlp"][0]).tobytes()
    assert_bit_identical(got["none"][1], got["mlp"][1])


def test_a_bad_recompute_policy_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MINIPEFT_RECOMPUTE", "all")
    with pytest.raises(ValueError, match=r"MINIPEFT_RECOMPUTE must be one of \('none', 'mlp'\), got 'all'"):
        mp.runtime.apply()


def test_a_lora_step_rebuilds_each_traced_ln1_output_once(tiny_cfg, monkeypatch):
    """LoRA on q, v, 2 blocks: block 2's LN₁ output (traced; block 1's input is the frozen
    embedding, so its LN₁ is not) is rebuilt once for both branches' ∂A, and the step's loss
    and gradients are those with the rebuild off (each node holding h₁), to the bit."""
    method = mp.method_class("lora")()
    params = mp.attach(randomize(mp.init_params(tiny_cfg, 0), seed=2), [method], tiny_cfg, 0)
    theta, phi = tree.split(params, mp.trainable([method]))
    x, y = images(tiny_cfg, 5), onp.arange(5) % tiny_cfg.n_classes
    real, calls = P.LNOutput.rebuild, []
    monkeypatch.setattr(P.LNOutput, "rebuild", lambda self: calls.append(1) or real(self))
    step = lambda: value_and_grad(lambda th: mp.loss(th, phi, x, y, tiny_cfg, [method]), theta)  # noqa: E731
    got = step()
    assert len(calls) == 1
    monkeypatch.setattr(P, "ln_output_of", lambda x: None)  # every node holds its input
    held = step()
    assert len(calls) == 1
    assert onp.asarray(got[0]).tobytes() == onp.asarray(held[0]).tobytes()
    assert_bit_identical(got[1], held[1])

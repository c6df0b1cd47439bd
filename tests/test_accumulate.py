"""The backward pass's sums of cotangents (minipeft/autodiff.py, ``_accumulate``): a node read by
several others gets ∂L/∂x = Σ of their contributions; the second one is added into the buffer of
the first (or of the new one) when nothing else holds that buffer. These tests check that the
gradients are autograd's own, bit for bit, on graphs built to alias cotangents (one array handed
to two parents, a view of a cotangent, the same input twice), and on whole training steps; and
that the in-place sums do happen where they should."""
from __future__ import annotations

import importlib

import autograd
import autograd.numpy as anp
import numpy as onp
import pytest

import minipeft as mp
from minipeft import tree
from conftest import images, randomize

AD = importlib.import_module("minipeft.autodiff")


def _stock(monkeypatch):
    """value_and_grad with autograd's own sums (``add_outgrads``) in place of ``_accumulate``."""
    monkeypatch.setattr(AD, "_accumulate", lambda prev, g: AD.add_outgrads(prev, g))


def _same(a, b):
    assert tree.leaves_with_paths(a[1]).__len__() == tree.leaves_with_paths(b[1]).__len__()
    assert onp.asarray(a[0]).tobytes() == onp.asarray(b[0]).tobytes()
    for path, g in tree.leaves_with_paths(a[1]):
        h = tree.get(b[1], path)
        assert g.dtype == h.dtype and g.tobytes() == h.tobytes(), path


_C = onp.linspace(-1.0, 1.0, 24)  # a constant weight


def _held_base(u, w):
    """w + reshape(u): the add hands one array to w and to the reshape, whose VJP gives u a whole
    view of it; u then gets a second contribution while w's still holds that array."""
    return anp.sum(w * 5.0) + anp.sum(u * 3.0) + anp.sum((w + anp.reshape(u, (24,))) * _C)


GRAPHS = {
    # the add VJP hands one array to both of its parents; a is also read again
    "shared": lambda t: anp.sum(((t["a"] + t["b"]) * 2.0 + t["a"]) ** 2),
    # a + b hands one array to a and to b, and a is read once more, before or after the sum
    "shared_left": lambda t: anp.sum(anp.sin(t["a"]) * (t["a"] + t["b"])),
    "shared_right": lambda t: anp.sum((t["a"] + t["b"]) * anp.sin(t["a"])),
    "shared_chain": lambda t: anp.sum(anp.exp(t["a"] + t["b"]) + anp.tanh(t["b"]) * t["a"]),
    # the same input twice: two contributions that are one array
    "twice": lambda t: anp.sum((t["a"] + t["a"]) * t["b"]),
    # reshaped views of cotangents meeting at one node, and a fan-out of four
    "views": lambda t: anp.sum(anp.reshape(t["a"], (-1,)) ** 2) + anp.sum(t["a"] * t["b"]) + anp.sum(anp.tanh(t["a"]))
    + anp.sum(anp.reshape(t["a"] * 3.0, (2, -1))),
    # a whole reshaped view of a cotangent that another node still holds (its base is shared)
    "held_base": lambda t: _held_base(t["a"] * 2.0, anp.sin(anp.reshape(t["b"], (24,)))),
    # a sum over the batch broadcast back (a cotangent of another shape meets a full one)
    "broadcast": lambda t: anp.sum((t["a"] + anp.sum(t["a"], axis=0)) * t["b"]) + anp.sum(t["a"] ** 3),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_the_sums_are_autograds_bit_for_bit(name, dtype, monkeypatch):
    rng = onp.random.default_rng(3)
    theta = {"a": rng.standard_normal((4, 6)).astype(dtype), "b": rng.standard_normal((4, 6)).astype(dtype)}
    before = {k: v.copy() for k, v in theta.items()}
    ours = mp.value_and_grad(GRAPHS[name], theta)
    ref = autograd.grad(GRAPHS[name])(theta)  # (autograd's own add VJPs sum a broadcast otherwise: close)
    tol = 1e-12 if dtype == "float64" else 1e-5
    for k in theta:
        onp.testing.assert_allclose(ours[1][k], ref[k], rtol=tol, atol=tol * float(onp.abs(ref[k]).max()))
        assert theta[k].tobytes() == before[k].tobytes()  # the inputs were not written
    _stock(monkeypatch)
    _same(ours, mp.value_and_grad(GRAPHS[name], theta))


@pytest.mark.parametrize("kind", ["full", "lora", "prompt", "ia3"])
def test_a_training_step_has_the_bits_of_autograds_sums_and_sums_in_place(tiny_cfg, kind, monkeypatch):
    """Every second contribution of a real step (the residual stream; LN₁'s output, read by q, k
    and v; …) is added in place — none takes autograd's new array, where the interpreter's counts
    pass the probe — and the loss and every gradient are the bits of the step with autograd's sums."""
    m = {"full": None, "lora": mp.method_class("lora")(), "prompt": mp.method_class("prompt")(),
         "ia3": mp.method_class("ia3")()}[kind]
    methods = [] if m is None else [m]
    params = randomize(mp.init_params(tiny_cfg, 0), seed=4)
    params = mp.attach(params, methods, tiny_cfg, 0) if methods else params
    pred = (lambda path, leaf: True) if m is None else mp.trainable(methods)
    theta, phi = mp.split(params, pred)
    x, y = images(tiny_cfg, 3), onp.arange(3) % tiny_cfg.n_classes
    f = lambda th: mp.loss(th, phi, x, y, tiny_cfg, methods)  # noqa: E731
    seconds, fallback, real_add = [0], [0], AD.add_outgrads

    def counting(prev, g):
        if prev is not None and not prev[1]:
            fallback[0] += 1
        return real_add(prev, g)

    real_acc = AD._accumulate

    def seen(prev, g):
        if prev is not None and not prev[1]:
            seconds[0] += 1
        return real_acc(prev, g)

    monkeypatch.setattr(AD, "add_outgrads", counting)
    ours = mp.value_and_grad(f, theta)
    assert onp.isfinite(ours[0]) and (fallback[0] == 0 or not AD._IN_PLACE)
    monkeypatch.setattr(AD, "_accumulate", seen)  # (seen's own frame holds g: it counts, nothing more)
    mp.value_and_grad(f, theta)
    assert seconds[0] >= 2 * tiny_cfg.N  # fan-outs met: at least the residual stream's, twice per block
    monkeypatch.setattr(AD, "add_outgrads", real_add)
    _stock(monkeypatch)
    _same(ours, mp.value_and_grad(f, theta))


def test_a_cotangent_held_elsewhere_is_not_written():
    """The rule itself: an array some other name holds, a view of a held array, a read-only or
    a narrower-dtype array is never added into; an array held by the table alone is."""
    g = onp.ones(3)
    held = onp.arange(3.0)
    keep = held  # noqa: F841  (a second reference)
    out, mutable = AD._accumulate((held, False), g)
    assert out is not held and mutable and held.tolist() == [0.0, 1.0, 2.0]
    base = onp.arange(6.0)
    view = base[:3]
    out, _ = AD._accumulate((view, False), onp.ones(3))
    assert out is not view and base.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    pair = (base.reshape(2, 3), False)  # a whole view, held by the table alone, of a base another name holds
    out, _ = AD._accumulate(pair, onp.ones((2, 3)))
    assert out is not pair[0] and base.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    pair = (onp.arange(6.0).reshape(2, 3), False)  # a whole view of a base nothing else holds: into it
    out, _ = AD._accumulate(pair, onp.ones((2, 3)))
    assert (out is pair[0] or not AD._IN_PLACE) and out.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    ro = onp.arange(3.0)
    ro.flags.writeable = False
    out, _ = AD._accumulate((ro, False), onp.ones(3))
    assert out is not ro
    narrow = onp.arange(3, dtype="float32")
    out, _ = AD._accumulate((narrow, False), onp.ones(3))
    assert out.dtype == onp.float64 and narrow.tolist() == [0.0, 1.0, 2.0]
    out, mutable = AD._accumulate((onp.arange(3.0), False), onp.ones(3))
    assert out.tolist() == [1.0, 2.0, 3.0] and mutable


def test_the_interpreter_probe_enables_the_in_place_sums_only_where_counts_hold(monkeypatch):
    """On this CPython the probe passes and the sums run in place; were the counts one higher
    than an array's real references (a held array taken for a lone one), the probe fails, and
    with it switched off ``_accumulate`` is autograd's sum."""
    import platform
    import sys

    assert AD._IN_PLACE == AD._counts_hold()
    if platform.python_implementation() == "CPython" and (3, 11) <= sys.version_info[:2] <= (3, 13):
        assert AD._IN_PLACE  # (3.10 keeps one more reference per call, so the probe turns it off there)
    monkeypatch.setattr(AD, "_OWNED_REFS", AD._OWNED_REFS + 1)
    assert not AD._counts_hold()
    monkeypatch.setattr(AD, "_IN_PLACE", False)
    first = onp.arange(3.0)
    out, mutable = AD._accumulate((first, False), onp.ones(3))
    assert out is not first and mutable and first.tolist() == [0.0, 1.0, 2.0]

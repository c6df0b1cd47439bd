"""Training: φ untouched, determinism, Adam against its equations, the loss drops, bad input."""
import numpy as onp
import pytest

import minipeft as mp
from conftest import images, toy_data
from minipeft import tree


@pytest.mark.parametrize("methods,lr", [([mp.LinearProbe()], 0.05), ([mp.FullFineTune()], 0.01)])
def test_fit_lowers_the_loss(tiny_cfg, methods, lr):
    p = mp.init_params(tiny_cfg, 0, "float64")
    data = toy_data(tiny_cfg)
    before = mp.evaluate(p, data, tiny_cfg)["loss"]
    p2, hist = mp.fit(p, data, tiny_cfg, methods, steps=40, batch_size=16, lr=lr, progress=False)
    assert len(hist["loss"]) == 40
    assert mp.evaluate(p2, data, tiny_cfg)["loss"] < 0.7 * before


def test_frozen_leaves_are_bit_identical_and_the_same_objects(tiny_cfg):
    p = mp.init_params(tiny_cfg, 0, "float32")
    copies = {q: a.copy() for q, a in tree.leaves_with_paths(p)}
    p2, _ = mp.fit(p, toy_data(tiny_cfg), tiny_cfg, [mp.LinearProbe()], steps=5, batch_size=8, progress=False)
    for q, a in tree.leaves_with_paths(p2):
        if q[0] == "head":
            assert not onp.array_equal(a, copies[q])
        else:
            assert a.tobytes() == copies[q].tobytes()
            assert a is tree.get(p, q)
    for q, a in tree.leaves_with_paths(p):  # the input tree is not modified either
        assert a.tobytes() == copies[q].tobytes()


def test_same_seed_same_bits(tiny_cfg):
    runs = []
    for _ in range(2):
        p = mp.init_params(tiny_cfg, 7, "float32")
        p2, h = mp.fit(p, toy_data(tiny_cfg, seed=1), tiny_cfg, [mp.FullFineTune()], steps=6, batch_size=8, seed=3, progress=False)
        runs.append((p2, h))
    assert runs[0][1]["loss"] == runs[1][1]["loss"]
    for (_, a), (_, b) in zip(tree.leaves_with_paths(runs[0][0]), tree.leaves_with_paths(runs[1][0])):
        assert a.tobytes() == b.tobytes()
    p3, h3 = mp.fit(mp.init_params(tiny_cfg, 7, "float32"), toy_data(tiny_cfg, seed=1), tiny_cfg, [mp.FullFineTune()],
                    steps=6, batch_size=8, seed=4, progress=False)
    assert h3["loss"] != runs[0][1]["loss"]  # another seed, another batch order


def test_adam_step_matches_its_equations():
    theta = {"w": onp.array([1.0, -2.0])}
    g = {"w": onp.array([0.5, 0.25])}
    state = mp.adam_init(theta)
    t1, s1 = mp.adam_step(theta, g, state, lr=0.1)
    # step 1: m̂ = g, v̂ = g², so the update is lr · g / (|g| + ε)
    onp.testing.assert_allclose(t1["w"], theta["w"] - 0.1 * g["w"] / (onp.abs(g["w"]) + 1e-8))
    t2, s2 = mp.adam_step(t1, g, s1, lr=0.1, weight_decay=0.5)
    m = 0.9 * 0.1 * g["w"] + 0.1 * g["w"]
    v = 0.999 * 0.001 * g["w"] ** 2 + 0.001 * g["w"] ** 2
    step = (m / (1 - 0.9 ** 2)) / (onp.sqrt(v / (1 - 0.999 ** 2)) + 1e-8) + 0.5 * t1["w"]
    onp.testing.assert_allclose(t2["w"], t1["w"] - 0.1 * step)
    assert s2["t"] == 2


def test_evaluate_accuracy_and_loss_against_direct_computation(tiny_cfg):
    p = mp.init_params(tiny_cfg, 0, "float64")
    x, y = toy_data(tiny_cfg, n=10)
    logits = mp.forward(p, x, tiny_cfg)
    r = mp.evaluate(p, (x, y), tiny_cfg, batch_size=3)
    assert r["acc"] == onp.mean(logits.argmax(1) == y)
    assert onp.isclose(r["loss"], mp.nn.cross_entropy(logits, y), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kw,y,err,match", [
    ({}, onp.array([0, 5]), ValueError, "n_classes=3"), ({}, onp.array([0.0, 1.0]), TypeError, "integers"),
    ({}, onp.array([0, 1, 2]), ValueError, "shape"), ({"batch_size": 0}, onp.array([0, 1]), ValueError, "batch_size"),
    ({"lr": -1.0}, onp.array([0, 1]), ValueError, "lr"), ({"lr": float("nan")}, onp.array([0, 1]), ValueError, "lr"),
    ({"trainable": lambda p, a: False}, onp.array([0, 1]), ValueError, "selects no parameter"),
    ({"schedule": "linear"}, onp.array([0, 1]), ValueError, "schedule"),
    ({"steps": -1}, onp.array([0, 1]), ValueError, "steps"), ({"steps": 1.5}, onp.array([0, 1]), ValueError, "steps"),
    ({"weight_decay": -0.1}, onp.array([0, 1]), ValueError, "weight_decay"),
    ({"lr": True}, onp.array([0, 1]), ValueError, "lr"),
])
def test_fit_bad_input(tiny_cfg, kw, y, err, match):
    p = mp.init_params(tiny_cfg, 0)
    with pytest.raises(err, match=match):
        mp.fit(p, (images(tiny_cfg, 2), y), tiny_cfg, [mp.LinearProbe()], progress=False, **kw)


def test_predict_bad_batch_size(tiny_cfg):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        mp.predict(mp.init_params(tiny_cfg, 0), images(tiny_cfg, 2), tiny_cfg, batch_size=0)


def test_trainable_predicate_and_counts(tiny_cfg):
    p = mp.init_params(tiny_cfg, 0)
    assert mp.count_trainable(p, [mp.LinearProbe()]) == mp.LinearProbe().n_params(tiny_cfg) == 3 * 16 + 3
    assert mp.count_trainable(p, [mp.FullFineTune()]) == mp.FullFineTune().n_params(tiny_cfg) == mp.count(p)
    assert mp.count_trainable(p, [], train_head=False) == 0

"""The fused Adam step (train.adam_step) against its composed twin, and its in-place mode."""
from __future__ import annotations

import numpy as onp
import pytest

import minipeft as mp
from minipeft import train, tree

HP = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8)


def _tree(rng, dtype, shapes=((7, 5), (300,), (3, 4, 17), (1,))):
    return {"a": rng.standard_normal(shapes[0]).astype(dtype),
            "blocks": [{"w": rng.standard_normal(s).astype(dtype)} for s in shapes[1:]]}


def _composed_run(theta, grads_seq, weight_decay):
    """Adam from the composed twin alone, leaf by leaf, for len(grads_seq) steps."""
    m = tree.map_leaves(lambda p, a: a * 0, theta)
    v = tree.map_leaves(lambda p, a: a * 0, theta)
    for t, grads in enumerate(grads_seq, start=1):
        hp = (HP["lr"], HP["b1"], HP["b2"], HP["eps"], weight_decay, 1.0 / (1.0 - HP["b1"] ** t),
              1.0 / (1.0 - HP["b2"] ** t))
        out = {p: train.adam_leaf_composed(w, tree.get(grads, p), tree.get(m, p), tree.get(v, p), *hp)
               for p, w in tree.leaves_with_paths(theta)}
        theta, m, v = (tree.map_leaves(lambda p, _: out[p][i], theta) for i in range(3))
    return theta, m, v


def _bits(a):
    return [(p, x.dtype, x.tobytes()) for p, x in tree.leaves_with_paths(a)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("inplace, packed", [(False, False), (True, False), (True, True)])
def test_blocked_adam_is_bit_identical_to_the_composed_twin(dtype, weight_decay, inplace, packed, monkeypatch):
    # tiny blocks: every leaf spans several blocks, most with a ragged last one; packed: the small
    # leaves (under 1024 bytes) updated as one flat pass (adam_init(..., inplace=True))
    monkeypatch.setattr(train, "ADAM_BLOCK_BYTES", 1024 if packed else 64)
    rng = onp.random.default_rng(0)
    theta0 = _tree(rng, dtype)
    grads_seq = [tree.map_leaves(lambda p, a: (rng.standard_normal(a.shape) * 10.0 ** rng.integers(-6, 3)).astype(dtype),
                                 theta0) for _ in range(4)]
    grads_seq[1]["a"][0, :3] = 0.0  # zero gradients (m, v decay only)
    theta, state = theta0, mp.adam_init(theta0, inplace=packed)
    assert ("_pack" in state) == packed
    if packed:
        small = [p for p, a in tree.leaves_with_paths(theta0) if a.nbytes < 1024]
        assert state["_pack"]["paths"] == small and len(small) >= 2
    for g in grads_seq:
        theta, state = mp.adam_step(theta, g, state, weight_decay=weight_decay, inplace=inplace, **HP)
    ref_t, ref_m, ref_v = _composed_run(theta0, grads_seq, weight_decay)
    assert _bits(theta) == _bits(ref_t)
    assert _bits(state["m"]) == _bits(ref_m)
    assert _bits(state["v"]) == _bits(ref_v)
    assert state["t"] == len(grads_seq)
    assert ("_pack" in state) == packed  # kept from step to step


def test_packed_adam_falls_back_when_the_state_is_not_its_own():
    """A state whose m was replaced (not the pack's views) is updated leaf by leaf, the same bits."""
    rng = onp.random.default_rng(4)
    theta0 = _tree(rng, "float32")
    g = tree.map_leaves(lambda p, a: rng.standard_normal(a.shape).astype("float32"), theta0)
    state = mp.adam_init(theta0, inplace=True)
    assert "_pack" in state
    state["m"] = tree.map_leaves(lambda p, a: a.copy(), state["m"])
    t1, s1 = mp.adam_step(theta0, g, state, inplace=True)
    ref_t, ref_m, _ = _composed_run(theta0, [g], 0.0)
    assert "_pack" not in s1 and _bits(t1) == _bits(ref_t) and _bits(s1["m"]) == _bits(ref_m)


def test_fit_with_in_place_adam_gives_the_bits_of_out_of_place_steps(tiny_cfg):
    """fit (which hands its state over: inplace=True) = a loop of default adam_step calls."""
    from conftest import toy_data
    p0 = mp.init_params(tiny_cfg, 0, "float32")
    X, y = toy_data(tiny_cfg, n=16)
    X = X.astype("float32")
    full = mp.FullFineTune()
    fitted, hist = mp.fit(p0, (X, y), tiny_cfg, [full], steps=4, batch_size=16, lr=1e-2, seed=3, progress=False)
    theta, phi = mp.split(p0, mp.trainable([full]))
    state, rng, losses = mp.adam_init(theta), onp.random.default_rng(3), []
    for _ in range(4):  # fit's batch order: one permutation of the 16 rows per step
        idx = rng.permutation(16)
        value, g = mp.value_and_grad(lambda th: mp.loss(th, phi, X[idx], y[idx], tiny_cfg, [full]), theta)
        theta, state = mp.adam_step(theta, g, state, lr=1e-2)
        losses.append(float(value))
    assert hist["loss"] == losses
    assert _bits(fitted) == _bits(mp.combine(theta, phi))


@pytest.mark.parametrize("packed", [False, True])
def test_inplace_adam_never_writes_the_callers_arrays(packed):
    rng = onp.random.default_rng(1)
    theta0 = _tree(rng, "float32")
    keep = {p: a.copy() for p, a in tree.leaves_with_paths(theta0)}
    theta, state = theta0, mp.adam_init(theta0, inplace=packed)
    before = None
    for _ in range(5):
        g = tree.map_leaves(lambda p, a: rng.standard_normal(a.shape).astype("float32"), theta0)
        snapshot = {p: a.copy() for p, a in tree.leaves_with_paths(theta)}
        new_theta, state = mp.adam_step(theta, g, state, inplace=True)
        # the θ handed in is intact after its step (fit hands it back on a non-finite update)
        assert all(onp.array_equal(a, snapshot[p]) for p, a in tree.leaves_with_paths(theta))
        assert all(x is not y for (_, x), (_, y) in zip(tree.leaves_with_paths(new_theta),
                                                        tree.leaves_with_paths(theta)))
        if before is not None:  # from the third step on, θ' reuses the arrays of the θ two steps back
            assert all(x is y for (_, x), (_, y) in zip(tree.leaves_with_paths(new_theta),
                                                        tree.leaves_with_paths(before)))
        before = theta if theta is not theta0 else None
        theta = new_theta
    assert all(onp.array_equal(a, keep[p]) for p, a in tree.leaves_with_paths(theta0))


def test_out_of_place_adam_leaves_its_inputs_alone():
    rng = onp.random.default_rng(2)
    theta = _tree(rng, "float32")
    g = tree.map_leaves(lambda p, a: rng.standard_normal(a.shape).astype("float32"), theta)
    state = mp.adam_init(theta)
    t1, s1 = mp.adam_step(theta, g, state)
    copies = [(p, a.copy()) for p, a in tree.leaves_with_paths((theta, g, s1["m"], s1["v"], t1))]
    t2a, s2a = mp.adam_step(t1, g, s1)
    t2b, s2b = mp.adam_step(t1, g, s1)  # the same old state again: same answer
    assert _bits(t2a) == _bits(t2b) and _bits(s2a["m"]) == _bits(s2b["m"])
    assert all(onp.array_equal(a, tree.get((theta, g, s1["m"], s1["v"], t1), p)) for p, a in copies)


def test_adam_falls_back_to_the_composed_form_for_strided_or_mixed_leaves():
    rng = onp.random.default_rng(3)
    w = rng.standard_normal((6, 4)).astype("float32").T  # not C-contiguous
    g = rng.standard_normal((4, 6)).astype("float32")
    theta, grads = {"w": w}, {"w": g}
    t1, s1 = mp.adam_step(theta, grads, mp.adam_init(theta), inplace=True)
    ref = train.adam_leaf_composed(w, g, w * 0, w * 0, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1 / 0.1, 1 / 0.001)
    assert t1["w"].tobytes() == ref[0].tobytes() and s1["m"]["w"].tobytes() == ref[1].tobytes()

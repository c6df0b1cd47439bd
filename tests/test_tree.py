"""tree: split/combine round trips, also on autograd's boxes; value_and_grad = autograd.grad."""
import autograd.numpy as anp
import numpy as onp
import pytest
from autograd import grad

import minipeft as mp
from minipeft import tree


def sample():
    return {"a": onp.arange(3.0), "blocks": [{"W": onp.ones((2, 2)), "b": onp.zeros(2)}, {"W": 2 * onp.ones((2, 2)), "b": onp.ones(2)}],
            "head": {"W": onp.eye(2)}}


def test_split_combine_round_trip_and_partition():
    p = sample()
    th, ph = mp.split(p, lambda path, leaf: path[-1] == "b")
    assert [tree.path_str(q) for q, _ in tree.leaves_with_paths(th)] == ["blocks.0.b", "blocks.1.b"]
    assert mp.count(th) + mp.count(ph) == mp.count(p) == 3 + 12 + 4
    back = mp.combine(th, ph)
    assert [q for q, _ in tree.leaves_with_paths(back)] == [q for q, _ in tree.leaves_with_paths(p)]
    for (_, x), (_, y) in zip(tree.leaves_with_paths(back), tree.leaves_with_paths(p)):
        assert x is y


def test_split_combine_inside_autograd_grad_on_dict_boxes():
    p = sample()
    th, ph = mp.split(p, lambda path, leaf: path[0] == "blocks")

    def f(theta):  # theta arrives as a DictBox: isinstance(theta, dict) is False here
        full = mp.combine(theta, ph)
        return anp.sum(full["blocks"][0]["W"] * full["a"][0]) + anp.sum(full["blocks"][1]["b"] ** 2)

    g = grad(f)(th)
    onp.testing.assert_allclose(g["blocks"][0]["W"], onp.zeros((2, 2)))  # a[0] = 0
    onp.testing.assert_allclose(g["blocks"][1]["b"], 2 * onp.ones(2))
    v, g2 = mp.value_and_grad(f, th)
    assert v == f(th)
    for (_, x), (_, y) in zip(tree.leaves_with_paths(g), tree.leaves_with_paths(g2)):
        onp.testing.assert_array_equal(x, y)


def test_value_and_grad_unused_leaf_gets_zeros_and_constant_function():
    th = {"x": onp.ones(3), "unused": onp.ones(2)}
    v, g = mp.value_and_grad(lambda t: anp.sum(t["x"] ** 2), th)
    assert v == 3.0
    onp.testing.assert_array_equal(g["unused"], onp.zeros(2))
    with pytest.warns(UserWarning, match="independent"):
        grad(lambda t: 1.0)(onp.ones(1))  # autograd's own behaviour, for contrast
    v, g = mp.value_and_grad(lambda t: 1.0, th)
    assert v == 1.0 and not g["x"].any()


def test_combine_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="lengths"):
        mp.combine([{}, {}], [{}])


def test_replace_and_get():
    p = sample()
    q = tree.replace(p, ("blocks", 1, "b"), onp.full(2, 7.0))
    assert tree.get(q, ("blocks", 1, "b"))[0] == 7.0 and tree.get(p, ("blocks", 1, "b"))[0] == 1.0


def test_leaves_and_rebuild_follow_leaves_with_paths_order():
    p = sample()
    p["empty"], p["tup"] = {}, (onp.ones(1), [onp.zeros(1)])
    flat = tree.leaves(p)
    assert len(flat) == len(tree.leaves_with_paths(p))
    assert all(a is b for a, (_, b) in zip(flat, tree.leaves_with_paths(p)))
    new = [a + 1 for a in flat]
    back = tree.rebuild(p, new)
    ref = tree.map_leaves(lambda path, a: a + 1, p)
    assert [q for q, _ in tree.leaves_with_paths(back)] == [q for q, _ in tree.leaves_with_paths(ref)]
    assert all(a is b for a, b in zip(tree.leaves(back), new))
    assert back["empty"] == {} and back is not p
    with pytest.raises(ValueError, match="fewer"):
        tree.rebuild(p, flat[:-1])
    with pytest.raises(ValueError, match="more"):
        tree.rebuild(p, flat + [flat[0]])


def test_adam_step_rejects_a_state_made_for_another_theta():
    th = {"a": onp.ones(3), "b": onp.ones(2)}
    state = mp.adam_init({"a": onp.ones(3)}, inplace=True)
    with pytest.raises(ValueError, match="another θ"):
        mp.adam_step(th, {"a": onp.ones(3), "b": onp.ones(2)}, state, inplace=True)

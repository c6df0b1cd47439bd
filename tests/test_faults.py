"""Fault tests: training stops at the first non-finite value and gives back the last finite θ;
non-finite data is refused at the boundary; a finite divergence is warned about."""
import warnings

import numpy as onp
import pytest

import minipeft as mp
from minipeft.methods import method_class

from conftest import images


def _data(cfg, n=48, seed=0, dtype="float32"):
    rng = onp.random.default_rng(seed)
    return images(cfg, n, seed, dtype), rng.integers(0, cfg.n_classes, n)


@pytest.mark.parametrize("method", ["lora", "adaptformer", "full"])
def test_huge_lr_stops_with_the_error_and_the_last_finite_theta(tiny_cfg, method):
    m = method_class(method)()
    params = mp.attach(mp.init_params(tiny_cfg, 0, "float32"), [m], tiny_cfg)
    data = _data(tiny_cfg)
    with pytest.raises(mp.NonFiniteError) as info:
        mp.fit(params, data, tiny_cfg, [m], lr=1e300, steps=30, batch_size=16)
    e = info.value
    assert e.step < 30 and e.where in ("loss", "gradient", "update")
    assert f"step {e.step}" in str(e) and (e.leaf == "" or e.leaf in str(e))
    assert len(e.history["loss"]) == e.step
    # the returned θ is finite and is exactly what `step` good steps give (an independent run)
    assert mp.train.first_nonfinite(e.params) is None
    if e.step:
        ref, hist = mp.fit(params, data, tiny_cfg, [m], lr=1e300, steps=e.step, batch_size=16)
        assert hist["loss"] == e.history["loss"]
    else:
        ref = params
    for (p, a), (q, b) in zip(mp.tree.leaves_with_paths(e.params), mp.tree.leaves_with_paths(ref)):
        assert p == q and onp.array_equal(a, b), p


def test_nan_in_params_is_refused_before_training_naming_the_leaf(tiny_cfg):
    lora = method_class("lora")()
    params = mp.attach(mp.init_params(tiny_cfg, 0, "float64"), [lora], tiny_cfg)
    params["lora"]["blocks"][1]["v"]["A"][0, 0] = onp.nan
    with pytest.raises(ValueError, match=r"^params: leaf lora\.blocks\.1\.v\.A holds NaN/Inf"):
        mp.fit(params, _data(tiny_cfg, dtype="float64"), tiny_cfg, [lora], steps=5, batch_size=16)


def test_first_nonfinite_names_the_first_bad_leaf_in_order():
    t = {"a": onp.ones(3), "b": [onp.ones(2), onp.array([1.0, onp.inf])], "c": onp.array([onp.nan])}
    assert mp.train.first_nonfinite(t) == "b.1"
    assert mp.train.first_nonfinite({"a": onp.full(3, 1e308), "b": [onp.ones(2)]}) is None  # sums overflow, leaves finite


def test_huge_weight_decay_stops_at_the_update(tiny_cfg):
    params = mp.init_params(tiny_cfg, 0, "float64")
    with pytest.raises(mp.NonFiniteError, match="non-finite update at step 0") as info:
        mp.fit(params, _data(tiny_cfg, dtype="float64"), tiny_cfg, [mp.LinearProbe()], weight_decay=1e308,
               lr=10.0, steps=3)
    assert info.value.leaf.startswith("head.")


@pytest.mark.parametrize("bad", [onp.nan, onp.inf, -onp.inf, 1e300])
def test_non_finite_images_are_refused_at_fit_predict_evaluate(tiny_cfg, bad):
    params = mp.init_params(tiny_cfg, 0, "float32")
    X, y = _data(tiny_cfg, dtype="float64")
    X[3, 0, 2, 5] = bad  # 1e300 is finite in float64 but inf once cast to the model's float32
    for call in (lambda: mp.fit(params, (X, y), tiny_cfg, steps=1),
                 lambda: mp.predict(params, X, tiny_cfg),
                 lambda: mp.evaluate(params, (X, y), tiny_cfg)):
        with pytest.raises(ValueError, match=r"^x: must hold finite numbers, got 1 NaN/Inf"):
            call()


def test_divergence_is_warned_and_a_normal_run_is_not(tiny_cfg):
    params = mp.init_params(tiny_cfg, 0, "float64")
    data = _data(tiny_cfg, n=64, dtype="float64")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        mp.fit(params, data, tiny_cfg, [mp.FullFineTune()], lr=10.0, steps=60, batch_size=16)
        diverged = [w for w in rec if issubclass(w.category, mp.DivergenceWarning)]
        assert len(diverged) == 1 and "diverged" in str(diverged[0].message)
        rec.clear()
        mp.fit(params, data, tiny_cfg, [mp.FullFineTune()], lr=1e-3, steps=60, batch_size=16)
        assert not [w for w in rec if issubclass(w.category, mp.DivergenceWarning)]

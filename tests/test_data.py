"""The real data: sizes, ranges, determinism, disjoint pools, bad names."""
import numpy as onp
import pytest

import minipeft as mp
from minipeft import data


def test_sources_are_the_real_files():
    X, y = data.load_mnist_5k()
    assert X.shape == (5000, 28, 28) and onp.bincount(y).tolist() == [500] * 10
    D, t = data.load_uci_digits()
    assert D.shape == (1797, 8, 8) and D.max() == 16 and set(t) == set(range(10))


@pytest.mark.parametrize("name", mp.TASKS)
def test_task_splits_shapes_ranges_and_determinism(name):
    a, b = mp.load_task(name), mp.load_task(name, "float64")
    for split in ("train", "val", "test"):
        (x, y), (x2, y2) = getattr(a, split), getattr(b, split)
        assert x.shape[1:] == (1, 16, 16) and x.dtype == onp.float32 and x2.dtype == onp.float64
        assert 0.0 <= x.min() and x.max() <= 1.0 and y.min() >= 0 and y.max() < a.n_classes
        onp.testing.assert_array_equal(y, y2)
        onp.testing.assert_array_equal(x, x2.astype(onp.float32))
    assert len(set(a.train[1].tolist())) == a.n_classes  # every class is in the training split


def test_downstream_mnist_images_are_disjoint_from_pretraining():
    pre = mp.load_task("mnist")
    inv = mp.load_task("mnist-invert")
    seen = {x.tobytes() for s in (pre.train, pre.val, pre.test) for x in s[0]}
    back = [(1.0 - x).astype(onp.float32).tobytes() for s in (inv.train, inv.val, inv.test) for x in s[0]]
    assert len(back) == 1000 and not seen.intersection(back)


def test_rotation_labels_describe_the_rotation():
    rot = mp.load_task("mnist-rot", "float64")
    inv = mp.load_task("mnist-invert", "float64")
    originals = {(1.0 - x[0]).round(6).tobytes() for s in (inv.train, inv.val, inv.test) for x in s[0]}
    x, k = rot.train
    for img, kk in zip(x[:50], k[:50]):  # undoing the rotation gives a held-out MNIST image
        assert onp.rot90(img[0], -int(kk)).round(6).tobytes() in originals


def test_unknown_task():
    with pytest.raises(ValueError, match="task must be one of"):
        mp.load_task("cifar")


def test_bad_dtype_names_the_field():
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64'\)"):
        mp.load_task("digits", dtype="int8")

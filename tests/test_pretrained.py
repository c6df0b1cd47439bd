"""The pretrained backbone: cache logic (fast, on a tiny recipe) and the real one (slow)."""
import os
import warnings

import numpy as onp
import pytest

import minipeft as mp
from minipeft import io, pretrained, tree

from conftest import TINY_BACKBONE as TINY  # noqa: E402


def bits(p):
    return [a.tobytes() for _, a in tree.leaves_with_paths(p)]


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIPEFT_CACHE", str(tmp_path))
    assert pretrained.cache_dir() == str(tmp_path)
    monkeypatch.delenv("MINIPEFT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert pretrained.cache_dir() == str(tmp_path / "x" / "minipeft")


def test_build_then_load_same_bits_and_same_seed_same_bits(tiny_recipe):
    with pytest.raises(FileNotFoundError, match="minipeft pretrain"):
        pretrained.load_backbone(TINY, build=False)
    p, info = pretrained.load_backbone(TINY, progress=False)
    path = pretrained.backbone_path(TINY)
    assert os.path.dirname(path) == str(tiny_recipe) and os.listdir(tiny_recipe) == [os.path.basename(path)]
    q, info2 = pretrained.load_backbone(TINY, build=False)
    assert bits(p) == bits(q) and info == info2
    r, _ = pretrained.pretrain(TINY, seed=0, progress=False)
    assert bits(r) == bits(p)
    s, _ = pretrained.pretrain(TINY, seed=1, progress=False)
    assert bits(s) != bits(p)
    d64, _ = pretrained.load_backbone(TINY, build=False, dtype="float64")
    assert d64["head"]["W"].dtype == onp.float64


def test_corrupted_or_mismatched_cache_is_an_error_or_a_rebuild(tiny_recipe):
    p, _ = pretrained.load_backbone(TINY, progress=False)
    path = pretrained.backbone_path(TINY)
    with open(path, "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        pretrained.load_backbone(TINY, build=False)
    with pytest.warns(UserWarning, match="rebuilding"):
        q, _ = pretrained.load_backbone(TINY, progress=False)
    assert bits(q) == bits(p)
    # a file of the right name but another shape: refused, then rebuilt
    io.save_tree(path, mp.init_params(mp.Config(d=4, h=2, N=1, d_ff=8), 0), {"spec": pretrained._spec(TINY, 0),
                 "val_acc": 0, "test_acc": 0, "seconds": 0})
    with pytest.raises(ValueError, match="shape|missing"):
        pretrained.load_backbone(TINY, build=False)


def test_recipe_change_changes_the_cache_file(tiny_recipe, monkeypatch):
    a = pretrained.backbone_path(TINY)
    monkeypatch.setitem(pretrained.RECIPE, "lr", 1e-4)
    assert pretrained.backbone_path(TINY) != a


# ------------------------------------------------------------------------ the real one
@pytest.fixture(scope="module")
def backbone():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rebuild of a corrupted cache would warn
        return pretrained.load_backbone(progress=False)


@pytest.mark.slow
def test_pretrained_backbone_reaches_its_stated_accuracy(backbone):
    params, info = backbone
    cfg = pretrained.DEFAULT_CONFIG
    acc = mp.evaluate(params, mp.load_task("mnist").test, cfg)["acc"]
    assert acc == info["test_acc"] and acc >= 0.90, info


@pytest.mark.slow
@pytest.mark.parametrize("task", ["digits", "mnist-invert"])
def test_downstream_gap_between_linear_probe_and_full_fine_tuning(backbone, task):
    params, _ = backbone
    cfg = pretrained.DEFAULT_CONFIG
    t = mp.load_task(task)
    start = mp.new_head(params, t.n_classes, seed=1)
    accs = {}
    for m, lr in ((mp.LinearProbe(), 1e-2), (mp.FullFineTune(), 1e-3)):
        p, _ = mp.fit(start, t.train, cfg, [m], epochs=8, lr=lr, progress=False)
        accs[m.name] = mp.evaluate(p, t.val, cfg)["acc"]
    assert accs["full"] - accs["linear_probe"] >= 0.05, accs

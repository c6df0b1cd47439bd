"""Fault tests: training stops at the first non-finite value and gives back the last finite θ;
non-finite data is refused at the boundary; a finite divergence is warned about."""
import warnings

import numpy as onp
import pytest

import minipeft as mp
from minipeft.methods import method_class

import fuzzlib
from conftest import images
from fuzzlib import record


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    fuzzlib.write_table()


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
    record("training faults", "clear error", f"huge lr, {method}")


def test_nan_in_params_is_refused_before_training_naming_the_leaf(tiny_cfg):
    lora = method_class("lora")()
    params = mp.attach(mp.init_params(tiny_cfg, 0, "float64"), [lora], tiny_cfg)
    params["lora"]["blocks"][1]["v"]["A"][0, 0] = onp.nan
    with pytest.raises(ValueError, match=r"^params: leaf lora\.blocks\.1\.v\.A holds NaN/Inf"):
        mp.fit(params, _data(tiny_cfg, dtype="float64"), tiny_cfg, [lora], steps=5, batch_size=16)
    record("training faults", "clear error", "NaN in params")


def test_first_nonfinite_names_the_first_bad_leaf_in_order():
    t = {"a": onp.ones(3), "b": [onp.ones(2), onp.array([1.0, onp.inf])], "c": onp.array([onp.nan])}
    assert mp.train.first_nonfinite(t) == "b.1"
    assert mp.train.first_nonfinite({"a": onp.full(3, 1e308), "b": [onp.ones(2)]}) is None  # sums overflow, leaves finite


def test_first_nonfinite_is_not_fooled_by_cancelling_or_overflowing_sums():
    t = {"a": onp.array([onp.inf], "float32"), "b": onp.array([-onp.inf], "float32")}  # Σ = nan, not ±inf
    assert mp.train.first_nonfinite(t) == "a"
    assert mp.train.first_nonfinite({"a": onp.full(4, 3e38, "float32"), "b": onp.array([1.0, onp.nan])}) == "b"
    assert mp.train.first_nonfinite({"a": onp.full(4, 3e38, "float32")}) is None  # float32 Σ overflows


def test_huge_weight_decay_stops_at_the_update(tiny_cfg):
    params = mp.init_params(tiny_cfg, 0, "float64")
    with pytest.raises(mp.NonFiniteError, match="non-finite update at step 0") as info:
        mp.fit(params, _data(tiny_cfg, dtype="float64"), tiny_cfg, [mp.LinearProbe()], weight_decay=1e308,
               lr=10.0, steps=3)
    assert info.value.leaf.startswith("head.")
    record("training faults", "clear error", "huge weight decay")


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
        record("training faults", "clear error", f"non-finite image {bad}")


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
    record("training faults", "correct", "finite divergence warned")
    record("training faults", "correct", "normal run not warned")


# --------------------------------------------------------------- the CLI under faults
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from minipeft import io, pretrained  # noqa: E402
from minipeft.cli import main  # noqa: E402


@pytest.fixture
def fake_cache(monkeypatch, tmp_path):
    """A valid cache entry for the default config holding untrained weights, so `train` starts
    at once (the weights' quality is not what these tests are about)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINIPEFT_CACHE", str(cache))
    p = mp.init_params(pretrained.DEFAULT_CONFIG, 0, "float32")
    info = {"val_acc": 0.1, "test_acc": 0.1, "seconds": 0.0, "spec": pretrained._spec(pretrained.DEFAULT_CONFIG, 0),
            "sha256": io.tree_sha256(p)}
    io.save_tree(pretrained.backbone_path(), p, {"kind": "backbone", **info})
    return cache


def _files(*folders):
    return sorted(os.path.join(d, n) for d in folders if os.path.isdir(d) for n in os.listdir(d))


def test_cli_huge_lr_exits_3_with_one_line_and_saves_nothing(fake_cache, tmp_path, capsys):
    out = tmp_path / "a.npz"
    assert main(["train", "--method", "lora", "--lr", "1e300", "--epochs", "1", "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-finite" in err and "step 0" in err and "nothing saved" in err
    assert not out.exists() and not [f for f in _files(tmp_path, fake_cache) if ".tmp-" in f]
    assert main(["train", "--method", "lora", "--lr", "1e300", "--epochs", "1", "--out", str(out),
                 "--save-on-error"]) == 3
    from minipeft.adapters import load_adapter
    params, methods, meta = load_adapter(out, pretrained.load_backbone(build=False)[0], pretrained.DEFAULT_CONFIG)
    assert meta["stopped_at_step"] == 0 and mp.train.first_nonfinite(params) is None
    record("CLI faults", "clear error", "train --lr 1e300")
    record("CLI faults", "correct", "train --lr 1e300 --save-on-error")


def test_out_problems_are_reported_before_training(fake_cache, tmp_path, capsys, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the backbone was loaded before --out was checked")
    monkeypatch.setattr(pretrained, "load_backbone", refuse)
    (tmp_path / "file").write_bytes(b"")
    for out, what in [(tmp_path, "is a directory"), (tmp_path / "file" / "a.npz", "is a file, not a folder"),
                      ("", "non-empty"), (pretrained.backbone_path(), "refusing to overwrite")]:
        assert main(["train", "--method", "lora", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and what in err, err
        record("CLI faults", "clear error", f"--out {out}")
    import tempfile

    def denied(*a, **k):  # as root a folder's mode bits do not stop a write: stand in for one that does
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert main(["train", "--method", "lora", "--out", str(tmp_path / "ro" / "a.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write in" in err and "Permission denied" in err, err
    record("CLI faults", "clear error", "--out in a folder that cannot be written")


def test_an_interrupted_save_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    from minipeft.cli import Terminated
    f = tmp_path / "p.npz"
    io.save_tree(f, {"a": onp.ones(3)}, {"v": 1})
    before = f.read_bytes()
    for exc in (KeyboardInterrupt, Terminated):
        def half_then_signal(fh, **arrays):
            fh.write(b"PK\x03\x04 half a file")
            raise exc()
        monkeypatch.setattr(onp, "savez", half_then_signal)
        with pytest.raises(exc):
            io.save_tree(f, {"a": onp.zeros(3)}, {"v": 2})
        assert f.read_bytes() == before and os.listdir(tmp_path) == ["p.npz"]
        record("CLI faults", "correct", f"{exc.__name__} during a save")


def _signal_during(argv, sig, marker, stream, env, cwd):
    """Run ``minipeft argv``, send ``sig`` once ``marker`` appears on ``stream``; (rc, rest of stderr)."""
    # the child starts with SIGINT at its default disposition: run from a background job (`cmd &`
    # in a non-interactive shell, as a CI script may be), it would inherit SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler, so the signal would do nothing
    p = subprocess.Popen([sys.executable, "-m", "minipeft", *argv], cwd=cwd, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    src = p.stdout if stream == "stdout" else p.stderr
    for line in src:
        if marker in line:
            break
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return p.returncode, err


# one signal of each kind per command in the default run, the other two behind -m slow (each
# starts a fresh interpreter that imports scikit-learn for the data: seconds apiece)
@pytest.mark.parametrize("sig,code", [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_train_leaves_no_partial_or_temp_file(fake_cache, tmp_path, sig, code):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "MINIPEFT_PROGRESS": "0"}
    before = _files(fake_cache)
    out = tmp_path / "out" / "a.npz"
    rc, err = _signal_during(["train", "--method", "lora", "--epochs", "50", "--out", str(out)], sig, "training:",
                             "stdout", env, tmp_path)
    assert rc == code and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() and _files(fake_cache) == before
    assert not [f for f in _files(tmp_path, tmp_path / "out", fake_cache) if ".tmp-" in f]
    record("CLI faults", "correct", f"{sig.name} during train")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_pretrain_leaves_no_partial_or_temp_file(tmp_path, sig, code):
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "MINIPEFT_PROGRESS": "0", "MINIPEFT_CACHE": str(cache)}
    rc, err = _signal_during(["pretrain"], sig, "building the pretrained backbone", "stderr", env, tmp_path)
    assert rc == code and err.count("\n") == 1 and "Traceback" not in err, err
    assert _files(cache) == []  # no backbone, no temp file
    record("CLI faults", "correct", f"{sig.name} during pretrain")


# ------------------------------------------------------------- config vs params
def test_forward_checks_what_the_shapes_tell(tiny_cfg):
    params = mp.init_params(tiny_cfg, 0, "float32")
    base = dict(d=16, h=2, N=2, d_ff=24, n_classes=3, image_size=8, patch=4)
    cases = [(mp.Config(**{**base, "patch": 2}), "position table"),
             (mp.Config(**{**base, "image_size": 16, "patch": 8}), "embed.W has shape"),
             (mp.Config(**{**base, "d_ff": 32}), "blocks.0.mlp.W_1"),
             (mp.Config(**{**base, "front": "text", "vocab": 9, "max_len": 4}), "needs embed.W_tok")]
    for cfg, match in cases:
        x = (onp.zeros((1, cfg.channels, cfg.image_size, cfg.image_size), "float32") if cfg.front == "vision"
             else onp.zeros((1, 3), "int64"))
        with pytest.raises(ValueError, match=match):
            mp.forward(params, x, cfg)
        record("config vs params", "clear error", match)
    three = mp.Config(**{**base, "channels": 3})
    with pytest.raises(ValueError, match="embed.W has shape"):
        mp.forward(params, onp.zeros((1, 3, 8, 8), "float32"), three)
    record("config vs params", "clear error", "channels")
    for bad in (True, float("inf"), float("nan"), 0.0, 2.0, "1e-5"):
        with pytest.raises(ValueError, match="eps"):
            mp.Config(**{**base, "eps": bad})
        record("config vs params", "clear error", f"eps={bad!r}")


def test_merged_files_carry_their_config_and_load_bit_exact(tmp_path, tiny_cfg):
    from minipeft.adapters import AdapterFile, load_merged, save_merged
    merged = mp.new_head(mp.init_params(tiny_cfg, 3, "float64"), 5)
    meta = {"methods": [], "n_classes": 5}
    save_merged(tmp_path / "m.npz", merged, AdapterFile([], meta, "a.npz"), tiny_cfg, task="digits",
                dtype="float64", max_abs_diff=0.0)
    params, cfg, meta = load_merged(tmp_path / "m.npz")
    assert cfg == tiny_cfg and meta["task"] == "digits"
    for (p, a), (q, b) in zip(mp.tree.leaves_with_paths(params), mp.tree.leaves_with_paths(merged)):
        assert p == q and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    record("config vs params", "correct", "merged file round trip")


@pytest.mark.slow
def test_cli_train_merge_evaluate(fake_cache, tmp_path, capsys):
    import re
    a = tmp_path / "lora.npz"
    assert main(["train", "--method", "lora", "--epochs", "1", "--out", str(a)]) == 0
    assert "constant schedule" in capsys.readouterr().out
    assert main(["merge", str(a)]) == 0
    merged_acc = re.search(r"merged (\d\.\d+)", capsys.readouterr().out)[1]
    assert main(["evaluate", str(tmp_path / "lora-merged.npz")]) == 0
    assert f"test acc {merged_acc}" in capsys.readouterr().out


def test_an_os_error_while_saving_is_one_line_naming_the_path(fake_cache, tmp_path, capsys, monkeypatch):
    out = tmp_path / "a.npz"

    def disk_full(fh, **arrays):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(onp, "savez", disk_full)
    assert main(["train", "--method", "bitfit", "--epochs", "1", "--batch-size", "500", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"minipeft: error: {out}: No space left on device\n", err
    assert not out.exists() and not [f for f in _files(tmp_path) if ".tmp-" in f]
    record("CLI faults", "clear error", "OSError while saving")

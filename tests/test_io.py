"""io and adapters: bit-exact round trips, no pickle, clear errors, atomic writes."""
import os

import numpy as onp
import pytest

import minipeft as mp
from minipeft import io, tree
from minipeft.adapters import load_adapter, save_adapter


def leaves_equal_bits(a, b):
    la, lb = tree.leaves_with_paths(a), tree.leaves_with_paths(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (_, x), (_, y) in zip(la, lb):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_round_trip_is_bit_exact(tmp_path, tiny_cfg, dtype):
    p = mp.init_params(tiny_cfg, 1, dtype)
    f = tmp_path / "p.npz"
    io.save_tree(f, p, {"config": tiny_cfg.to_dict()})
    q, meta = io.load_tree(f)
    leaves_equal_bits(p, q)
    assert meta["config"] == tiny_cfg.to_dict() and meta["format"] == "minipeft"
    assert [n for n in os.listdir(tmp_path)] == ["p.npz"]  # no temp file left behind


def test_missing_truncated_corrupted_and_foreign_files(tmp_path, tiny_cfg):
    with pytest.raises(FileNotFoundError):
        io.load_tree(tmp_path / "nope.npz")
    f = tmp_path / "p.npz"
    io.save_tree(f, mp.init_params(tiny_cfg, 0), {})
    raw = f.read_bytes()
    (tmp_path / "t.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        io.load_tree(tmp_path / "t.npz")
    (tmp_path / "g.npz").write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        io.load_tree(tmp_path / "g.npz")
    onp.savez(tmp_path / "plain.npz", a=onp.ones(2))
    with pytest.raises(ValueError, match="truncated or corrupted|not a minipeft"):
        io.load_tree(tmp_path / "plain.npz")


def test_object_arrays_are_never_unpickled(tmp_path):
    f = tmp_path / "evil.npz"
    onp.savez(f, __meta__=onp.frombuffer(b'{"format": "minipeft", "version": 1}', dtype=onp.uint8),
              x=onp.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="corrupted|pickle"):
        io.load_tree(f)


def test_failed_write_keeps_the_old_file(tmp_path, tiny_cfg, monkeypatch):
    f = tmp_path / "p.npz"
    io.save_tree(f, {"a": onp.ones(3)}, {"v": 1})
    before = f.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(onp, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save_tree(f, {"a": onp.zeros(3)}, {"v": 2})
    assert f.read_bytes() == before and os.listdir(tmp_path) == ["p.npz"]


def test_unflatten_lists_and_shape_check(tiny_cfg):
    p = mp.init_params(tiny_cfg, 0)
    io.check_same_shapes(p, p)
    q = tree.replace(p, ("blocks", 1, "attn", "W_q"), onp.zeros((3, 3), "float32"))
    with pytest.raises(ValueError, match="blocks.1.attn.W_q"):
        io.check_same_shapes(q, p)


def test_adapter_round_trip_and_mismatches(tmp_path, tiny_cfg):
    p = mp.new_head(mp.init_params(tiny_cfg, 0), 5)
    p = tree.replace(p, ("head", "b"), onp.arange(5, dtype="float32"))
    f = tmp_path / "a.npz"
    save_adapter(f, p, [mp.LinearProbe()], tiny_cfg, extra={"task": "toy"})
    q, methods, meta = load_adapter(f, mp.init_params(tiny_cfg, 0), tiny_cfg)
    assert methods == [mp.LinearProbe()] and meta["task"] == "toy"
    leaves_equal_bits(p, q)
    other = mp.Config(d=32, h=2, N=2, d_ff=24, n_classes=3, image_size=8, patch=4)
    with pytest.raises(ValueError, match="config"):
        load_adapter(f, mp.init_params(other, 0), other)
    io.save_tree(tmp_path / "b.npz", p, {"kind": "backbone"})
    with pytest.raises(ValueError, match="not an adapter"):
        load_adapter(tmp_path / "b.npz", p, tiny_cfg)

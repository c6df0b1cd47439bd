"""`minipeft merge ADAPTER --out FILE`: error paths (fast, no backbone needed) and the
end-to-end run on the pretrained backbone (slow)."""
import dataclasses
import re

import numpy as onp
import pytest

import minipeft as mp
from minipeft import io, pretrained
from minipeft.adapters import save_adapter
from minipeft.cli import build_parser, main
from minipeft.methods.lora import LoRA


@pytest.fixture
def no_backbone(monkeypatch, tmp_path):
    """Error paths must be found before the (big) backbone is loaded."""
    monkeypatch.setenv("MINIPEFT_CACHE", str(tmp_path / "cache"))

    def refuse(*a, **k):
        raise AssertionError("load_backbone called")
    monkeypatch.setattr(pretrained, "load_backbone", refuse)


def run_err(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_merge_help_and_lora_train_flags(capsys):
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    assert "--out" in capsys.readouterr().out
    args = build_parser("lora").parse_args(["train", "--method", "lora", "--r", "2", "--alpha", "8",
                                            "--targets", "q", "mlp1", "--layers", "0", "3"])
    m = LoRA(**{k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not dataclasses.MISSING})
    assert (m.r, m.alpha, m.targets, m.layers) == (2, 8.0, ("q", "mlp1"), (0, 3))


def test_merge_missing_or_foreign_files(capsys, tmp_path, no_backbone):
    assert "no such file" in run_err(capsys, ["merge", str(tmp_path / "nope.npz")])
    f = tmp_path / "b.npz"
    io.save_tree(f, {"a": onp.zeros(2)}, {"kind": "backbone"})
    assert "not an adapter file" in run_err(capsys, ["merge", str(f)])


def test_merge_refuses_other_configs_non_mergeable_methods_and_missing_task(capsys, tmp_path, no_backbone, tiny_cfg):
    f = tmp_path / "tiny.npz"
    p = mp.attach(mp.init_params(tiny_cfg, 0), [LoRA()], tiny_cfg)
    save_adapter(f, p, [LoRA()], tiny_cfg, extra={"task": "digits"})
    assert "trained for a backbone with config" in run_err(capsys, ["merge", str(f)])
    cfg = mp.Config()
    base = mp.init_params(cfg, 0)
    save_adapter(f, base, [mp.LinearProbe()], cfg, extra={"task": "digits"})
    err = run_err(capsys, ["merge", str(f), "--out", str(tmp_path / "m.npz")])
    assert "method 'linear_probe' (LinearProbe) cannot be merged" in err
    save_adapter(f, mp.attach(base, [LoRA()], cfg), [LoRA()], cfg)  # no task in the record
    assert "pass --task" in run_err(capsys, ["merge", str(f)])
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.slow
def test_merge_end_to_end(capsys, tmp_path):
    adapter = tmp_path / "lora.npz"
    assert main(["train", "--method", "lora", "--task", "mnist-invert", "--epochs", "1", "--targets", "q", "v", "mlp1",
                 "--out", str(adapter)]) == 0
    capsys.readouterr()
    for dtype, tol in (("float32", 1e-4), ("float64", 1e-11)):
        out = tmp_path / f"merged-{dtype}.npz"
        assert main(["merge", str(adapter), "--out", str(out), "--dtype", dtype]) == 0
        text = capsys.readouterr().out
        delta = float(re.search(r"max \|Δ\| merged vs unmerged logits on mnist-invert test \(200 images\): (\S+)", text)[1])
        assert delta < tol, text
        merged, meta = io.load_tree(out)
        assert meta["kind"] == "merged-backbone" and meta["methods"][0]["type"] == "lora" and meta["n_classes"] == 10
        assert set(merged) == {"embed", "blocks", "ln_f", "head"} and merged["head"]["W"].dtype == onp.dtype(dtype)
        io.check_same_shapes(merged, pretrained.load_backbone()[0])  # the original architecture
        acc = re.search(r"test acc unmerged (\S+), merged (\S+)", text)
        assert acc[1] == acc[2]
    # BitFit: the trained biases are the merged backbone
    adapter = tmp_path / "bitfit.npz"
    assert main(["train", "--method", "bitfit", "--task", "digits", "--epochs", "1", "--out", str(adapter)]) == 0
    assert main(["merge", str(adapter)]) == 0
    assert "max |Δ| merged vs unmerged logits on digits test (500 images): 0.000e+00" in capsys.readouterr().out
    assert (tmp_path / "bitfit-merged.npz").exists()

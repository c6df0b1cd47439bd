"""The minipeft command."""
import shutil
import subprocess
import sys

import pytest

from minipeft import pretrained
from minipeft.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("pretrain", "info", "train"):
        assert cmd in out


def test_train_help_lists_methods_and_tasks(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "linear-probe" in out and "full" in out and "mnist-invert" in out


def test_info_prints_config_and_counts(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MINIPEFT_CACHE", str(tmp_path))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"{pretrained.DEFAULT_CONFIG.n_params:,}" in out and "not built yet" in out


def test_bad_method_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--method", "magic"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_console_script_and_module_entry():
    out = subprocess.run([sys.executable, "-m", "minipeft", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "pretrain" in out.stdout
    if shutil.which("minipeft"):
        assert subprocess.run(["minipeft", "--help"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_train_linear_probe_end_to_end(capsys, tmp_path):
    out = tmp_path / "lp.npz"
    assert main(["train", "--method", "linear-probe", "--task", "digits", "--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "trainable numbers: 650 " in text and "test acc" in text and out.exists()

"""``minipeft chat``: its options are checked before the model is read; on the real
SmolLM2 (slow) one turn answers through the chat template and stops at <|im_end|>."""
import io

import pytest

from minipeft.cli import main


@pytest.mark.parametrize("flags, match", [(["--top-p", "1.5"], "--top-p"), (["--top-p", "0"], "--top-p"),
                                          (["--temperature", "0"], "--temperature"),
                                          (["--max-new-tokens", "0"], "--max-new-tokens")])
def test_bad_options_exit_2_naming_the_flag(flags, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(["chat", "--prompt", "hi", *flags])
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_a_missing_adapter_file_is_a_clear_error(tmp_path, capsys):
    rc = main(["chat", "--prompt", "hi", "--adapter", str(tmp_path / "none.npz")])
    assert rc == 2 and "--adapter: no such file" in capsys.readouterr().err  # before the model is read


@pytest.mark.slow
def test_one_turn_and_a_two_turn_conversation_on_the_real_model(capsys, monkeypatch):
    assert main(["chat", "--prompt", "What is the capital of France?", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "<|im_end|>" not in out
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a colour.\nAnd another one?\n\n"))
    assert main(["chat", "--max-new-tokens", "16", "--temperature", "0.7", "--seed", "3"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.strip()]) >= 2

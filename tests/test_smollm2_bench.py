"""benchmarks/smollm2_bench.py on a random tiny Llama (--quick): the 4-bit base's fresh-process
workers train LoRA on Q4_1/Q8_0 blocks and on their float32 dequantization and must give the
same losses to float32 rounding (the blocks ARE those weights); with torch (slow), the script's
own checks of logits and gradients against transformers + peft pass before it times anything.
Times and memory are not tested."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "smollm2_bench.py"
QUICK = ["--quick", "--batch", "2", "--tokens", "32", "--train-steps", "3", "--rounds", "1"]


def _run(tmp_path, *extra, timeout=300):
    out = tmp_path / "r.md"
    run = subprocess.run([sys.executable, str(SCRIPT), *QUICK, *extra, "--out", str(out)], capture_output=True,
                         text=True, timeout=timeout, cwd=str(ROOT))
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout, json.loads(out.with_suffix(".json").read_text())


def test_quantized_base_trains_like_its_dequantized_twin(tmp_path):
    pytest.importorskip("gguf")
    stdout, res = _run(tmp_path, "--no-torch")
    f32, q4 = res["base"]["float32"], res["base"]["Q4_1"]
    assert q4["quantized"] and not f32["quantized"]
    assert len(f32["losses"]) == len(q4["losses"]) == 3
    assert res["max_abs_loss_diff"] <= 1e-5 * abs(f32["losses"][0])
    assert abs(q4["held_out"] - f32["held_out"]) <= 1e-5 * abs(f32["held_out"])
    assert f32["losses"][-1] < f32["losses"][0]  # Adam on one fixed batch lowers its loss
    assert "| Q4_1 / Q8_0 blocks |" in stdout


@pytest.mark.slow
def test_quick_run_checks_agreement_with_torch_and_peft(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    stdout, res = _run(tmp_path)
    assert res["logit_max_abs_diff"] <= 1e-4
    assert [r["step"].split()[0] for r in res["speed"]] == ["lora", "prompt"]
    assert all(r["agreement"] <= 1e-3 for r in res["speed"])
    assert "minipeft / torch" in stdout


def test_readme_block_is_the_results_file():
    run = subprocess.run([sys.executable, str(SCRIPT), "--readme", "--check"], capture_output=True, text=True,
                         timeout=120, cwd=str(ROOT))
    assert run.returncode == 0, run.stderr[-2000:]

"""The benchmark (benchmarks/bench.py) on a tiny size: its correctness check agrees with
PyTorch and fails when the twins differ; it runs end to end, and without PyTorch it says
which command installs it and still runs the minipeft half. Times are not tested."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import minipeft as mp

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--d", "16", "--T", "5", "--batch", "4", "--dtype", "float32", "float64", "--rounds", "1",
        "--no-memory", "--no-grad-compare", "--peak-n", "256"]


@pytest.fixture(scope="module")
def bench():
    """benchmarks/bench.py as a module, imported without leaving its thread settings behind."""
    saved = dict(os.environ)
    sys.path.insert(0, str(BENCH))
    try:
        import bench as b
    finally:
        sys.path.remove(str(BENCH))
        os.environ.clear()
        os.environ.update(saved)
    return b


def _run(args, block_torch=False, timeout=120):
    """python benchmarks/bench.py ARGS in a fresh process (optionally with `import torch` failing)."""
    code = "import runpy, sys\n"
    if block_torch:
        code += "sys.modules['torch'] = None  # `import torch` raises ImportError\n"
    code += f"sys.argv = ['bench.py'] + {list(args)!r}\nrunpy.run_path({str(BENCH / 'bench.py')!r}, run_name='__main__')\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_check_agrees_with_torch_on_a_tiny_size(bench, dtype):
    pytest.importorskip("torch")
    case = bench.Case(16, 5, dtype, batch=4)
    kinds = ["forward", "full"] + [k for k in ("lora", "prompt") if k in case.methods]
    for k in kinds:
        c = bench.check(case, k)
        assert c["ok"], c
        assert c["err"] <= bench.TOL[dtype]


@pytest.mark.parametrize("kind", ["forward", "full", "lora", "prompt"])
def test_check_fails_when_the_twins_differ(bench, kind):
    """One weight of the PyTorch twin nudged by 1 %: the check must notice."""
    pytest.importorskip("torch")
    case = bench.Case(16, 5, "float64", batch=4)
    if kind in ("lora", "prompt") and kind not in case.methods:
        pytest.skip(f"method {kind} not there yet")
    params = case.setup(kind)[0] if kind != "forward" else case.params
    W = params["blocks"][1]["mlp"]["W_1"]
    nudged = mp.tree.replace(params, ("blocks", 1, "mlp", "W_1"), W * 1.01)
    c = bench.check(case, kind, torch_params=nudged)
    assert not c["ok"] and c["err"] > 1e3 * bench.TOL["float64"], c


def test_gemm_flops_of_a_tiny_model_by_hand(bench):
    """The FLOP formula against a count written out product by product."""
    cfg = bench.config(16, 5)  # d=16, d_ff=32, 8×8 images, 4 patches
    B, T, d, dff, m = 2, 5, 16, 32, 4
    M = B * T
    layer = 2 * M * d * d * 4 + 2 * M * d * dff * 2 + 2 * (2 * B * T * T * d)  # q,k,v,o; W₁,W₂; QKᵀ, AV
    embed, head = 2 * (B * m) * cfg.patch_dim * d, 2 * B * d * 10
    fwd = cfg.N * layer + embed + head
    assert bench.measure.gemm_flops(cfg, B, T, "forward") == fwd
    assert bench.measure.gemm_flops(cfg, B, T, "full") == fwd + 2 * (fwd - embed) + embed
    # LoRA r=4 on q, v: list every product (m, k, n) the step runs, 2·m·k·n FLOPs each
    r, S = 4, T
    lora_fwd = [(M, d, r), (M, r, d)] * 2  # x Aᵀ, (·) Bᵀ for q and v
    upper = [(M, d, d)] * 4 + [(M, dff, d), (M, d, dff)] + [(B * T, S, d)] * 4 + [(M, r, d)] * 4 * 2
    first = [(M, d, d), (M, dff, d), (M, d, dff)] + [(B * T, S, d)] * 3 + [(M, r, d)] * 3 * 2  # no dX of q, k, v; no ∂K
    head_bwd = [(d, B, 10), (B, 10, d)]
    extra = sum(2 * a * b * c for a, b, c in lora_fwd * cfg.N + upper * (cfg.N - 1) + first + head_bwd)
    assert bench.measure.gemm_flops(cfg, B, T, "lora", r=4) == fwd + extra


def test_interleave_alternates_and_reports_medians(bench):
    calls = []
    res = bench.measure.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=4, warmup=1)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert res["a"]["cpu"]["n"] == 4 and res["b"]["wall"]["median"] >= 0
    r = bench.measure.ratio(res, "a", "b")
    assert set(r) == {"cpu", "wall", "iqr"}


def test_bench_end_to_end_tiny(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "table.md"
    p = _run(TINY + ["--out", str(out)])
    assert p.returncode == 0, p.stderr[-2000:]
    text = out.read_text()
    assert "checks passed" in text and "FAILED" not in text
    assert "| 16 | 5 | float32 |" in text and "| 16 | 5 | float64 |" in text
    assert "Targets:" in text and out.with_suffix(".json").exists()


def test_without_torch_it_says_how_to_install_and_runs_the_minipeft_half(tmp_path):
    out = tmp_path / "table.md"
    p = _run(TINY + ["--out", str(out)], block_torch=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'python -m pip install -e ".[crosscheck]"' in p.stderr
    text = out.read_text()
    assert "PyTorch is not installed" in text and "| 16 | 5 | float32 |" in text


@pytest.mark.parametrize("args,match", [(["--T", "18"], "T must be 1 \\+ g"), (["--d", "30"], "multiple of h"),
                                        (["--batch", "0"], "batch")])
def test_bad_arguments_name_the_option(args, match):
    p = _run(args, block_torch=True, timeout=60)
    assert p.returncode == 2 and "usage" in p.stderr
    assert re.search(match, p.stderr), p.stderr

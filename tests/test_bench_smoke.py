"""The benchmark (benchmarks/bench.py) on a tiny size: its correctness check agrees with
PyTorch and fails when the twins differ; it runs end to end, and without PyTorch it says
which command installs it and still runs the minipeft half. Times are not tested."""
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as onp
import pytest

import minipeft as mp

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--d", "16", "--T", "5", "--batch", "4", "--dtype", "float32", "float64", "--rounds", "1",
        "--no-memory", "--no-grad-compare", "--peak-n", "256", "--no-fresh", "--no-train"]
#: the headline on a tiny size: fresh-process step pairs and the memory table, one of each
TINY_FRESH = ["--d", "16", "--T", "5", "--batch", "4", "--dtype", "float32", "--rounds", "1", "--no-grad-compare",
              "--peak-n", "256", "--no-train", "--fresh-size", "16", "5", "--fresh-batch", "4", "--fresh-pairs", "1",
              "--fresh-steps", "1", "--mem-batch", "4", "--mem-kinds", "lora", "full"]


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


def _closed_form_flops(cfg, B, T, kind, r=4):
    """``measure.gemm_flops``'s closed form (its docstring), written out: the product list must sum to it."""
    d, N, C, dff = cfg.d, cfg.N, cfg.n_classes, cfg.d_ff
    M = B * T
    lin, att = 2 * M * (4 * d * d + 2 * d * dff), 4 * B * T * T * d
    embed, head = 2 * B * (T - 1) * cfg.patch_dim * d, 2 * B * d * C
    fwd = N * (lin + att) + embed + head
    if kind == "forward":
        return fwd
    if kind == "full":
        return 3 * (fwd - embed) + 2 * embed
    rank = 2 * M * r * d
    upper = lin + 2 * att + 2 * 4 * rank
    first = 2 * M * (d * d + 2 * d * dff) + 3 * att // 2 + 2 * 3 * rank
    return fwd + N * 2 * 2 * rank + (N - 1) * upper + first + 2 * head


@pytest.mark.parametrize("d", [16, 64, 128, 256])
def test_gemm_products_sum_to_gemm_flops(bench, d):
    """The list of products (what "GEMMs alone" times) sums to gemm_flops and to its closed form,
    for every kind, the benchmark's token counts and batches; each product is sane."""
    m = bench.measure
    for T in (5, 17, 65):
        cfg = bench.config(d, T)
        for B in (1, 4, 64):
            lists = {k: m.gemm_products(cfg, B, T, k) for k in ("forward", "full", "lora")}
            for kind, gs in lists.items():
                total = sum(g.flops for g in gs)
                assert total == m.gemm_flops(cfg, B, T, kind) == _closed_form_flops(cfg, B, T, kind), (kind, d, T, B)
                assert len({(g.name, g.key) for g in gs}) == len(gs)  # equal products merged
                for g in gs:
                    assert g.count >= 1 and min(g.m, g.k, g.n) >= 1, g
                    assert g.a in ("N", "T", "H", "HT") and g.b in ("N", "T", "H", "HT") and g.c in ("N", "H"), g
                    assert g.stack in ((), (B, cfg.h)), g
                    assert g.count <= cfg.N, g  # at most once per block
            full, lora, fwd = (lists[k] for k in ("full", "lora", "forward"))
            assert not any("LoRA" in g.name for g in full + fwd)
            assert [g for g in lora if "dW" in g.name] == [g for g in lora if g.name == "head: dW = gᵀ x"]  # φ frozen
            embed_dw = "embed: dW = gᵀ x"
            assert not any(g.name == embed_dw for g in lora) and any(g.name == embed_dw for g in full)
            assert not any(g.name.startswith("embed: dX") for g in full)  # the patches are data
            assert {g.name for g in fwd} <= {g.name for g in full} and {g.name for g in fwd} <= {g.name for g in lora}
            byname = {g.name: g.count for g in lora}
            assert byname["∂K = ∂Sᵀ Q"] == cfg.N - 1 and byname["q: dX = g W"] == cfg.N - 1  # block 1: input frozen
            assert byname["o: dX = g W"] == cfg.N and byname["LoRA v: ∂A = ∂uᵀ x"] == cfg.N


def test_gemm_operands_are_the_steps_layouts(bench):
    """gemm_operands builds each product's operands in the step's layouts (the strides of
    nn/attention.py's head views, of Wᵀ), with the right shapes; matmul on them gives the same
    numbers as on contiguous copies."""
    att = importlib.import_module("minipeft.nn.attention")  # the module (minipeft.nn.attention is also a function)
    m, cfg, B, T = bench.measure, bench.config(16, 5), 4, 5
    gs = {g.name: g for g in m.gemm_products(cfg, B, T, "lora")}
    for g in gs.values():
        a, b, c = m.gemm_operands(g, "float64")
        assert a.shape == g.stack + (g.m, g.k) and b.shape == g.stack + (g.k, g.n) and c.shape == g.stack + (g.m, g.n)
        onp.matmul(a, b, out=c)
        assert onp.allclose(c, onp.ascontiguousarray(a) @ onp.ascontiguousarray(b), rtol=1e-12, atol=1e-12)
    X = onp.zeros((B, T, cfg.d))
    a, b, _ = m.gemm_operands(gs["Q Kᵀ"], "float64")
    assert a.strides == att._heads(X, cfg.h).strides and b.strides == att._heads(X, cfg.h).transpose(0, 1, 3, 2).strides
    _, _, c = m.gemm_operands(gs["A V"], "float64")
    assert c.strides == onp.empty((B, T, cfg.h, cfg.d // cfg.h)).transpose(0, 2, 1, 3).strides  # _heads_matmul's out
    _, b, _ = m.gemm_operands(gs["q: x Wᵀ"], "float64")
    assert b.strides == onp.zeros((cfg.d, cfg.d)).T.strides  # W stored d_out × d_in, read as Wᵀ


def test_gemm_seconds_times_each_product_once(bench):
    m = bench.measure
    g = m.Gemm("x Wᵀ", 3, (), 32, 16, 16, "N", "T")
    t = m.gemm_seconds({"three": [g], "one": [g._replace(count=1)]}, "float32", reps=2, min_call=1e-4)
    assert t["one"] > 0 and t["three"] == 3 * t["one"]
    with pytest.raises(ValueError, match="head layout"):
        m.gemm_operands(g._replace(a="H"))


@pytest.mark.parametrize("have_torch", [False, True])
def test_gemm_steps_on_a_tiny_size(bench, monkeypatch, have_torch):
    """bench.gemm_steps at d = 16, T = 5: the fresh workers (faked here: fixed times, in the
    order asked; the real ones run in test_fresh_workers_... and the slow --quick run) in
    interleaved rounds, both frameworks' shares and LoRA / full, the products alone (timed for
    real), and each row rendered with its information lines."""
    import types
    ms = {("mp", "full"): 10.0, ("mp", "lora"): 8.0, ("torch", "full"): 20.0, ("torch", "lora"): 14.0}
    calls = []

    def fake(spec):
        calls.append((spec["framework"], spec["kind"]))
        return {"cpu_ms": ms[spec["framework"], spec["kind"]]}

    monkeypatch.setattr(bench.fresh, "run_worker", fake)
    args = types.SimpleNamespace(d=[16], T=[5], batch=4, fresh_pairs=2, fresh_steps=1)
    peaks = {"float32": {"numpy": 50.0, "torch": 40.0}}
    (r,) = bench.gemm_steps(args, peaks, lambda s: None, have_torch)
    one = [("mp", "full"), ("mp", "lora")] + ([("torch", "full"), ("torch", "lora")] if have_torch else [])
    assert calls == one + one[::-1]  # interleaved: the order reversed every round
    flops = {k: bench.measure.gemm_flops(bench.config(16, 5), 4, 5, k) for k in ("full", "lora")}
    assert r["floor"] == flops["lora"] / flops["full"] and r["lora_full"] == pytest.approx(0.8)
    assert r["share"] == pytest.approx(flops["full"] / 10e-3 / 50e9)
    a = r["alone"]
    assert a["full_ms"] > 0 and a["lora_ms"] > 0 and a["time_floor"] == pytest.approx(a["lora_ms"] / a["full_ms"])
    assert a["share"] == pytest.approx(flops["full"] / (a["full_ms"] / 1e3) / 50e9)
    assert ("torch" in r) == have_torch
    if have_torch:
        assert r["torch"]["lora_full"] == pytest.approx(0.7)
        assert r["torch"]["share"] == pytest.approx(flops["full"] / 20e-3 / 40e9)
    _, headline, _ = _headline()
    text = "\n".join(headline.gemm_table([r], None) + headline.gemm_targets([r], None))
    assert "What is reachable" in text and "| 16 | 5 |" in text
    assert f"time floor of {a['time_floor']:.2f} vs the FLOP floor's {r['floor']:.2f}" in text
    assert ("PyTorch's LoRA / full is 0.70 vs the same FLOP floor" in text) == have_torch


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


def test_memory_only_prints_the_memory_table_and_its_targets(tmp_path):
    """--memory-only: the fresh-process memory rows and the memory targets, nothing timed (no
    in-process table); without PyTorch, minipeft's half."""
    out = tmp_path / "mem.md"
    p = _run(["--memory-only", "--fresh-size", "16", "5", "--mem-batch", "4", "--dtype", "float32",
              "--mem-kinds", "forward", "lora", "--out", str(out)], block_torch=True)
    assert p.returncode == 0, p.stderr[-2000:]
    text = out.read_text()
    assert all(f"| float32 | {k} |" in text for k in ("forward", "lora", "full")), text
    assert re.search(r"- lora step traced peak ≤ 0\.7× the full step's \(float32, batch 4\): \d\.\d\d\d? — ", text), text
    assert "checks passed" not in text and "GFLOP" not in text
    assert out.with_suffix(".json").exists()


def test_gemm_only_prints_the_gemm_section_and_its_targets(tmp_path):
    """--gemm-only on a tiny size, without PyTorch: minipeft's fresh steps, the products alone,
    the targets with their information lines; nothing else timed."""
    out = tmp_path / "gemm.md"
    p = _run(["--gemm-only", "--d", "64", "--T", "5", "--batch", "2", "--fresh-pairs", "1", "--fresh-steps", "1",
              "--peak-n", "256", "--out", str(out)], block_torch=True)
    assert p.returncode == 0, p.stderr[-2000:]
    text = out.read_text()
    assert "What is reachable" in text and "(PyTorch not measured.)" in text and "| 64 | 5 |" in text
    assert re.search(r"- full step ≥ 55 % of the NumPy float32 GEMM peak at d = 64, T = 5: \d+ % — ", text), text
    assert "  - reachable (information, not a target): the products alone reach" in text
    assert "checks passed" not in text and "Peak memory" not in text and out.with_suffix(".json").exists()


@pytest.mark.parametrize("args,match", [(["--T", "18"], "T must be 1 \\+ g"), (["--d", "30"], "multiple of h"),
                                        (["--batch", "0"], "batch")])
def test_bad_arguments_name_the_option(args, match):
    p = _run(args, block_torch=True, timeout=60)
    assert p.returncode == 2 and "usage" in p.stderr
    assert re.search(match, p.stderr), p.stderr


# --------------------------------------------------------------- the headline (issue 16)
def _headline():
    sys.path.insert(0, str(BENCH))
    try:
        import fresh
        import headline
        import readme_table
    finally:
        sys.path.remove(str(BENCH))
    return fresh, headline, readme_table


def test_fresh_workers_time_and_measure_a_tiny_step():
    """The minipeft worker in a process of its own (it applies minipeft's policy and must not
    load PyTorch), the PyTorch worker here: both report per-step times and faults; the memory
    worker reports a peak."""
    pytest.importorskip("torch")
    fresh, _, _ = _headline()
    spec = {"mode": "steps", "kind": "lora", "d": 16, "T": 5, "batch": 4, "dtype": "float32", "steps": 2}
    a = fresh.run_worker({**spec, "framework": "mp"})
    assert a["cpu_ms"] > 0 and a["faults"] >= 0 and a["policy"]["blas_threads"] == 1
    assert a["policy"]["allocator"] != "not applied" and not a["torch_loaded"]
    b = fresh.worker({**spec, "framework": "torch"})
    assert b["cpu_ms"] > 0 and b["policy"]["torch_threads"] == 1
    m = fresh.worker({**spec, "framework": "torch", "mode": "memory", "batch": 64})
    assert m["rss_mb"] >= 0 and "traced_mb" not in m


def _fake_results(lora_ratio, mem_lora):
    step = {"kind": "lora", "d": 128, "T": 65, "batch": 64, "dtype": "float32", "pairs": 3, "steps": 8,
            "ratio": lora_ratio, "iqr": (lora_ratio, lora_ratio), "n": 3,
            "mp": {"cpu_ms": 10.0, "wall_ms": 11.0, "faults": 2.0, "sys_ms": 0.1},
            "torch": {"cpu_ms": 10.0 / lora_ratio, "wall_ms": 11.0, "faults": 3.0, "sys_ms": 0.2},
            "mp_policy": {"allocator": "keep"}}
    mem = {"d": 128, "T": 65, "batch": 256, "dtype": "float32", "kinds": ["lora", "full"],
           "mp": {"lora": {"traced_mb": mem_lora, "rss_mb": mem_lora}, "full": {"traced_mb": 100.0, "rss_mb": 100.0}},
           "torch": {"lora": {"rss_mb": 90.0}, "full": {"rss_mb": 120.0}}}
    train = {"epochs": 20, "pairs": 3, "command": "minipeft train --method lora --task digits --epochs 20",
             "ratio": 0.9, "iqr": (0.9, 0.9), "n": 3, "mp": {"cpu_s": 9.0, "sys_s": 0.5, "wall_s": 10.0},
             "torch": {"cpu_s": 10.0, "sys_s": 0.4, "wall_s": 11.0}}
    return {"info": {"date": "d", "machine": "m", "command": "c"}, "peaks": {"float32": {"numpy": 100.0, "torch": 90.0}},
            "headline": {"fresh": [step], "memory": [mem], "train": train, "blas": {"numpy": ["openblas"]}},
            "results": []}


def test_the_headline_marks_each_target_pass_or_fail():
    _, headline, _ = _headline()
    good = headline.render(_fake_results(0.95, 65.0))
    assert "fresh-process lora step ≤ 1.0× PyTorch at batch 64 (d = 128, T = 65, float32): 0.95 — pass" in good
    assert "lora step traced peak ≤ 0.7× the full step's (float32, batch 256): 0.65 — pass" in good
    assert "lora step peak ≤ PyTorch's same step (float32, RSS): 65 vs 90 MB — pass" in good
    assert "process ≤ 1.0× the PyTorch script (CPU time): 0.90 — pass" in good
    bad = headline.render(_fake_results(1.10, 96.0))
    assert "0.95" not in bad and bad.count("**FAIL**") == 3  # the step, the memory ratio, the RSS against PyTorch


def test_a_ratio_just_over_its_limit_does_not_print_as_the_limit():
    """1.004 against ≤ 1.0 prints "1.004 — FAIL", not "1.00 — FAIL"; 0.996 stays "1.00 — pass"."""
    _, headline, _ = _headline()
    over, under = headline.render(_fake_results(1.004, 65.0)), headline.render(_fake_results(0.996, 65.0))
    assert "(d = 128, T = 65, float32): 1.004 — **FAIL**" in over
    assert "(d = 128, T = 65, float32): 1.00 — pass" in under
    assert headline._vs(0.0503, 0.05, "+") == "+0.0503" and headline._vs(0.04, 0.05, "+") == "+0.04"


def test_readme_block_is_spliced_between_the_markers_and_checked(tmp_path):
    _, _, rt = _headline()
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\ntext before\n{rt.BEGIN}\nold numbers 1.23\n{rt.END}\ntext after\n")
    results = tmp_path / "results.json"
    results.write_text(__import__("json").dumps(_fake_results(0.95, 65.0)))
    assert rt.main(["--results", str(results), "--readme", str(readme), "--check"]) == 1
    assert rt.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old numbers" not in text and "text before" in text and "text after" in text and "0.95" in text
    assert rt.main(["--results", str(results), "--readme", str(readme), "--check"]) == 0


def test_the_repository_readme_is_what_its_results_file_gives():
    """No figure in the README's performance block was typed by hand."""
    _, _, rt = _headline()
    assert rt.main(["--check"]) == 0


@pytest.mark.slow
def test_bench_quick_end_to_end_with_the_headline(tmp_path):
    """--quick: every part, the fresh processes and the whole `minipeft train` process included."""
    pytest.importorskip("torch")
    out = tmp_path / "quick.md"
    p = _run(["--quick", "--out", str(out)], timeout=1800)
    assert p.returncode == 0, p.stderr[-2000:]
    text = out.read_text()
    for s in ("Headline: fresh processes", "Whole process: `minipeft train", "Peak memory of one step", "BLAS: NumPy",
              "Targets of issue 16", "In one process", "What is reachable", "reachable (information, not a target)"):
        assert s in text, s


def test_the_transpose_benchmark_runs_and_states_the_rule_it_checks(tmp_path):
    """benchmarks/transpose_bench.py: its grid (2 dtypes × 3 head widths × 5 key counts), each
    cell's two ways checked to agree before timing, the way ``nn.attention.copies_transposed``
    picks, and a verdict that follows from the cell's own figures; the table has a row per cell."""
    import json

    At = importlib.import_module("minipeft.nn.attention")
    out, js = tmp_path / "t.md", tmp_path / "t.json"
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    p = subprocess.run([sys.executable, str(BENCH / "transpose_bench.py"), "--rounds", "1", "--out", str(out),
                        "--json", str(js)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line for line in out.read_text().splitlines() if re.match(r"\| float(32|64) \|", line)]
    cells = json.loads(js.read_text())
    assert len(rows) == len(cells) == 30
    for c in cells:
        assert c["picks"] == ("copy" if c["d_h"] <= At._NN_MAX_DH and c["S"] >= At._NN_MIN_KEYS else "view")
        assert c["faster"] == ("copy" if c["ratio"] < 1 else "view"), c
        tie = c["iqr"][0] <= 1 <= c["iqr"][1]
        assert c["verdict"] == ("yes" if c["faster"] == c["picks"] else ("tie" if tie else "NO")), c

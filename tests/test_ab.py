"""benchmarks/ab.py (this checkout against another, in alternating worker processes) on tiny
works, timed against this very checkout: it runs end to end, its bit checks find the two sides
identical, and its controller is measure.py's interleave with the workers' own clocks. Times
are not tested."""
import subprocess
import sys
from pathlib import Path

import numpy as onp
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def ab():
    sys.path.insert(0, str(BENCH))
    try:
        import ab as module
        import measure
    finally:
        sys.path.remove(str(BENCH))
    return module, measure


def _run(*args, timeout=300):
    """python benchmarks/ab.py --baseline ROOT ARGS: this checkout against itself."""
    return subprocess.run([sys.executable, str(BENCH / "ab.py"), "--baseline", str(ROOT), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT))


def test_interleave_takes_the_times_each_call_returns(ab):
    _, measure = ab
    calls, times = [], {"a": iter([(2.0, 3.0), (4.0, 5.0)]), "b": iter([(1.0, 1.0), (1.0, 2.0)])}

    def fn(k):
        calls.append(k)
        return next(times[k])

    res = measure.interleave({k: (lambda k=k: fn(k)) for k in "ab"}, rounds=2, warmup=0, self_timed=True)
    assert calls == ["a", "b", "b", "a"] and res["a"]["cpu_raw"] == [2.0, 4.0]
    r = measure.ratio(res, "a", "b")
    assert r["cpu"] == 3.0 and r["iqr"] == (2.5, 3.5) and r["wall"] == 4.0 / 1.5


def test_compare_is_bit_for_bit(ab):
    m, _ = ab
    x = {"a": onp.array([0.0, 1.0], "float32"), "b": onp.ones(3)}
    assert m.compare(x, dict(x)) == "identical (2 arrays)"
    assert m.compare(x, {**x, "a": onp.array([-0.0, 1.0], "float32")}).startswith("differ")  # −0.0: other bits
    assert m.compare(x, {**x, "b": onp.array([1.0, 1.0, 1.5])}) == "differ: max |Δ|/max|value| 3.3e-01"
    assert "on one side only" in m.compare(x, {"a": x["a"]})


def test_toy_steps_against_itself():
    p = _run("--d", "16", "--T", "5", "--kinds", "full", "lora", "--rounds", "2", "--calls", "1")
    assert p.returncode == 0, p.stderr[-2000:]
    for kind in ("full", "lora"):
        assert f"| ViT d = 16, T = 5, float32, {kind} step | 1 | " in p.stdout, p.stdout
    assert p.stdout.count("identical") == 2 and "differ" not in p.stdout


def test_minilm_forward_and_bits_against_itself():
    """The MiniLM forward (no torch worker) with its float64 and float32 bit checks, and --minilm-bits."""
    p = _run("--minilm", "8", "--no-torch", "--rounds", "1", "--calls", "1", "--minilm-bits", "8")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| MiniLM 8 × 8, float32, forward | 1 | " in p.stdout, p.stdout
    assert "float64: identical (2 arrays); float32: identical (2 arrays)" in p.stdout
    assert "(half the texts padded)" in p.stdout and "differ" not in p.stdout and "ViT" not in p.stdout


def test_a_baseline_that_is_no_checkout_is_refused(tmp_path):
    p = _run("--d", "16", "--T", "5", "--baseline", str(tmp_path), timeout=60)
    assert p.returncode == 2 and "--baseline" in p.stderr


@pytest.mark.parametrize("args,rc,says", [
    (("--rounds", "0"), 2, "--rounds: must be a whole number ≥ 1"),
    (("--calls", "0"), 2, "--calls: must be a whole number ≥ 1"),
    (("--kinds", "bogus"), 2, "invalid choice: 'bogus'"),
    (("--dtype", "int8"), 2, "invalid choice: 'int8'"),
    (("--minilm-bits", "5"), 2, "--minilm-bits: more than 5 tokens"),
    (("--d", "15", "--T", "5"), 1, "cannot build ('vit', 15, 5, 'float32', 'full'): d must be a multiple of h"),
    (("--d", "16", "--T", "6"), 1, "T must be 1 + g² tokens"),
])
def test_bad_input_is_refused_in_words(args, rc, says):
    """Refused before any timing: by the parser (2), or by the work's own check in the worker (1)."""
    p = _run("--kinds", "full", *args, timeout=60) if "--kinds" not in args else _run(*args, timeout=60)
    assert p.returncode == rc and says in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


def test_the_kinds_are_full_and_the_cases_methods(ab):
    m, _ = ab
    sys.path.insert(0, str(BENCH))
    try:
        import cases
    finally:
        sys.path.remove(str(BENCH))
    assert m.KINDS == ("full", *cases.METHODS)

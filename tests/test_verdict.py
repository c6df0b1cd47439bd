"""minipeft/verdict.py (the paired comparison over seeds, the verdict rule, the line format,
the results file) and chapters/make_tables.py (the tables generated from results files).

The intervals are checked against scipy's own paired t test and t interval (an independent
implementation); the verdict rule on intervals built to fall on each side of 0.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as onp
import pytest
from scipy import stats

from minipeft import verdict as V

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "chapters"))
import make_tables  # noqa: E402

A = [0.81, 0.84, 0.80, 0.86, 0.83]
B = [0.78, 0.80, 0.79, 0.81, 0.80]


def test_paired_interval_is_scipys_paired_t():
    rec = V.paired(A, B)
    ci = stats.ttest_rel(A, B).confidence_interval(0.95)
    assert rec["ci"] == pytest.approx([ci.low, ci.high], abs=1e-12)
    assert rec["mean"] == pytest.approx(onp.mean(onp.subtract(A, B)), abs=1e-15)
    assert rec["diffs"] == pytest.approx(list(onp.subtract(A, B)), abs=1e-15) and rec["n"] == 5


def test_mean_ci_is_scipys_t_interval():
    rec = V.mean_ci(A)
    lo, hi = stats.t.interval(0.95, len(A) - 1, loc=onp.mean(A), scale=stats.sem(A))
    assert rec["ci"] == pytest.approx([lo, hi], abs=1e-12) and rec["n"] == 5


def test_detectable_effect_has_about_80_percent_power():
    # (t_crit + t_0.8)·SE is the usual approximation; the exact power at that effect comes from the
    # noncentral t (df = n − 1, noncentrality = effect / SE)
    for n in (5, 8, 20):
        d = onp.linspace(-1, 1, n) + 0.1
        rec = V.paired(d, onp.zeros(n))
        t_crit, nc = stats.t.ppf(0.975, n - 1), rec["mde"] / rec["se"]
        power = stats.nct.sf(t_crit, n - 1, nc) + stats.nct.cdf(-t_crit, n - 1, nc)
        assert 0.75 < power < 0.85, (n, power)


@pytest.mark.parametrize("shift, direction, want", [
    (0.05, ">", "reproduced"), (-0.05, ">", "refuted"), (0.0, ">", "inconclusive"),
    (0.05, "<", "refuted"), (-0.05, "<", "reproduced"), (0.0, "<", "inconclusive")])
def test_verdict_rule(shift, direction, want):
    b = onp.array(B)
    a = b + shift + onp.array([0.004, -0.003, 0.002, -0.001, -0.002])  # small spread around the shift
    rec = V.compare("claim", "A", a, "B", b, direction)
    lo, hi = rec["ci"]
    assert rec["verdict"] == want
    assert (lo > 0 or hi < 0) == (want != "inconclusive")


def test_verdict_line_format_round_trips():
    for a, b in ((A, B), (B, A), (A, A[::-1])):
        rec = V.compare("prefix beats prompt", "prefix p=1", a, "prompt p=8", b)
        line = V.format_verdict(rec)
        m = re.fullmatch(r"verdict: prefix beats prompt \| prefix p=1 vs prompt p=8: mean Δ = ([+-][0-9.]+), "
                         r"95% paired-t CI \[([+-][0-9.]+), ([+-][0-9.]+)\], n = 5 seeds \| (\w+)(.*)", line)
        assert m, line
        assert float(m[1]) == pytest.approx(rec["mean"], abs=5e-5) and m[4] == rec["verdict"]
        assert float(m[2]) == pytest.approx(rec["ci"][0], abs=5e-5)
        assert V.VERDICT_RE.match(line)["verdict"] == rec["verdict"]
        assert (m[5] != "") == (rec["verdict"] == "inconclusive")
    assert V.CHECK_RE.match(V.format_check(V.check("B = 0 gives the backbone", True, "max |Δ| = 0")))


@pytest.mark.parametrize("kwargs, field", [
    ({"a_values": [0.5]}, "a"), ({"b_values": [0.1, 0.2]}, "a, b"), ({"a_values": [0.1, float("nan"), 0, 0, 0]}, "a"),
    ({"claim": "x | y"}, "claim"), ({"direction": ">="}, "direction")])
def test_bad_input(kwargs, field):
    args = {"claim": "c", "a": "A", "a_values": A, "b": "B", "b_values": B, "direction": ">", **kwargs}
    with pytest.raises(ValueError, match=re.escape(field)):
        V.compare(**args)


def test_backbone_id_sees_one_bit():
    p = {"embed": {"W": onp.arange(6, dtype=onp.float32).reshape(2, 3)}, "blocks": [{"b": onp.ones(3)}]}
    q = {"embed": {"W": p["embed"]["W"].copy()}, "blocks": [{"b": onp.ones(3)}]}
    assert V.backbone_id(p) == V.backbone_id(q)
    q["embed"]["W"].view(onp.uint32)[0, 0] ^= 1
    assert V.backbone_id(p) != V.backbone_id(q)


def _record(chapter="05_lora", tour=False):
    arms = {"LoRA r=4": {"metric": "test accuracy", "values": A, **V.mean_ci(A), "trainable": 4746},
            "linear probe": {"metric": "test accuracy", "values": B, **V.mean_ci(B), "trainable": 650}}
    if tour:
        for a, pct, mg in ((arms["LoRA r=4"], 3.47, True), (arms["linear probe"], 0.47, None)):
            a.update(kind="tour", pct=pct, mergeable=mg)
    return {"schema": V.SCHEMA, "chapter": chapter, "quick": False, "budget": {"seeds": list(range(5)), "epochs": 3},
            "environment": V.environment("one thread"), "backbone": {"id": "0123456789abcdef"}, "wall_s": 12.3,
            "arms": arms, "claims": [V.compare("LoRA beats the linear probe", "LoRA r=4", A, "linear probe", B)],
            "checks": [V.check("B = 0 is the backbone", True, "max |Δ| = 0")]}


def test_results_file_round_trip_and_refusals(tmp_path):
    path = tmp_path / "05_lora.json"
    V.write_results(path, _record())
    assert V.read_results(path) == json.loads(json.dumps(_record() | {"environment": V.read_results(path)["environment"]}))
    bad = json.loads(path.read_text())
    bad["claims"][0]["verdict"] = "refuted"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="does not follow"):
        V.read_results(path)
    path.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ValueError, match="schema"):
        V.read_results(path)
    with pytest.raises(ValueError, match="schema"):
        V.write_results(path, {"schema": "x"})


def test_source_state_names_the_commit_and_the_uncommitted_files(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    (repo / "b.py").write_text("y = 2\n")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert V.source_state(repo) == {"commit": head, "dirty": []}
    (repo / "b.py").write_text("y = 3\n")  # a tracked file changed; an untracked one does not count
    (repo / "new.py").write_text("z = 0\n")
    assert V.source_state(repo) == {"commit": head, "dirty": ["b.py"]}
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    outside = tmp_path / "plain"
    outside.mkdir()
    assert V.source_state(outside) == {"commit": None, "dirty": []}


def test_tables_have_their_format(tmp_path):
    for name, tour in (("05_lora", False), ("07_summary", True)):
        V.write_results(tmp_path / f"{name}.json", _record(name, tour))
    timing = {"wall_s": 12.3, "cpu_s": 10.4, "load_1min": {"min": 0.5, "mean": 1.25, "max": 2.0, "samples": 3}}
    code = {"commit": "abababab01" + "0" * 30, "dirty": ["minipeft/tour.py"]}
    V.write_results(tmp_path / "07_summary.json", _record("07_summary", True) | {"timing": timing, "code": code})
    V.write_results(tmp_path / "05_lora.quick.json", _record("05_lora") | {"quick": True})
    results = make_tables.load_all(tmp_path)
    assert [r["chapter"] for r in results] == ["05_lora", "07_summary"]  # the quick file is skipped
    text = make_tables.render_chapters(results)
    rows = [ln for ln in text.splitlines() if ln.startswith("| 05_lora")]
    num, ci = r"[+-]?\d+\.\d{3}", r"\[[+-]?\d+\.\d{3}, [+-]?\d+\.\d{3}\]"
    assert any(re.fullmatch(rf"\| 05_lora \| LoRA beats the linear probe \| LoRA r=4 vs linear probe \| {num} \| {ci} "
                            r"\| 5 \| (reproduced|refuted|inconclusive.*) \|", ln) for ln in rows)
    assert any(re.fullmatch(rf"\| 05_lora \| LoRA r=4 \| test accuracy \| 4,746 \| {num} \| {ci} \| 5 \|", ln)
               for ln in rows)
    date = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert any(re.fullmatch(rf"\| 05_lora \| {date} \| 5 \| 3 \| 12 \| .* \| `0123456789abcdef` \| — \|", ln)
               for ln in rows)  # no "code" (an older file): no commit
    # a file with "code": its commit (10 hex digits) and how many tracked files were uncommitted
    assert any(re.fullmatch(r"\| 07_summary \| .* \| `0123456789abcdef` \| `abababab01` \+ 1 uncommitted file\(s\) \|",
                            ln) for ln in text.splitlines())
    # a file without "timing" (older) shows "—" for CPU; one with it, CPU s and the load while it ran
    assert any(re.fullmatch(r"\| 05_lora \| .* \| 12 \| — \| [\d.]+ \(at the end only\) \| .*", ln) for ln in rows)
    assert any(re.fullmatch(r"\| 07_summary \| .* \| 12 \| 10 \| 1\.25 \(0\.50–2\.00\) \| .*", ln)
               for ln in text.splitlines())
    tour = make_tables.render_tour(results).splitlines()
    assert re.fullmatch(rf"\| LoRA r=4 \| 4,746 \| 3\.47 % \| {num} \| {ci} \| yes \|", tour[-2])
    assert re.fullmatch(rf"\| linear probe \| 650 \| 0\.47 % \| {num} \| {ci} \| — \|", tour[-1])
    body = make_tables.replace_between("a\n<!-- B -->\nold\n<!-- E -->\nz", "<!-- B -->", "<!-- E -->", "new")
    assert body == "a\n<!-- B -->\nnew\n<!-- E -->\nz"
    with pytest.raises(ValueError, match="markers"):
        make_tables.replace_between("no markers", "<!-- B -->", "<!-- E -->", "x")


def test_committed_tables_are_generated_from_the_committed_results():
    out = subprocess.run([sys.executable, str(ROOT / "chapters" / "make_tables.py"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr

"""Coursework: markers, student copies, the grader, mutants and limits (minipeft/exercises/).

Default suite: the markers' checks, one copy with every other exercise to do graded in
full (selected exercises score 0, the rest — reference code — full marks), one mutant,
the time and memory limits, and the bad inputs. Slow: every mutant graded in full, a copy
with everything to do, each exercise's reference body put back, and ``pip install -e``.
"""
import ast
import json
import os
import subprocess
import sys

import pytest

from minipeft.cli import main
from minipeft.exercises import grade, make, markers, mutants

CAT = make.catalog()
IDS = list(CAT)
EQUATIONS = os.path.join(make.package_root(), os.pardir, "shared", "notes", "equations.md")
REQUIRED = {  # one exercise at least per method of the notes, plus attention
    "attention", "prompt-tuning", "vpt-shallow", "vpt-deep", "prefix-kv", "adaptformer", "serial-adapter",
    "lora-forward", "lora-merge", "bitfit", "ia3-forward", "ia3-merge", "ssf-forward", "ssf-merge-linear",
    "ssf-merge-ln"}


# ---------------------------------------------------------------------- markers
GOOD = '''def f(x):
    """doc"""
    # exercise demo [2 pts] "LoRA": y = x + 1
    y = x + 1
    return y
    # end exercise
'''


def test_a_region_is_parsed_and_replaced():
    headers, regions = markers.parse_file("pkg/mod.py", GOOD)
    (ex, line), = headers
    assert (ex.id, ex.points, ex.section, ex.statement, line) == ("demo", 2, "LoRA", "y = x + 1", 3)
    (r,) = regions
    assert (r.begin, r.end, r.indent) == (3, 6, "    ")
    assert markers.region_body(GOOD, r) == ["y = x + 1", "return y"]
    new = markers.replace_regions(GOOD, [r], [[markers.not_implemented_line(ex, "")]])
    ns = {}
    exec(compile(new, "mod.py", "exec"), ns)
    with pytest.raises(NotImplementedError, match=r"exercise demo \[2 pts\] \(equations.md \"LoRA\"\): y = x \+ 1"):
        ns["f"](1)
    assert new.splitlines()[2] == GOOD.splitlines()[2] and new.splitlines()[-1] == "    # end exercise"


BAD = [
    ("    # exercise demo [2 pts] \"LoRA\": y\n    y = 1\n", 1, "no '# end exercise'"),
    ("x = 1\n# end exercise\n", 2, "without a '# exercise"),
    ("# exercise a [1 pt] \"LoRA\": s\nx = 1\n# exercise b [1 pt] \"LoRA\": t\ny = 2\n# end exercise\n", 3,
     "begins inside exercise 'a'"),
    ("# exercise demo [2 pts] \"LoRA\": \nx = 1\n# end exercise\n", 1, "malformed exercise marker"),
    ("# exercise demo [2 pts] LoRA: y\nx = 1\n# end exercise\n", 1, "malformed exercise marker"),
    ("# exercise Demo [2 pts] \"LoRA\": y\nx = 1\n# end exercise\n", 1, "malformed exercise marker"),
    ("# exercise demo [0 pts] \"LoRA\": y\nx = 1\n# end exercise\n", 1, "points must be"),
    ("# exercise demo [2 pts] \"Lora\": y\nx = 1\n# end exercise\n", 1, "not an equations.md section"),
    ("# exercise demo [2 pts] \"LoRA\": y\n\n# end exercise\n", 1, "empty region"),
    ("    # exercise demo [2 pts] \"LoRA\": y\n    x = 1\n# end exercise\n", 3, "indented as its begin marker"),
    ("    # exercise demo [2 pts] \"LoRA\": y\n    x = 1\nz = 2\n    # end exercise\n", 3, "indented less"),
    ("    # exercise demo [2 pts] \"LoRA\": y\n        x = 1\n    # end exercise\n", 1, "first line must be"),
]


@pytest.mark.parametrize("text,line,fragment", BAD)
def test_malformed_markers_name_file_and_line(text, line, fragment):
    with pytest.raises(markers.MarkerError) as e:
        markers.parse_file("pkg/mod.py", text)
    assert str(e.value).startswith(f"pkg/mod.py:{line}: ") and fragment in str(e.value), str(e.value)


def _package(tmp_path, files):
    for name, text in files.items():
        p = tmp_path / "minipeft" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(tmp_path)


def test_ids_are_unique_across_files_and_parts_need_a_header(tmp_path):
    root = _package(tmp_path, {"a.py": GOOD, "b.py": GOOD})
    with pytest.raises(markers.MarkerError, match=r"minipeft/b.py:3: exercise id 'demo' is already defined at "
                                                  r"minipeft/a.py:3"):
        markers.scan(root)
    part = "def g():\n    # exercise demo (continued)\n    pass\n    # end exercise\n"
    root = _package(tmp_path / "2", {"a.py": part})
    with pytest.raises(markers.MarkerError, match=r"minipeft/a.py:2: .*no exercise 'demo' is defined"):
        markers.scan(root)
    root = _package(tmp_path / "3", {"a.py": GOOD, "b.py": part})
    assert [r.path for r in markers.scan(root)["demo"].parts] == ["minipeft/a.py", "minipeft/b.py"]


def test_catalog_covers_every_method_of_the_notes():
    assert REQUIRED <= set(IDS), REQUIRED - set(IDS)
    for e in CAT.values():
        assert e.statement and 1 <= e.points and e.section in markers.SECTIONS
    if os.path.isfile(EQUATIONS):  # the sections cited exist in the notes' equations.md
        with open(EQUATIONS, encoding="utf-8") as f:
            heads = [ln[3:].strip() for ln in f if ln.startswith("## ")]
        for s in markers.SECTIONS:
            assert any(h == s or h.startswith(s + " (") for h in heads), s


def test_graded_tests_one_module_per_exercise_plain_functions():
    files = sorted(f for f in os.listdir(make.graded_dir()) if f.startswith("test_") and f.endswith(".py"))
    assert files == sorted(make.test_module(i) + ".py" for i in IDS)
    for f in files:
        with open(os.path.join(make.graded_dir(), f), encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
        assert tests, f
        for n in tests:  # the grader calls them without fixtures
            assert not n.args.args, f"{f}::{n.name} takes arguments"


# ----------------------------------------------------------------------- copies
@pytest.fixture(scope="module")
def alternate(tmp_path_factory):
    """A student copy with every other exercise to do."""
    out = tmp_path_factory.mktemp("copies") / "alternate"
    make.make_copy(str(out), only=IDS[::2])
    return str(out)


@pytest.fixture(scope="module")
def reference_copy(tmp_path_factory):
    """A copy with nothing to do: the reference package."""
    out = tmp_path_factory.mktemp("copies") / "reference"
    make.make_copy(str(out), only=[])
    return str(out)


def _read(root, rel):
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return f.read()


def test_copy_replaces_selected_regions_only(alternate):
    selected = set(IDS[::2])
    mine = markers.scan(alternate)
    assert list(mine) == IDS  # the markers stay in the copy
    for ex_id, e in mine.items():
        for part, ref in zip(e.parts, CAT[ex_id].parts):
            body = markers.region_body(_read(alternate, part.path), part)
            if ex_id in selected:
                assert len(body) == 1 and body[0].startswith("raise NotImplementedError(")
                assert e.statement in ast.literal_eval(body[0][len("raise NotImplementedError("):-1])
            else:
                assert body == markers.region_body(_read(make.package_root(), ref.path), ref)
    tests = sorted(os.listdir(os.path.join(alternate, "tests")))
    assert tests == sorted(list(make.HELPERS) + [make.test_module(i) + ".py" for i in selected])
    assert not any("__pycache__" in d for d, _, _ in os.walk(alternate))
    m = json.loads(_read(alternate, make.MANIFEST))
    assert m["selected"] == IDS[::2] and [e["id"] for e in m["exercises"]] == IDS
    readme = _read(alternate, "README.md")
    assert all(f"| {i} |" in readme for i in selected) and not any(f"| {i} |" in readme for i in IDS[1::2])
    assert os.path.isfile(os.path.join(alternate, "pyproject.toml"))


def test_copy_imports_and_says_what_to_do(alternate):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import minipeft; from minipeft.methods.vpt import vpt_bound\n"
            "print(minipeft.__file__)\ntry:\n    vpt_bound(minipeft.Config())\nexcept NotImplementedError as e:\n"
            "    print('NotImplementedError:', e)\nelse:\n    print('solved')")
    out = subprocess.run([sys.executable, "-I", "-c", code, alternate], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert out.splitlines()[0].startswith(os.path.join(alternate, "minipeft"))
    if "vpt-shallow" in IDS[::2]:
        assert "NotImplementedError: exercise vpt-shallow [1 pt" in out and "sqrt(6 /" in out
    else:
        assert "solved" in out


def test_alternate_copy_scores_zero_on_selected_and_full_on_the_rest(alternate, tmp_path, capsys):
    out = tmp_path / "grade.json"
    assert main(["exercises", "grade", alternate, "--json", str(out), "--jobs", "2"]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {r["id"]: r for r in report["exercises"]}
    assert list(rows) == IDS
    for i in IDS:
        r = rows[i]
        if i in IDS[::2]:
            assert r["selected"] and r["points"] == 0 and "NotImplementedError" in r["reason"], r
        else:
            assert not r["selected"] and r["passed"] and r["points"] == CAT[i].points, r
    assert report["total"] == sum(CAT[i].points for i in IDS[1::2])
    assert report["max_total"] == sum(e.points for e in CAT.values())
    assert f"**{report['total']}/{report['max_total']}**" in table


def _mutated(src, tmp_path, name, mutant):
    import shutil

    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    make.write_bodies(dst, mutant.exercise, mutant.bodies)
    return dst


def test_a_classic_mistake_fails_its_exercise(reference_copy, tmp_path):
    m = mutants.MUTANTS["lora-merge-AB"]
    copy = _mutated(reference_copy, tmp_path, "mutant", m)
    (row,) = grade.grade(copy, only=["lora-merge"])["exercises"]
    assert not row["passed"] and row["points"] == 0
    assert "hint: ΔW = (α/r) B A" in row["reason"], row["reason"]


def test_limits_stop_loops_and_allocations_and_cost_only_that_exercise(reference_copy, tmp_path):
    copy = _mutated(reference_copy, tmp_path, "limits", mutants.LIMITS["loop-forever"])
    make.write_bodies(copy, "lora-merge", mutants.LIMITS["allocate-forever"].bodies)
    report = grade.grade(copy, only=["bitfit", "lora-forward"], time_limit=8, jobs=2)
    rows = {r["id"]: r for r in report["exercises"]}
    assert "time limit exceeded (8 s)" in rows["bitfit"]["reason"]
    assert rows["lora-forward"]["passed"] and report["total"] == CAT["lora-forward"].points
    # filling 512 MiB page by page takes seconds on a loaded machine: a generous clock, a tight memory limit
    (row,) = grade.grade(copy, only=["lora-merge"], time_limit=120, memory_mb=512)["exercises"]
    assert not row["passed"] and "MemoryError" in row["reason"], row


# ------------------------------------------------------------------- bad input
def test_make_refuses_unknown_ids_and_non_empty_folders(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--only: unknown exercise id\(s\) \['lora-magic'\]; allowed: attention"):
        make.make_copy(str(tmp_path / "x"), only=["lora-magic"])
    assert not (tmp_path / "x").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty; .* --force"):
        make.make_copy(str(busy), only=["bitfit"])
    with pytest.raises(ValueError, match="is not a student copy .* nothing there is deleted"):
        make.make_copy(str(busy), only=["bitfit"], force=True)
    assert (busy / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        make.make_copy(str(tmp_path / "file"))
    assert main(["exercises", "make", "--out", str(busy)]) == 2
    assert "minipeft: error: --out:" in capsys.readouterr().err
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".minipeft-")]  # no temporary folder left


def test_force_replaces_an_earlier_copy(tmp_path):
    out = tmp_path / "copy"
    make.make_copy(str(out), only=["bitfit"])
    make.make_copy(str(out), only=["lora-merge"], force=True)
    assert json.loads((out / make.MANIFEST).read_text())["selected"] == ["lora-merge"]
    assert main(["exercises", "make", "--out", str(out), "--force", "--only"]) == 0  # no id: a reference copy
    assert json.loads((out / make.MANIFEST).read_text())["selected"] == []
    assert sorted(os.listdir(tmp_path)) == ["copy"]


def test_grade_refuses_folders_that_are_not_copies_of_this_version(tmp_path, reference_copy):
    with pytest.raises(ValueError, match="no such folder"):
        grade.grade(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="not a student copy"):
        grade.grade(str(tmp_path))
    import shutil

    other = tmp_path / "other"
    shutil.copytree(reference_copy, other)
    m = json.loads((other / make.MANIFEST).read_text())
    (other / make.MANIFEST).write_text(json.dumps({**m, "minipeft_version": "0.0.1"}))
    with pytest.raises(ValueError, match=r"a student copy of minipeft '0.0.1', but this grader is minipeft"):
        grade.grade(str(other))
    (other / make.MANIFEST).write_text(json.dumps({**m, "exercises": m["exercises"][:3]}))
    with pytest.raises(ValueError, match="differ from this grader's"):
        grade.grade(str(other))
    (other / make.MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="not a readable manifest"):
        grade.grade(str(other))
    with pytest.raises(ValueError, match="--time-limit"):
        grade.grade(reference_copy, time_limit=0)


def test_list_prints_every_exercise(capsys):
    assert main(["exercises", "list"]) == 0
    out = capsys.readouterr().out
    for e in CAT.values():
        assert f"| {e.id} | {e.points} | {e.section} |" in out
    assert main(["exercises", "list", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == IDS


# ------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_every_mutant_fails_exactly_its_exercise(reference_copy, tmp_path):
    for name, m in mutants.MUTANTS.items():
        report = grade.grade(_mutated(reference_copy, tmp_path, name, m), jobs=2)
        failed = [r["id"] for r in report["exercises"] if not r["passed"]]
        assert failed == [m.exercise], (name, failed)


@pytest.mark.slow
def test_fresh_copy_scores_zero_and_each_reference_body_passes_alone(tmp_path):
    out = str(tmp_path / "all")
    make.make_copy(out)
    report = grade.grade(out, jobs=2)
    assert report["total"] == 0 and all(r["selected"] and not r["passed"] for r in report["exercises"])
    for i in IDS:  # put one reference body back: that exercise passes
        make.write_bodies(out, i, make.reference_bodies(i))
        (row,) = grade.grade(out, only=[i])["exercises"]
        assert row["passed"], (i, row["reason"])
        make.write_bodies(out, i, {k: [markers.not_implemented_line(CAT[i], "")] for k in range(len(CAT[i].parts))})
    make.write_bodies(out, "vpt-deep", make.reference_bodies("vpt-deep"))  # ... and exactly that one
    report = grade.grade(out, jobs=2)
    assert [r["id"] for r in report["exercises"] if r["passed"]] == ["vpt-deep"]


@pytest.mark.slow
def test_copy_installs_with_pip(tmp_path):
    import sysconfig

    out = str(tmp_path / "copy")
    make.make_copy(out, only=["lora-merge"])
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(purelib, "shared.pth"), "w") as f:  # numpy, autograd, pip, setuptools of this venv
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the install may find minipeft
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-e", out],
                   check=True, timeout=600, cwd=str(tmp_path), env=env)
    where = subprocess.run([py, "-c", "import minipeft; print(minipeft.__file__)"], capture_output=True, text=True,
                           check=True, cwd=str(tmp_path), env=env).stdout.strip()
    assert where == os.path.join(out, "minipeft", "__init__.py")


@pytest.mark.slow
def test_a_chapter_runs_on_the_copy_once_its_exercise_is_solved(tmp_path):
    out = str(tmp_path / "copy")
    make.make_copy(out, only=["lora-forward"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=out, MPLBACKEND="Agg", MINIPEFT_PROGRESS="0", CHAPTER_FIG_DIR=str(tmp_path / "figs"),
               OPENBLAS_NUM_THREADS="1")
    chapter = os.path.join(out, "chapters", "05_lora.py")
    run = subprocess.run([sys.executable, chapter], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode != 0 and "NotImplementedError: exercise lora-forward [2 pts]" in run.stderr, run.stderr[-800:]
    make.write_bodies(out, "lora-forward", make.reference_bodies("lora-forward"))
    run = subprocess.run([sys.executable, chapter], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stderr[-800:]

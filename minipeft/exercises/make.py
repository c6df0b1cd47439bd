"""``minipeft exercises make``: a student copy of the package.

The copy holds the whole package, each selected exercise's regions replaced by a
``raise NotImplementedError(<statement>)`` (the marker lines stay), the graded tests of
the selected exercises in ``tests/``, the chapters, a ``pyproject.toml`` (so ``pip install
-e DIR`` works) and a short README; ``minipeft-exercises.json`` (the manifest) records
the minipeft version and the exercises. The copy is built in a temporary folder beside
DIR and renamed into place: an interrupted make leaves nothing half-written.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from . import markers

MANIFEST = "minipeft-exercises.json"
KIND = "minipeft-exercises"
FORMAT = 1
HELPERS = ("exercise_helpers.py",)


def package_root() -> str:
    """The folder that holds the running ``minipeft`` package (its parent)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def graded_dir() -> str:
    """The graded tests, one ``test_<id>.py`` per exercise (``-`` becomes ``_``)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "graded")


def test_module(ex_id: str) -> str:
    """Module name of an exercise's graded tests: test_<id with '_' for '-'>."""
    return "test_" + ex_id.replace("-", "_")


def catalog(root: str | None = None) -> dict:
    """{id: Exercise} of the reference package (markers.scan), each with its graded tests."""
    cat = markers.scan(root or package_root())
    for ex_id in cat:
        if not os.path.isfile(os.path.join(graded_dir(), test_module(ex_id) + ".py")):
            raise ValueError(f"exercise {ex_id!r} has no graded tests: expected "
                             f"{os.path.join(graded_dir(), test_module(ex_id) + '.py')}")
    return cat


def check_selection(only, cat) -> list:
    """The selected ids, in catalog order; ValueError naming unknown ids and the allowed ones."""
    if only is None:
        return list(cat)
    only = [only] if isinstance(only, str) else list(only)
    bad = [i for i in only if i not in cat]
    if bad:
        raise ValueError(f"--only: unknown exercise id(s) {bad}; allowed: {', '.join(cat)}")
    return [i for i in cat if i in only]


def version() -> str:
    """The running minipeft's version (minipeft/version.py)."""
    from ..version import __version__

    return __version__


def _check_out(out: str, force: bool) -> bool:
    """Whether ``out`` exists (and may be replaced); ValueError when it must not be touched."""
    if not os.path.lexists(out):
        return False
    if not os.path.isdir(out) or os.path.islink(out):
        raise ValueError(f"--out: {out} exists and is not a folder")
    if not os.listdir(out):
        return True
    if not force:
        raise ValueError(f"--out: {out} exists and is not empty; choose a new folder, or pass --force to replace "
                         f"a student copy made earlier")
    if not os.path.isfile(os.path.join(out, MANIFEST)):
        raise ValueError(f"--out: {out} is not empty and is not a student copy (no {MANIFEST}); --force only "
                         f"replaces a student copy, so nothing there is deleted")
    return True


def _student_readme(cat, selected, ver) -> str:
    lines = [f"# minipeft coursework (minipeft {ver})", "",
             "This folder is a complete copy of minipeft in which some function bodies are yours to write. Each",
             "one raises `NotImplementedError` with its task, between the lines `# exercise ID ...` and",
             "`# end exercise`; write the body there (keep the two marker lines). The docstring above it and",
             "the cited section of the notes' `equations.md` give the equation and the shapes.", "",
             "```bash", "python -m pip install -e .          # or run with PYTHONPATH=$PWD",
             "python -m pytest tests/              # every exercise's tests; one: python -m pytest tests/test_ID.py",
             "```", "",
             "A test's failure message says what it checked and gives a hint. Your instructor grades with",
             "`minipeft exercises grade DIR` (the same tests, each exercise in its own process with a time and",
             "memory limit; an exercise's points are all or nothing).", "",
             "| exercise | points | equations.md section | where | task |", "|---|---:|---|---|---|"]
    for i in selected:
        ex = cat[i]
        where = ", ".join(f"`{r.path}:{r.begin}`" for r in ex.parts)
        lines.append(f"| {i} | {ex.points} | {ex.section} | {where} | {ex.statement.replace('|', '/')} |")
    lines += ["", "Chapters (`chapters/`) run once the exercises they use are solved."]
    return "\n".join(lines) + "\n"


_MIN_PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "minipeft"
version = "{version}"
requires-python = ">=3.10"
dependencies = ["numpy>=1.24,<3", "autograd==1.9.*"]

[tool.setuptools.packages.find]
include = ["minipeft*"]
"""


def make_copy(out: str, only=None, force: bool = False, root: str | None = None) -> dict:
    """Write a student copy to ``out`` with the exercises ``only`` (default: all) to do.

    Returns the manifest. ValueError for an unknown id, or an ``out`` that exists, is not
    empty and is not (or ``force`` is not given for) an earlier student copy.
    """
    root = root or package_root()
    cat = catalog(root)
    selected = check_selection(only, cat)
    out = os.path.abspath(out)
    replace = _check_out(out, force)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".minipeft-copy-", dir=parent)
    try:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
        shutil.copytree(os.path.join(root, "minipeft"), os.path.join(tmp, "minipeft"), ignore=ignore)
        if os.path.isdir(os.path.join(root, "chapters")):
            shutil.copytree(os.path.join(root, "chapters"), os.path.join(tmp, "chapters"), ignore=ignore)
        ver = version()
        pyproject = os.path.join(root, "pyproject.toml")
        if os.path.isfile(pyproject):
            shutil.copyfile(pyproject, os.path.join(tmp, "pyproject.toml"))
        else:
            with open(os.path.join(tmp, "pyproject.toml"), "w", encoding="utf-8") as f:
                f.write(_MIN_PYPROJECT.format(version=ver))
        by_file = {}
        for i in selected:
            for r in cat[i].parts:
                by_file.setdefault(r.path, []).append(r)
        for rel, regions in by_file.items():
            path = os.path.join(tmp, rel)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            bodies = [[markers.not_implemented_line(cat[r.id], "")] for r in regions]
            new = markers.replace_regions(text, regions, bodies)
            compile(new, rel, "exec")  # a region that cannot be cut out is a marker bug: fail here, loudly
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
        tests = os.path.join(tmp, "tests")
        os.makedirs(tests)
        for name in HELPERS + tuple(test_module(i) + ".py" for i in selected):
            shutil.copyfile(os.path.join(graded_dir(), name), os.path.join(tests, name))
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(_student_readme(cat, selected, ver))
        manifest = {"kind": KIND, "format": FORMAT, "minipeft_version": ver, "selected": selected,
                    "exercises": [cat[i].record() for i in cat]}
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
        os.chmod(tmp, 0o755)
        if replace:
            old = tempfile.mkdtemp(prefix=".minipeft-old-", dir=parent)
            os.replace(out, os.path.join(old, "copy"))
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def write_bodies(copy_dir: str, ex_id: str, bodies: dict) -> None:
    """Replace the bodies of exercise ``ex_id``'s parts in a copy: {part index: [lines]}
    (lines without the region's indentation). Used to apply a mutant or restore a body."""
    cat = markers.scan(copy_dir)
    if ex_id not in cat:
        raise ValueError(f"exercise id {ex_id!r} is not marked in {copy_dir}; known: {', '.join(cat)}")
    parts = cat[ex_id].parts
    bad = [i for i in bodies if not 0 <= i < len(parts)]
    if bad:
        raise ValueError(f"exercise {ex_id!r} has {len(parts)} part(s); no part {bad}")
    by_file = {}
    for i, body in bodies.items():
        by_file.setdefault(parts[i].path, []).append((parts[i], body))
    for rel, items in by_file.items():
        path = os.path.join(copy_dir, rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = markers.replace_regions(text, [r for r, _ in items], [b for _, b in items])
        compile(new, rel, "exec")
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)


def reference_bodies(ex_id: str, root: str | None = None) -> dict:
    """{part index: body lines} of exercise ``ex_id`` in the reference package."""
    root = root or package_root()
    out = {}
    for i, r in enumerate(markers.scan(root)[ex_id].parts):
        with open(os.path.join(root, r.path), encoding="utf-8") as f:
            out[i] = markers.region_body(f.read(), r)
    return out

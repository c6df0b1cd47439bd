"""``minipeft exercises grade``: the graded tests against a student copy, one process each.

Each exercise runs in a fresh ``python -I`` process (``_runner.py``) that imports the
student's ``minipeft`` from the copy and never this one; the grader itself never imports
the student's code. Limits per exercise: a wall-clock ``time_limit`` (the process group
is killed when it passes), CPU time, address space ``memory_mb`` (a huge allocation is a
MemoryError in that process) and 64 MiB of written files; one BLAS thread. A crash,
loop or allocation costs that exercise only. The tests run are the grader's own (this
package's ``graded/``), so a student who edits the copy's tests changes nothing; hence a
copy must come from the same minipeft version as the grader.

An exercise scores its points when every one of its tests passes, else 0. This is a
grading harness, not a security sandbox: the student's code runs with your user's rights.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from . import make

#: the largest manifest or result file read (they are small JSON records)
MAX_RECORD_BYTES = 2 ** 20
DEFAULT_TIME_LIMIT = 60.0
DEFAULT_MEMORY_MB = 2048


def read_manifest(copy_dir: str) -> dict:
    """The copy's manifest, checked: a student copy made by this minipeft version.

    ValueError naming the folder when it is not a student copy or comes from another version.
    """
    if not os.path.isdir(copy_dir):
        raise ValueError(f"{copy_dir}: no such folder (grade a folder written by `minipeft exercises make`)")
    path = os.path.join(copy_dir, make.MANIFEST)
    if not os.path.isfile(path) or not os.path.isdir(os.path.join(copy_dir, "minipeft")):
        raise ValueError(f"{copy_dir}: not a student copy (no {make.MANIFEST} and minipeft/ package); make one "
                         f"with `minipeft exercises make --out DIR`")
    if os.path.getsize(path) > MAX_RECORD_BYTES:
        raise ValueError(f"{path}: larger than {MAX_RECORD_BYTES} bytes, not a manifest of a student copy")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("kind") != make.KIND:
        raise ValueError(f"{path}: not a minipeft student-copy manifest (kind must be {make.KIND!r})")
    if m.get("format") != make.FORMAT:
        raise ValueError(f"{path}: manifest format {m.get('format')!r}; this grader reads format {make.FORMAT}")
    ver = make.version()
    if m.get("minipeft_version") != ver:
        raise ValueError(f"{copy_dir}: a student copy of minipeft {m.get('minipeft_version')!r}, but this grader "
                         f"is minipeft {ver!r}: its tests may not fit that copy; grade with minipeft "
                         f"{m.get('minipeft_version')!r} (or make a new copy)")
    if not isinstance(m.get("selected"), list) or not isinstance(m.get("exercises"), list):
        raise ValueError(f"{path}: manifest lacks the lists 'selected' and 'exercises'")
    return m


def _read_result(path):
    if not os.path.isfile(path) or os.path.getsize(path) > MAX_RECORD_BYTES:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return r if isinstance(r, dict) and isinstance(r.get("tests"), list) else None


def _tail(path, n=1500):
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "MINIPEFT_PROGRESS": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"})
    return env


def run_exercise(copy_dir, ex_id, work, time_limit, memory_mb) -> dict:
    """Run exercise ``ex_id``'s graded tests (copied into ``work``) in a child process."""
    module = make.test_module(ex_id)
    result = os.path.join(work, f"{module}.result.json")
    log = os.path.join(work, f"{module}.log")
    cpu = int(time_limit) + 5
    # -I ignores PYTHON* variables, so bytecode is steered by flags: -B writes none, and a fresh
    # pycache_prefix means no .pyc in the copy (a student's, or one a second older) is ever read
    pycache = os.path.join(work, f"{module}.pycache")
    cmd = [sys.executable, "-I", "-B", "-X", f"pycache_prefix={pycache}", os.path.join(work, "_runner.py"),
           os.path.abspath(copy_dir), work, module, result, str(int(memory_mb)), str(cpu)]
    reason = None
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=work, env=_env(), start_new_session=True)
        try:
            rc = proc.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, reason = None, f"time limit exceeded ({time_limit:g} s)"
    rec = _read_result(result)
    tests = rec["tests"] if rec else []
    if reason is None:
        if rec is not None and rec.get("error"):
            reason = rec["error"]
        elif rc is not None and rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = f"signal {-rc}"
            reason = f"the test process was killed by {sig}" + (" (CPU time limit)" if sig == "SIGXCPU" else "")
        elif rec is None or not rec.get("done"):
            reason = f"the test process stopped (exit status {rc}) before finishing: {_tail(log)[-300:]!r}"
        elif not tests:
            reason = "no graded tests ran"
        else:
            failed = [t for t in tests if not t.get("passed")]
            reason = f"{failed[0]['name']}: {failed[0]['message']}" if failed else None
    return {"passed": reason is None, "reason": reason, "tests": tests, "returncode": rc}


def grade(copy_dir: str, time_limit: float = DEFAULT_TIME_LIMIT, memory_mb: int = DEFAULT_MEMORY_MB,
          jobs: int = 1, only=None) -> dict:
    """Grade a student copy; returns the report (``format_table`` prints it).

    ``only``: grade just these exercise ids (default: all). Each exercise gets
    ``time_limit`` seconds of wall clock and ``memory_mb`` MiB of address space;
    ``jobs`` exercises run at once.
    """
    if not (isinstance(time_limit, (int, float)) and 0 < time_limit <= 3600):
        raise ValueError(f"--time-limit must be a number of seconds in (0, 3600], got {time_limit!r}")
    if not (isinstance(memory_mb, int) and 256 <= memory_mb <= 2 ** 20):
        raise ValueError(f"--memory-limit must be an int of MiB in [256, {2 ** 20}], got {memory_mb!r}")
    if not (isinstance(jobs, int) and 1 <= jobs <= 64):
        raise ValueError(f"--jobs must be an int in [1, 64], got {jobs!r}")
    manifest = read_manifest(copy_dir)
    cat = make.catalog()
    theirs = [e.get("id") for e in manifest["exercises"] if isinstance(e, dict)]
    if theirs != list(cat):
        raise ValueError(f"{copy_dir}: its exercises {theirs} differ from this grader's {list(cat)}: the copy was "
                         f"made from a different minipeft source; grade it with that one")
    ids = make.check_selection(only, cat)
    selected = set(manifest["selected"])
    work = tempfile.mkdtemp(prefix="minipeft-grade-")
    try:
        src = make.graded_dir()
        for name in make.HELPERS + tuple(make.test_module(i) + ".py" for i in ids):
            shutil.copyfile(os.path.join(src, name), os.path.join(work, name))
        shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_runner.py"),
                        os.path.join(work, "_runner.py"))
        with ThreadPoolExecutor(jobs) as pool:
            runs = list(pool.map(lambda i: run_exercise(copy_dir, i, work, time_limit, memory_mb), ids))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for i, r in zip(ids, runs):
        ex = cat[i]
        rows.append({"id": i, "section": ex.section, "max_points": ex.points,
                     "points": ex.points if r["passed"] else 0, "selected": i in selected, **r})
    return {"kind": "minipeft-grade", "format": 1, "copy": os.path.abspath(copy_dir),
            "minipeft_version": manifest["minipeft_version"], "time_limit_s": time_limit, "memory_mb": memory_mb,
            "total": sum(r["points"] for r in rows), "max_total": sum(r["max_points"] for r in rows),
            "exercises": rows}


def format_table(report: dict, width: int = 70) -> str:
    """The per-exercise table: exercise, selected (to do) or not, tests passed, points, result."""
    lines = ["| exercise | to do | tests passed | points | result |", "|---|:---:|---:|---:|---|"]
    for r in report["exercises"]:
        n_ok = sum(1 for t in r["tests"] if t.get("passed"))
        res = "passed" if r["passed"] else "failed: " + str(r["reason"]).replace("|", "/").replace("\n", " ")
        if len(res) > width:
            res = res[:width - 1] + "…"
        lines.append(f"| {r['id']} | {'yes' if r['selected'] else 'no'} | {n_ok}/{len(r['tests'])} | "
                     f"{r['points']}/{r['max_points']} | {res} |")
    lines.append(f"| **total** | | | **{report['total']}/{report['max_total']}** | |")
    return "\n".join(lines)


def write_json(path: str, report: dict) -> None:
    """Write the report as JSON, atomically (a temporary file beside ``path``, then renamed)."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".grade-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

"""Run one exercise's graded tests against a student copy, in this (child) process.

    python -I _runner.py STUDENT_ROOT TESTS_DIR MODULE RESULT_FILE MEMORY_MB CPU_SECONDS

Started by ``grade.py`` with ``-I`` (no PYTHONPATH, no script folder on sys.path): this
file imports nothing of the reference package, only the student's ``minipeft`` from
STUDENT_ROOT. Limits are set before anything heavy loads: address space MEMORY_MB
(a huge allocation raises MemoryError), CPU time CPU_SECONDS (the grader's wall clock
limit is the primary one), files written at most 64 MiB. Every ``test_*`` function of
MODULE is called without arguments, in file order; after each, RESULT_FILE gets the JSON
record so far (written to a temporary name, then renamed).
"""
import json
import os
import resource
import sys
import time
import traceback


def _limit(kind, value):
    soft, hard = resource.getrlimit(kind)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, hard))


def _write(path, record):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def _message(e):
    """A short failure message: the exception, and where in the student's code it came from."""
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, AssertionError):
        return text
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/minipeft/" in f.filename.replace(os.sep, "/")]
    if frames:
        f = frames[-1]
        text += f"  (at {f.filename.replace(os.sep, '/').split('/minipeft/', 1)[-1]}:{f.lineno})"
    return text[:2000]


def main(root, tests_dir, module, result_file, memory_mb, cpu_s):
    _limit(resource.RLIMIT_AS, int(memory_mb) * 2 ** 20)
    _limit(resource.RLIMIT_CPU, int(cpu_s))
    _limit(resource.RLIMIT_FSIZE, 64 * 2 ** 20)
    record = {"done": False, "error": None, "tests": []}
    sys.path[:0] = [root, tests_dir]
    try:
        import minipeft
        where = os.path.realpath(minipeft.__file__)
        if not where.startswith(os.path.realpath(root) + os.sep):
            raise ImportError(f"imported minipeft from {where}, not from the student copy {root}")
        mod = __import__(module)
    except BaseException as e:  # a student's import-time error costs this exercise only
        record["error"] = "import failed: " + _message(e)
        _write(result_file, record)
        return
    tests = [(name, fn) for name, fn in vars(mod).items() if name.startswith("test_") and callable(fn)]
    for name, fn in tests:
        t0 = time.perf_counter()
        try:
            fn()
            entry = {"name": name, "passed": True, "message": ""}
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            entry = {"name": name, "passed": False, "message": _message(e)}
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        record["tests"].append(entry)
        _write(result_file, record)
    record["done"] = True
    _write(result_file, record)


if __name__ == "__main__":
    main(*sys.argv[1:])

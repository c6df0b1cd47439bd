"""The ``minipeft exercises`` subcommands: make, grade, list (wired into minipeft/cli.py)."""
from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    """Add ``exercises`` (with make, grade, list) to the CLI's subparsers."""
    from .grade import DEFAULT_MEMORY_MB, DEFAULT_TIME_LIMIT

    p = sub.add_parser("exercises", help="coursework: student copies with exercises, and their autograder",
                       description="Exercises are regions of the reference code marked '# exercise ID ...' / "
                                   "'# end exercise'; a student copy replaces them by NotImplementedError.")
    ex = p.add_subparsers(dest="exercises_command", required=True)
    s = ex.add_parser("make", help="write a student copy of the package with exercises to do")
    s.add_argument("--out", required=True, help="folder to write (must not exist, or be empty)")
    s.add_argument("--only", nargs="*", default=None, metavar="ID",
                   help="exercise ids to set (default: all; `minipeft exercises list` shows them; "
                        "--only with no id: none, a reference copy)")
    s.add_argument("--force", action="store_true", help="replace a student copy made earlier at --out")
    s = ex.add_parser("grade", help="grade a student copy: each exercise's tests in its own limited process")
    s.add_argument("dir", help="the student copy (written by `minipeft exercises make`)")
    s.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON to FILE")
    s.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                   help=f"wall-clock seconds per exercise (default: {DEFAULT_TIME_LIMIT:g})")
    s.add_argument("--memory-limit", type=int, default=DEFAULT_MEMORY_MB,
                   help=f"address space per exercise in MiB (default: {DEFAULT_MEMORY_MB})")
    s.add_argument("--jobs", type=int, default=1, help="exercises graded at once (default: 1)")
    s = ex.add_parser("list", help="the exercises: id, points, equations.md section, statement, where")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    """Run ``minipeft exercises ...``; returns the exit status (ValueError propagates to cli.main)."""
    from . import grade, make

    if args.exercises_command == "list":
        cat = make.catalog()
        if args.json:
            print(json.dumps([e.record() for e in cat.values()], indent=1, ensure_ascii=False))
            return 0
        print("| id | points | equations.md section | statement | where |\n|---|---:|---|---|---|")
        for e in cat.values():
            where = ", ".join(f"{r.path}:{r.begin}" for r in e.parts)
            print(f"| {e.id} | {e.points} | {e.section} | {e.statement.replace('|', '/')} | {where} |")
        print(f"\n{len(cat)} exercises, {sum(e.points for e in cat.values())} points")
        return 0
    if args.exercises_command == "make":
        m = make.make_copy(args.out, only=args.only, force=args.force)
        print(f"student copy written: {args.out} (minipeft {m['minipeft_version']}); exercises to do: "
              f"{', '.join(m['selected']) or 'none'}")
        print(f"students: cd {args.out} && python -m pytest tests/   instructors: minipeft exercises grade {args.out}")
        return 0
    report = grade.grade(args.dir, time_limit=args.time_limit, memory_mb=args.memory_limit, jobs=args.jobs)
    print(grade.format_table(report))
    if args.json:
        grade.write_json(args.json, report)
        print(f"report written: {args.json}", file=sys.stderr)
    return 0

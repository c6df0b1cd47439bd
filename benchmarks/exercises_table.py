"""Grading tables of the coursework: a fresh student copy, the reference, and every mutant.

    python benchmarks/exercises_table.py [--out benchmarks/exercises_results.md] [--jobs 2]

Makes (in a temporary folder) a copy with every exercise to do and one with none (the
reference), grades both in full with ``minipeft.exercises.grade``, then, for each classic
mistake of ``minipeft.exercises.mutants.MUTANTS``, a reference copy with that one body
replaced, graded in full: the table lists which exercises failed (it should be exactly the
mutant's) and the grader's reason. Writes the markdown to --out and prints it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from minipeft.exercises import grade, make, mutants


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "exercises_results.md"))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="minipeft-exercises-table-")
    try:
        fresh, ref = os.path.join(work, "fresh"), os.path.join(work, "reference")
        make.make_copy(fresh)
        make.make_copy(ref, only=[])
        parts = ["# Coursework grading tables (benchmarks/exercises_table.py)", "",
                 "Command for each: `minipeft exercises grade DIR` on the copy described.", "",
                 "## A fresh student copy (`minipeft exercises make --out DIR`, every exercise to do)", "",
                 grade.format_table(grade.grade(fresh, jobs=args.jobs)), "",
                 "## The reference (`minipeft exercises make --out DIR --only` with no id: nothing to do)", "",
                 grade.format_table(grade.grade(ref, jobs=args.jobs)), "",
                 "## Each classic mistake applied to the reference copy (`mutants.MUTANTS`)", "",
                 "| mutant | exercise | mistake | exercises failed | total | grader's reason |",
                 "|---|---|---|---|---:|---|"]
        for name, m in mutants.MUTANTS.items():
            d = os.path.join(work, name)
            shutil.copytree(ref, d)
            make.write_bodies(d, m.exercise, m.bodies)
            rep = grade.grade(d, jobs=args.jobs)
            failed = [r for r in rep["exercises"] if not r["passed"]]
            reason = (failed[0]["reason"] if failed else "").split("\n")[0].replace("|", "/")[:110]
            parts.append(f"| {name} | {m.exercise} | {m.mistake} | {', '.join(r['id'] for r in failed) or 'none'} | "
                         f"{rep['total']}/{rep['max_total']} | {reason} |")
            shutil.rmtree(d)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(parts) + "\n"
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()

"""The fuzz suite's table: category -> cases tried -> clear errors / correct results / other.

Runs tests/test_fuzz.py and tests/test_faults.py with $MINIPEFT_FUZZ_TABLE set, then prints
the markdown table from what the suite recorded (and any "other" case in full).

    python benchmarks/fuzz_table.py            # from the repository root
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        table = os.path.join(d, "fuzz.json")
        env = {**os.environ, "MINIPEFT_FUZZ_TABLE": table, "MINIPEFT_PROGRESS": "0",
               "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
                              "tests/test_fuzz.py", "tests/test_faults.py"], cwd=ROOT, env=env)
        with open(table) as fh:
            data = json.load(fh)
    others = data.pop("_others", [])
    lines = ["| category | cases tried | clear errors | correct results | anything else |", "|---|---:|---:|---:|---:|"]
    total = {"clear error": 0, "correct": 0, "other": 0}
    for cat in sorted(data):
        row = data[cat]
        for k in total:
            total[k] += row.get(k, 0)
        lines.append(f"| {cat} | {sum(row.values())} | {row.get('clear error', 0)} | {row.get('correct', 0)} "
                     f"| {row.get('other', 0)} |")
    lines.append(f"| **all** | {sum(total.values())} | {total['clear error']} | {total['correct']} "
                 f"| {total['other']} |")
    lines += [f"OTHER [{cat}] {info}" for cat, info in others]
    text = "\n".join(lines)
    print("\n" + text)
    with open(os.path.join(ROOT, "benchmarks", "fuzz_results.md"), "w") as fh:
        fh.write(f"# Fuzz suite outcomes\n\nWritten by `python benchmarks/fuzz_table.py` (pytest exit code {rc}): "
                 f"tests/test_fuzz.py and the classified cases of tests/test_faults.py.\n\n{text}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())

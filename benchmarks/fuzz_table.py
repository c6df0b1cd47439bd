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
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/test_fuzz.py", "tests/test_faults.py"], cwd=ROOT, env=env)
        with open(table) as fh:
            data = json.load(fh)
    others = data.pop("_others", [])
    print("\n| category | cases tried | clear errors | correct results | anything else |")
    print("|---|---:|---:|---:|---:|")
    total = {"clear error": 0, "correct": 0, "other": 0}
    for cat in sorted(data):
        row = data[cat]
        for k in total:
            total[k] += row.get(k, 0)
        print(f"| {cat} | {sum(row.values())} | {row.get('clear error', 0)} | {row.get('correct', 0)} "
              f"| {row.get('other', 0)} |")
    print(f"| **all** | {sum(total.values())} | {total['clear error']} | {total['correct']} | {total['other']} |")
    for cat, info in others:
        print(f"OTHER [{cat}] {info}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

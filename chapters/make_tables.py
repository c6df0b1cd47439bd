"""Generate the results tables of chapters/README.md and the tour table of README.md.

    python chapters/make_tables.py            # rewrite both, between their marker comments
    python chapters/make_tables.py --check    # exit 1 if either is out of date

Reads every chapters/results/NN_*.json (minipeft/verdict.py's SCHEMA; quick-mode files
``*.quick.json`` are skipped), checks each (every verdict recomputed from its per-seed
values) and writes tables between ``<!-- BEGIN ... -->`` / ``<!-- END ... -->`` markers. No
number in those tables is typed by hand: each comes from a results file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minipeft.verdict import read_results  # noqa: E402

RESULTS = ROOT / "chapters" / "results"
CHAPTERS_README = ROOT / "chapters" / "README.md"
README = ROOT / "README.md"
MARK = {"chapters": ("<!-- BEGIN chapter results (python chapters/make_tables.py; do not edit) -->",
                     "<!-- END chapter results -->"),
        "tour": ("<!-- BEGIN tour table (python chapters/make_tables.py; do not edit) -->", "<!-- END tour table -->")}
TOUR_CHAPTER = "07_summary"


def load_all(folder: Path = RESULTS) -> list:
    """Every full-budget results file in ``folder``, checked, in chapter order."""
    return [read_results(p) for p in sorted(folder.glob("[0-9][0-9]_*.json")) if not p.name.endswith(".quick.json")]


def _ci(ci, fmt="{:+.3f}"):
    return f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _blas(env):
    libs = env.get("blas") or []
    return ", ".join(f"{b.get('internal_api')} {b.get('version')} ×{b.get('num_threads')}" for b in libs) or "—"


def _code(r):
    """The commit that produced a results file (its "code", ``verdict.source_state``): short hash,
    and how many tracked files differed from it; "—" for a file that predates the field."""
    code = r.get("code") or {}
    if not code.get("commit"):
        return "—"
    dirty = code.get("dirty") or []
    return f"`{code['commit'][:10]}`" + (f" + {len(dirty)} uncommitted file(s)" if dirty else "")


def render_chapters(results: list) -> str:
    """The runs, verdicts, arms and checks tables (markdown) of all results files."""
    out = ["Runs (one line per results file):", "",
           "| chapter | date (UTC) | seeds | epochs | wall s (after setup) | CPU s | load (1 min) while it ran: "
           "mean (min–max) | BLAS (threads) | backbone id | code (git commit) |",
           "|---|---|---:|---:|---:|---:|---|---|---|---|"]
    for r in results:
        env, b, t = r["environment"], r["budget"], r.get("timing") or {}
        ld = t.get("load_1min")
        load = (f"{ld['mean']:.2f} ({ld['min']:.2f}–{ld['max']:.2f})" if ld else
                "—" if env.get("load_1min") is None else f"{env['load_1min']:.2f} (at the end only)")
        cpu = "—" if t.get("cpu_s") is None else f"{t['cpu_s']:.0f}"
        out.append(f"| {r['chapter']} | {env['date']} | {len(b['seeds'])} | {b.get('epochs', '—')} | "
                   f"{r['wall_s']:.0f} | {cpu} | {load} | {_blas(env)} | `{r['backbone']['id']}` | {_code(r)} |")
    out += ["", "Verdicts (Δ = A − B per seed; reproduced / refuted: the paired-t 95 % interval excludes 0 on the "
                "claimed / the opposite side; inconclusive: it contains 0, with the effect the run could detect at "
                "80 % power):", "",
            "| chapter | claim | A vs B | mean Δ | 95 % CI | n | verdict |", "|---|---|---|---:|---|---:|---|"]
    for r in results:
        for c in r["claims"]:
            v = c["verdict"] + (f" (detectable ≥ {c['mde']:.3f})" if c["verdict"] == "inconclusive" else "")
            out.append(f"| {r['chapter']} | {c['claim']} | {c['a']} vs {c['b']} | {c['mean']:+.3f} | "
                       f"{_ci(c['ci'])} | {c['n_seeds']} | {v} |")
    out += ["", "Arms (mean over seeds, t interval of the mean):", "",
            "| chapter | arm | metric | trainable | mean | 95 % CI | n |", "|---|---|---|---:|---:|---|---:|"]
    for r in results:
        for label, a in r["arms"].items():
            n = f"{a['trainable']:,}" if a.get("trainable") is not None else "—"
            out.append(f"| {r['chapter']} | {label} | {a['metric']} | {n} | {a['mean']:.3f} | "
                       f"{_ci(a['ci'], '{:.3f}')} | {a['n']} |")
    measured = [(r["chapter"], k, v) for r in results for k, v in r.get("measurements", {}).items()]
    if measured:
        keys = list(dict.fromkeys(q for _, _, v in measured for q in v))
        out += ["", "Measurements (deterministic: no seeds):", "", "| chapter | what | " + " | ".join(keys) + " |",
                "|---|---|" + "---:|" * len(keys)]
        for chapter, label, v in measured:
            cells = [f"{v[q]:,}" if isinstance(v.get(q), int) else (f"{v[q]:.3g}" if isinstance(v.get(q), float)
                     else str(v.get(q, "—"))) for q in keys]
            out.append(f"| {chapter} | {label} | " + " | ".join(cells) + " |")
    out += ["", "Exact checks (no statistics: they hold bit for bit or to the stated bound, or they fail):", "",
            "| chapter | check | measured | holds |", "|---|---|---|:---:|"]
    for r in results:
        for c in r["checks"]:
            out.append(f"| {r['chapter']} | {c['claim']} | {c['detail']} | {'yes' if c['holds'] else '**no**'} |")
    return "\n".join(out)


def render_tour(results: list) -> str:
    """The README's tour table: every method's arm of chapter 7 (kind "tour")."""
    tour = [r for r in results if r["chapter"] == TOUR_CHAPTER]
    if not tour:
        return "(no results file for chapter 7 yet: run `python chapters/07_summary.py`)"
    r = tour[0]
    arms = [(k, a) for k, a in r["arms"].items() if a.get("kind") == "tour"]
    out = [f"Chapter 7's tour, {r['environment']['date']}: {r['budget'].get('epochs')} epochs on digits, "
           f"{len(r['budget']['seeds'])} seeds, Adam, batch 64, head trainable (counted in trainable).", "",
           "| method | trainable | % of backbone | mean test acc | 95 % CI | merges into the weights |",
           "|---|---:|---:|---:|---|:---:|"]
    for label, a in arms:
        merge = "—" if a.get("mergeable") is None else ("yes" if a["mergeable"] else "no")
        out.append(f"| {label} | {a['trainable']:,} | {a['pct']:.2f} % | {a['mean']:.3f} | "
                   f"{_ci(a['ci'], '{:.3f}')} | {merge} |")
    return "\n".join(out)


def replace_between(text: str, begin: str, end: str, body: str, where: str = "text") -> str:
    """``text`` with what lies between the lines ``begin`` and ``end`` replaced by ``body``."""
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{where}: markers {begin!r} … {end!r} not found (in that order)")
    return text[:i + len(begin)] + "\n" + body + "\n" + text[j:]


def updated(results: list) -> dict:
    """{path: new text} for both READMEs."""
    ch = CHAPTERS_README.read_text(encoding="utf-8")
    rd = README.read_text(encoding="utf-8")
    return {CHAPTERS_README: replace_between(ch, *MARK["chapters"], render_chapters(results), str(CHAPTERS_README)),
            README: replace_between(rd, *MARK["tour"], render_tour(results), str(README))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a README is out of date; write nothing")
    args = ap.parse_args(argv)
    new = updated(load_all())
    stale = [p for p, t in new.items() if p.read_text(encoding="utf-8") != t]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(ROOT)} is out of date: run python chapters/make_tables.py", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(new[p], encoding="utf-8")
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The fuzz suite's bookkeeping: run a case, classify its outcome, tally it by category.

Outcomes: "clear error" (an exception of an expected type whose message is one line and
names what it must name: the file, the field or the flag), "correct" (no error, and the
result passes the case's own check), "other" (anything else: a crash, a traceback, a
wrong result, an error that names nothing). The suite fails on "other".

``TALLY`` is written to $MINIPEFT_FUZZ_TABLE (JSON) at the end of tests/test_fuzz.py;
``python benchmarks/fuzz_table.py`` runs the suite and prints the table.
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

OUTCOMES = ("clear error", "correct", "other")
TALLY: dict = defaultdict(Counter)
OTHERS: list = []

CLEAR_TYPES = (ValueError, TypeError, FileNotFoundError)


class Reached(Exception):
    """Raised by a stand-in for the expensive step a CLI case would reach (loading the
    backbone): every check before it passed."""


def _clear_message(msg: str, names) -> bool:
    return bool(msg) and "\n" not in msg and "Traceback" not in msg and (not names or any(n in msg for n in names))


def classify(category: str, fn, *, correct=lambda result: True, names=(), errors=CLEAR_TYPES, detail=""):
    """Run ``fn()`` and record its outcome under ``category``; returns (outcome, info).

    names: strings of which a clear error's message must contain at least one.
    correct: check of the result when ``fn`` returns (True = a correct result).
    """
    try:
        result = fn()
    except errors as e:
        msg = str(e)
        outcome = "clear error" if _clear_message(msg, names) else "other"
        info = f"{type(e).__name__}: {msg}"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 — the point is to catch whatever escapes
        outcome, info = "other", f"unexpected {type(e).__name__}: {e}"
    else:
        try:
            ok = correct(result)
        except Exception as e:  # noqa: BLE001
            ok, info = False, f"check raised {type(e).__name__}: {e}"
        else:
            info = "returned"
        outcome = "correct" if ok else "other"
        if not ok and info == "returned":
            info = f"wrong result: {result!r:.300}"
    record(category, outcome, f"{detail}: {info}")
    return outcome, info


def record(category: str, outcome: str, info: str = "") -> None:
    """Tally one outcome (and keep the details of an "other")."""
    assert outcome in OUTCOMES, outcome
    TALLY[category][outcome] += 1
    log = os.environ.get("MINIPEFT_FUZZ_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{category} | {outcome} | {' '.join(info.split())[:300]}\n")
    if outcome == "other":
        OTHERS.append((category, info))


def write_table() -> None:
    """Write TALLY (everything this process recorded so far) to $MINIPEFT_FUZZ_TABLE when set."""
    path = os.environ.get("MINIPEFT_FUZZ_TABLE")
    if not path:
        return
    data = {cat: {o: counts.get(o, 0) for o in OUTCOMES} for cat, counts in TALLY.items()}
    data["_others"] = [list(x) for x in OTHERS]
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)

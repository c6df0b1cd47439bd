"""Claims decided over seeds: the paired comparison, the verdict rule, one line format.

A chapter trains two arms A and B (say prefix and prompt tuning at equal budget) with the
same seeds s = 1..n (a seed draws θ's init, the head's init and the data order, so seed s
of A and seed s of B differ only in the method: a *paired* design). For a metric x
(test accuracy) the per-seed differences and their mean are

    Δ_s = x_A(s) − x_B(s),   Δ̄ = (1/n) Σ_s Δ_s,   SE = sd(Δ) / sqrt(n)   (sd with n − 1)

and the interval is the **paired t** interval at 95 %:

    Δ̄ ± t_{0.975, n−1} · SE

The verdict for a claim "A > B" (direction ">"; "A < B" flips every sign):

- **reproduced**: the interval lies wholly on the claimed side of 0;
- **refuted**: it lies wholly on the opposite side;
- **inconclusive**: it contains 0. The line then gives the smallest effect the run could
  have detected: the mean difference that a paired t test at level 0.05 would find with
  80 % power given this run's spread, (t_{0.975, n−1} + t_{0.80, n−1}) · SE.

The interval says nothing about what the papers measured at their scale (ViT-B/16 or
billion-parameter language models); the chapters say so where a claim comes from them.

``format_verdict`` prints one fixed line per claim (``VERDICT_RE`` parses it back);
``format_check`` one line per exact check (a claim that holds bit for bit or fails, no
statistics needed). ``results_record``/``write_results`` gather what a chapter measured
into its results file (JSON, ``SCHEMA``), with the date, the BLAS libraries and their
thread counts (threadpoolctl), and the backbone's identity (``backbone_id``).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import tempfile

import numpy as onp

#: the results files' format name; make_tables.py refuses any other
SCHEMA = "minipeft-chapter-results/1"
LEVEL = 0.95
POWER = 0.80
CI_METHOD = "paired t, 95 %"
VERDICTS = ("reproduced", "refuted", "inconclusive")
DIRECTIONS = (">", "<")

#: the fixed verdict line (``format_verdict``)
VERDICT_RE = re.compile(
    r"^verdict: (?P<claim>[^|]+) \| (?P<a>[^|]+) vs (?P<b>[^|]+): mean Δ = (?P<mean>[+-]\d+\.\d{4}), "
    r"95% paired-t CI \[(?P<lo>[+-]\d+\.\d{4}), (?P<hi>[+-]\d+\.\d{4})\], n = (?P<n>\d+) seeds \| "
    r"(?P<verdict>reproduced|refuted|inconclusive)(?: \(detectable: \|Δ\| ≥ (?P<mde>\d+\.\d{4})\))?$")
CHECK_RE = re.compile(r"^check: (?P<claim>[^|]+) \| (?P<detail>[^|]*) \| (?P<holds>holds|FAILS)$")


def _t(q: float, df: int) -> float:
    """The q-quantile of Student's t with df degrees of freedom (scipy, a scikit-learn dependency)."""
    from scipy.stats import t

    return float(t.ppf(q, df))


def _values(name, v):
    a = onp.asarray(v, dtype=onp.float64)
    if a.ndim != 1 or a.size < 2:
        raise ValueError(f"{name}: need a 1-D list of at least 2 per-seed values, got shape {a.shape}")
    if not onp.all(onp.isfinite(a)):
        raise ValueError(f"{name}: every per-seed value must be finite, got {a.tolist()}")
    return a


def mean_ci(values, level: float = LEVEL) -> dict:
    """Mean of per-seed values and its t interval: x̄ ± t_{(1+level)/2, n−1} · sd/sqrt(n).

    values: (n,) with n ≥ 2. Returns {"mean", "ci": [lo, hi], "sd", "n"}.
    """
    x = _values("values", values)
    n = x.size
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = _t((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci": [mean - half, mean + half], "sd": sd, "n": n}


def paired(a, b, level: float = LEVEL, power: float = POWER) -> dict:
    """The paired comparison of arms A and B over the same seeds (module docstring).

    a, b: (n,) per-seed values, seed s in position s of both. Returns {"diffs" (n,),
    "mean" Δ̄, "ci" [lo, hi] (paired t), "sd", "se", "n", "mde"} where mde is the mean
    difference detectable at ``power`` (two-sided test at 1 − level).
    """
    x, y = _values("a", a), _values("b", b)
    if x.shape != y.shape:
        raise ValueError(f"a, b: a paired comparison needs one value per seed in each arm, got {x.size} and {y.size}")
    d = x - y
    n = d.size
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    t_crit = _t((1 + level) / 2, n - 1)
    return {"diffs": d.tolist(), "mean": mean, "ci": [mean - t_crit * se, mean + t_crit * se], "sd": sd, "se": se,
            "n": n, "mde": (t_crit + _t(power, n - 1)) * se}


def decide(ci, direction: str = ">") -> str:
    """The verdict rule on a paired interval [lo, hi] of Δ = A − B for the claim "A ``direction`` B"."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    lo, hi = ci
    sign = 1 if direction == ">" else -1
    lo, hi = sorted((sign * lo, sign * hi))  # now the claim says Δ > 0
    if lo > 0:
        return "reproduced"
    if hi < 0:
        return "refuted"
    return "inconclusive"


def _name(field, s):
    if not isinstance(s, str) or not s.strip() or "|" in s or "\n" in s:
        raise ValueError(f"{field}: a non-empty one-line text without '|', got {s!r}")
    return s.strip()


def compare(claim: str, a: str, a_values, b: str, b_values, direction: str = ">", source: str = "",
            metric: str = "test accuracy", seeds=None) -> dict:
    """Decide "A ``direction`` B" over seeds; the record a results file keeps.

    Returns {"claim", "source", "metric", "a", "b", "direction", "seeds", "values_a",
    "values_b", and ``paired``'s keys, "ci_method", "n_seeds", "verdict"}.
    """
    stats = paired(a_values, b_values)
    return {"claim": _name("claim", claim), "source": source, "metric": metric, "a": _name("a", a),
            "b": _name("b", b), "direction": direction, "seeds": list(seeds) if seeds is not None else None,
            "values_a": [float(v) for v in a_values], "values_b": [float(v) for v in b_values], **stats,
            "ci_method": CI_METHOD, "n_seeds": stats["n"], "verdict": decide(stats["ci"], direction)}


def format_verdict(rec: dict) -> str:
    """One line, always the same shape (``VERDICT_RE``): claim | A vs B: Δ̄, CI, n | verdict."""
    lo, hi = rec["ci"]
    line = (f"verdict: {rec['claim']} | {rec['a']} vs {rec['b']}: mean Δ = {rec['mean']:+.4f}, "
            f"95% paired-t CI [{lo:+.4f}, {hi:+.4f}], n = {rec['n_seeds']} seeds | {rec['verdict']}")
    if rec["verdict"] == "inconclusive":
        line += f" (detectable: |Δ| ≥ {rec['mde']:.4f})"
    return line


def check(claim: str, holds: bool, detail: str = "") -> dict:
    """An exact claim (bit for bit, or a closed form): {"claim", "holds", "detail"}."""
    return {"claim": _name("claim", claim), "holds": bool(holds), "detail": detail.replace("|", "/")}


def format_check(rec: dict) -> str:
    """One line (``CHECK_RE``): check: claim | detail | holds (or FAILS)."""
    return f"check: {rec['claim']} | {rec['detail']} | {'holds' if rec['holds'] else 'FAILS'}"


# --------------------------------------------------------------------- the results file
def backbone_id(params) -> str:
    """sha256 (first 16 hex digits) of every array of ``params``: path, dtype, shape and bytes,
    in sorted path order. Two backbones with the same id hold the same bits."""
    from .tree import leaves_with_paths

    h = hashlib.sha256()
    for path, a in sorted(leaves_with_paths(params), key=lambda pa: tuple(map(str, pa[0]))):
        a = onp.ascontiguousarray(onp.asarray(a))
        h.update(f"{'/'.join(map(str, path))}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def environment(policy: str) -> dict:
    """Where and how a chapter ran: UTC date, BLAS libraries with their thread counts
    (threadpoolctl, as they are now), the thread policy in words, versions, load average."""
    try:
        from threadpoolctl import threadpool_info

        blas = [{k: i.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "threading_layer")}
                for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        blas = []
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every OS
        load = None
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "blas": blas,
            "thread_policy": policy, "cpus": os.cpu_count(), "load_1min": load,
            "python": platform.python_version(), "numpy": onp.__version__, "machine": platform.machine()}


def source_state(root=None) -> dict:
    """The code a run uses, as git sees it when called: {"commit" (40 hex digits, or None outside
    a git checkout), "dirty" (tracked files with uncommitted changes, sorted; [] when clean)}.
    root: the checkout (default: the folder above this package)."""
    import subprocess

    root = os.fspath(root) if root is not None else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        try:
            out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if head else None
    dirty = sorted(line[3:] for line in (status or "").splitlines() if line.strip())
    return {"commit": head.strip() if head else None, "dirty": dirty}


def write_results(path, record: dict) -> None:
    """Write ``record`` as JSON to ``path`` atomically (temp file, then rename)."""
    if record.get("schema") != SCHEMA:
        raise ValueError(f"record: schema must be {SCHEMA!r}, got {record.get('schema')!r}")
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1, ensure_ascii=False, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


#: the keys every results file has, and those of each claim
RESULT_KEYS = ("schema", "chapter", "quick", "budget", "environment", "backbone", "wall_s", "arms", "claims",
               "checks")
CLAIM_KEYS = ("claim", "source", "a", "b", "direction", "values_a", "values_b", "diffs", "mean", "ci",
              "ci_method", "n_seeds", "verdict", "mde")
MAX_RESULTS_BYTES = 4 << 20


def read_results(path) -> dict:
    """Read and check one results file (at most 4 MiB): the schema, the keys, each claim's
    verdict recomputed from its own per-seed values. Raises ValueError naming what is wrong."""
    path = os.fspath(path)
    if os.path.getsize(path) > MAX_RESULTS_BYTES:
        raise ValueError(f"{path}: larger than {MAX_RESULTS_BYTES} bytes; not a results file")
    with open(path, encoding="utf-8") as fh:
        rec = json.load(fh)
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema must be {SCHEMA!r}")
    missing = [k for k in RESULT_KEYS if k not in rec]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    for i, c in enumerate(rec["claims"]):
        gone = [k for k in CLAIM_KEYS if k not in c]
        if gone:
            raise ValueError(f"{path}: claims[{i}] misses {gone}")
        again = compare(c["claim"], c["a"], c["values_a"], c["b"], c["values_b"], c["direction"])
        if again["verdict"] != c["verdict"] or not onp.allclose(again["ci"], c["ci"], rtol=0, atol=1e-12):
            raise ValueError(f"{path}: claims[{i}] ({c['claim']!r}): its verdict or interval does not follow "
                             "from its per-seed values")
    return rec

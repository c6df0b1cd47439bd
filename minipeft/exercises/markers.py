"""Exercise markers: the regions of the reference code a student writes.

A region is the lines between two comment lines, at one indentation:

    # exercise lora-merge [2 pts] "LoRA": ΔW = (α/r) B A, the update W = W₀ + ΔW adds
    return self.scaling * (ab["B"] @ ab["A"])
    # end exercise

The begin line carries the id (lower-case letters, digits, '-'), the points, the
equations.md section in double quotes and a one-line task statement in the notes'
notation. An exercise whose code sits in two places (a forward hook and its partner)
has more parts: the later ones begin with ``# exercise ID (continued)``. The student
copy replaces each part's body by ``raise NotImplementedError(<statement>)`` and keeps
the two marker lines, so the same parser finds the regions in a copy.

``scan(package_dir)`` parses every .py file and returns the exercises; any malformed
marker is a ``MarkerError`` naming the file and line.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

ID = r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*"
BEGIN = re.compile(r'^(?P<indent>[ ]*)# exercise (?P<id>' + ID + r') \[(?P<points>[0-9]+) pts?\] '
                   r'"(?P<section>[^"]+)": (?P<statement>\S.*?)\s*$')
CONTINUED = re.compile(r"^(?P<indent>[ ]*)# exercise (?P<id>" + ID + r") \(continued\)\s*$")
END = re.compile(r"^(?P<indent>[ ]*)# end exercise\s*$")
FORMAT = '# exercise ID [N pts] "equations.md section": statement   ...   # end exercise'

#: the sections of equations.md an exercise may cite (tests compare with the file when present)
SECTIONS = ("Transformer", "Prompt tuning", "VPT", "Prefix tuning", "Adapters: AdaptFormer", "Adapters: serial",
            "Reparameterisation: the general form", "LoRA", "Scale and shift", "BitFit", "(IA)³", "SSF")
#: the most points one exercise may carry
MAX_POINTS = 100
#: package folders never scanned: the exercise tooling itself
SKIP_DIRS = ("exercises", "__pycache__")


class MarkerError(ValueError):
    """A malformed exercise marker; the message starts with ``file:line:``."""

    def __init__(self, path, line, message):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line = path, line


@dataclass(frozen=True)
class Region:
    """One part of an exercise: the body lines ``begin + 1 .. end - 1`` (1-based) of ``path``."""

    id: str
    path: str  # relative to the package's parent folder, with '/' (e.g. minipeft/methods/lora.py)
    begin: int  # line of the begin marker
    end: int  # line of the end marker
    indent: str


@dataclass
class Exercise:
    """An exercise: its id, points, section, statement and parts (in file order)."""

    id: str
    points: int
    section: str
    statement: str
    parts: list = field(default_factory=list)

    def record(self) -> dict:
        """A JSON-ready description (for ``list``, the copy's manifest and the grade report)."""
        return {"id": self.id, "points": self.points, "section": self.section, "statement": self.statement,
                "parts": [f"{r.path}:{r.begin}" for r in self.parts]}


def _looks_like_marker(line: str) -> bool:
    s = line.strip()
    return s.startswith("# exercise") or s.startswith("# end exercise")


def parse_file(path: str, text: str) -> tuple:
    """(headers, regions) of one file. headers: [(Exercise without parts, line)];
    regions: [Region]. MarkerError on any malformed or unbalanced marker."""
    headers, regions, open_ = [], [], None  # open_: (id, line, indent)
    for i, line in enumerate(text.splitlines(), start=1):
        if not _looks_like_marker(line):
            if open_ is not None and line.strip() and not line.startswith(open_[2]):
                raise MarkerError(path, i, f"line is indented less than the marker of exercise {open_[0]!r} "
                                           f"(line {open_[1]}): a region is a block at one indentation")
            continue
        b, c, e = BEGIN.match(line), CONTINUED.match(line), END.match(line)
        if b or c:
            m = b or c
            if open_ is not None:
                raise MarkerError(path, i, f"exercise {m['id']!r} begins inside exercise {open_[0]!r} "
                                           f"(line {open_[1]}), which has no '# end exercise' yet")
            if b:
                pts = int(b["points"])
                if not 1 <= pts <= MAX_POINTS:
                    raise MarkerError(path, i, f"points must be an int in [1, {MAX_POINTS}], got {pts}")
                if b["section"] not in SECTIONS:
                    raise MarkerError(path, i, f"section {b['section']!r} is not an equations.md section; "
                                               f"allowed: {SECTIONS}")
                headers.append((Exercise(b["id"], pts, b["section"], b["statement"]), i))
            open_ = (m["id"], i, m["indent"])
        elif e:
            if open_ is None:
                raise MarkerError(path, i, "'# end exercise' without a '# exercise ...' line before it")
            if e["indent"] != open_[2]:
                raise MarkerError(path, i, f"'# end exercise' must be indented as its begin marker "
                                           f"(line {open_[1]}, {len(open_[2])} spaces)")
            lines = text.splitlines()[open_[1]:i - 1]
            if not any(ln.strip() for ln in lines):
                raise MarkerError(path, open_[1], f"exercise {open_[0]!r} has an empty region")
            first = next(ln for ln in lines if ln.strip())
            if len(first) - len(first.lstrip(" ")) != len(open_[2]):
                raise MarkerError(path, open_[1], f"exercise {open_[0]!r}: the region's first line must be "
                                                  f"indented as its marker ({len(open_[2])} spaces)")
            regions.append(Region(open_[0], path, open_[1], i, open_[2]))
            open_ = None
        else:
            raise MarkerError(path, i, f"malformed exercise marker {line.strip()!r}; the form is {FORMAT} "
                                       f"(a later part: '# exercise ID (continued)'; an empty statement is "
                                       f"not allowed)")
    if open_ is not None:
        raise MarkerError(path, open_[1], f"exercise {open_[0]!r} has no '# end exercise'")
    return headers, regions


def python_files(root: str, package: str = "minipeft") -> list:
    """Paths (relative to ``root``, '/'-separated, sorted) of the package's .py files outside SKIP_DIRS."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        out += [f"{rel}/{f}" for f in sorted(filenames) if f.endswith(".py")]
    return sorted(out)


def scan(root: str, package: str = "minipeft") -> dict:
    """{id: Exercise} of every marked region in ``root/package`` (ids in file order).

    MarkerError for a malformed marker, an id defined twice, or a continued part whose id
    has no header.
    """
    exercises, where, pending = {}, {}, []
    for rel in python_files(root, package):
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
        headers, regions = parse_file(rel, text)
        for ex, line in headers:
            if ex.id in exercises:
                raise MarkerError(rel, line, f"exercise id {ex.id!r} is already defined at {where[ex.id]}; "
                                             f"ids must be unique (a later part is '# exercise {ex.id} (continued)')")
            exercises[ex.id], where[ex.id] = ex, f"{rel}:{line}"
        pending += regions
    for r in pending:
        if r.id not in exercises:
            raise MarkerError(r.path, r.begin, f"'# exercise {r.id} (continued)' but no exercise {r.id!r} "
                                               f"is defined ('# exercise {r.id} [N pts] \"section\": statement')")
        exercises[r.id].parts.append(r)
    for k, e in exercises.items():  # the header's own region first
        e.parts.sort(key=lambda r: (f"{r.path}:{r.begin}" != where[k], r.path, r.begin))
    order = sorted(exercises, key=lambda k: (SECTIONS.index(exercises[k].section), "merge" in k))  # notes' order
    return {k: exercises[k] for k in order}


def not_implemented_line(ex: Exercise, indent: str) -> str:
    """The line that replaces a region in a student copy."""
    pts = f'{ex.points} pt{"s" if ex.points > 1 else ""}'
    msg = f'exercise {ex.id} [{pts}] (equations.md "{ex.section}"): {ex.statement}'
    return f"{indent}raise NotImplementedError({msg!r})"


def replace_regions(text: str, regions, bodies) -> str:
    """``text`` with each region's body (the lines between its markers) replaced by the
    matching entry of ``bodies`` (a list of lines, written at the region's indentation)."""
    lines = text.splitlines(keepends=True)
    for r, body in sorted(zip(regions, bodies), key=lambda rb: -rb[0].begin):
        new = [(r.indent + ln if ln.strip() else ln).rstrip() + "\n" for ln in body]
        lines[r.begin:r.end - 1] = new
    return "".join(lines)


def region_body(text: str, region: Region) -> list:
    """The body lines of ``region`` in ``text``, without the region's indentation."""
    n = len(region.indent)
    return [ln[n:] if ln.strip() else "" for ln in text.splitlines()[region.begin:region.end - 1]]

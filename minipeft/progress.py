"""Progress bars: tqdm on a terminal, silent in logs, off with MINIPEFT_PROGRESS=0.

The plain text bar (``tqdm.std``), not ``tqdm.auto``: in a Jupyter kernel without ipywidgets
the auto bar is the widget bar, which warns "IProgress not found"; a text bar works everywhere.
"""
from __future__ import annotations

import os
import sys

from tqdm.std import tqdm


def default_progress() -> bool:
    """Show bars when stderr is a terminal, unless MINIPEFT_PROGRESS=0 (1 forces them on)."""
    env = os.environ.get("MINIPEFT_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def bar(total: int, desc: str, progress=None):
    """A tqdm bar of ``total`` steps, shown when ``progress`` (default: default_progress())."""
    show = default_progress() if progress is None else bool(progress)
    return tqdm(total=total, desc=desc, disable=not show, leave=False, mininterval=0.5, dynamic_ncols=True)

"""The process policy every entry point applies: BLAS threads, the allocator's thresholds, recompute.

One home for two process-wide settings, applied by ``minipeft``'s command line (every
subcommand), ``run_tour``, the chapters' ``setup`` and ``pretrain`` (which builds the
backbone under it and records it in the cache key):

    MINIPEFT_THREADS   BLAS threads (default 1). The thread count is part of what decides
                       the bits: a matrix product split over two threads may sum in another
                       order, so the same seed gives the same bits only under the same count.
                       One thread is also the fast choice here: on a small shared CPU two
                       BLAS threads on these small matrices stall each other (design.md).
    MINIPEFT_MALLOC    "keep" (default) or "default". With "keep", glibc keeps freed memory
                       in the process (``mallopt``: mmap threshold 32 MiB, trim threshold
                       1 GiB) instead of handing every step's activations back to the kernel
                       and page-faulting them in again on the next step. "default" leaves
                       the C library's adaptive settings alone; so do glibc's own
                       MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ when they are set (each
                       wins for its parameter). Elsewhere than glibc (macOS, musl) nothing
                       happens. The allocator changes speed and memory, never a number.
    MINIPEFT_RECOMPUTE "none" (default) or "mlp": what a training step recomputes in its
                       backward pass instead of keeping it (activation checkpointing).
                       "none" keeps GELU'(U) of every MLP hidden layer (B, T, d_ff) for the
                       backward pass. "mlp": where W₁, b₁, W₂, b₂ are frozen and no method
                       touches the MLP inside (LoRA on q, v; prompt tuning; the notes'
                       (IA)³), the MLP is one node (``nn.ff.frozen_mlp``) that keeps nothing
                       of the hidden layer's size and recomputes U = x W₁ᵀ + b₁ in the
                       backward pass: less memory, one more x W₁ᵀ product per block and step.
                       Read at every forward pass; like the allocator it changes speed and
                       memory, never a number (tests/test_ln_rebuild.py).

What "same seed, same bits" covers: the same minipeft version, the same NumPy and BLAS
library build (and the kernel it picks for this CPU, which ``describe`` records), the same
thread count and dtype. It does not cover another BLAS build, another CPU kernel (e.g.
OPENBLAS_CORETYPE), another thread count, or the CuPy backend: there the results agree to
the dtype's rounding, not bit for bit.
"""
from __future__ import annotations

import os

ENV_THREADS = "MINIPEFT_THREADS"
ENV_MALLOC = "MINIPEFT_MALLOC"
DEFAULT_THREADS = 1
MALLOC_MODES = ("keep", "default")
ENV_RECOMPUTE = "MINIPEFT_RECOMPUTE"
RECOMPUTE_MODES = ("none", "mlp")
#: glibc's mallopt parameters (malloc.h) and the values "keep" sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 << 30
_GLIBC_ENV = {_M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_", _M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_"}

_state = {"allocator": None, "limit": None}


def threads() -> int:
    """The BLAS thread count of the policy: $MINIPEFT_THREADS, else 1."""
    raw = os.environ.get(ENV_THREADS, "").strip()
    if not raw:
        return DEFAULT_THREADS
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV_THREADS} must be a positive integer (the number of BLAS threads), got {raw!r}")
    return n


def malloc_mode() -> str:
    """$MINIPEFT_MALLOC: "keep" (default) or "default"."""
    mode = os.environ.get(ENV_MALLOC, "").strip() or "keep"
    if mode not in MALLOC_MODES:
        raise ValueError(f"{ENV_MALLOC} must be one of {MALLOC_MODES}, got {mode!r}")
    return mode


def recompute() -> str:
    """$MINIPEFT_RECOMPUTE: "none" (default) or "mlp" (the module docstring)."""
    mode = os.environ.get(ENV_RECOMPUTE, "").strip() or "none"
    if mode not in RECOMPUTE_MODES:
        raise ValueError(f"{ENV_RECOMPUTE} must be one of {RECOMPUTE_MODES}, got {mode!r}")
    return mode


def limit_blas(n: int | None = None):
    """Limit BLAS to ``n`` threads (default: the policy's) now, with threadpoolctl.

    Returns the limiter (a context manager: leaving a ``with`` block, or calling its
    ``restore_original_limits()``, restores the previous limits), or None without
    threadpoolctl.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency of scikit-learn and of minipeft
        return None
    return threadpool_limits(limits=threads() if n is None else n, user_api="blas")


def tune_allocator() -> str:
    """Apply MINIPEFT_MALLOC (module docstring) once per process; returns what holds:
    "keep (mmap 32 MiB, trim 1 GiB)", "default", "glibc environment", or "unavailable"."""
    if _state["allocator"] is not None:
        return _state["allocator"]
    if malloc_mode() == "default":
        _state["allocator"] = "default"
        return "default"
    wanted = {p: v for p, v in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
              if not os.environ.get(_GLIBC_ENV[p])}
    if not wanted:
        result = "glibc environment"
    else:
        result = "unavailable"
        try:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            libc = ctypes.CDLL(name) if name else None
            if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
                if all(libc.mallopt(p, int(v)) == 1 for p, v in wanted.items()):
                    result = f"keep (mmap {MMAP_THRESHOLD >> 20} MiB, trim {TRIM_THRESHOLD >> 20} MiB)"
        except OSError:
            pass
    _state["allocator"] = result
    return result


def apply() -> dict:
    """Apply the whole policy to this process (BLAS threads, allocator; MINIPEFT_RECOMPUTE is
    checked here, and read by each forward pass); returns ``describe()``.

    Called by every entry point; calling it again re-applies the thread limit (a library
    may have been loaded since) and leaves the allocator as set the first time.
    """
    _state["limit"] = limit_blas()
    tune_allocator()
    return describe()


def blas_libraries() -> list:
    """The BLAS libraries NumPy loaded: [{"api", "version", "architecture", "threads"}] (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return []
    import numpy  # noqa: F401  (loads its BLAS)

    return [{"api": i.get("internal_api"), "version": i.get("version"), "architecture": i.get("architecture"),
             "threads": i.get("num_threads")} for i in threadpool_info() if i.get("user_api") == "blas"]


def describe() -> dict:
    """What decides the bits and speed of this process: {"blas_threads": policy count,
    "blas": [NumPy's BLAS libraries, their kernel and current threads], "allocator": ...,
    "recompute": ...}."""
    return {"blas_threads": threads(), "blas": blas_libraries(), "allocator": _state["allocator"] or "not applied",
            "recompute": recompute()}

"""Backend: the one place that says which array module and which float dtype minipeft uses.

Arrays carry their dtype: a model built in float32 stays float32 through the forward
and backward pass (nn's primitives never upcast). ``default_dtype()`` only decides the
dtype of *new* parameters and of data batches cast for a model.

    >>> from minipeft import backend
    >>> backend.set_default_dtype("float64")
"""
from __future__ import annotations

import numpy

_ALLOWED_DTYPES = ("float32", "float64")
_state = {"xp": numpy, "dtype": numpy.dtype("float32")}


def xp():
    """The array module in use (``numpy``; CuPy once selected)."""
    return _state["xp"]


def default_dtype() -> numpy.dtype:
    """The float dtype new parameters are created in (float32 unless changed)."""
    return _state["dtype"]


def check_dtype(dtype) -> numpy.dtype:
    """Return ``dtype`` as a NumPy dtype if it is float32 or float64, else raise ValueError."""
    try:
        dt = numpy.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in _ALLOWED_DTYPES:
        raise ValueError(f"dtype must be one of {_ALLOWED_DTYPES}, got {dtype!r}")
    return dt


def set_default_dtype(dtype) -> None:
    """Set the dtype of new parameters: 'float32' or 'float64'."""
    _state["dtype"] = check_dtype(dtype)


def resolve_dtype(dtype=None) -> numpy.dtype:
    """``dtype`` checked, or the default dtype when None."""
    return default_dtype() if dtype is None else check_dtype(dtype)

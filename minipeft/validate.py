"""Input checks shared by the package's boundaries (options, configs, fit/predict arguments).

Each check raises an error whose message names the field and the allowed values:
``f"{name} must be {allowed}, got {value!r}"``. A bool is never accepted as a number
(``True`` is an ``int`` to Python, but ``epochs=True`` is a mistake).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as onp


def is_int(value, *, numpy_ints: bool = False) -> bool:
    """True when ``value`` is an ``int`` (or, with ``numpy_ints``, a NumPy integer) and not a bool."""
    kinds = (int, onp.integer) if numpy_ints else int
    return not isinstance(value, bool) and isinstance(value, kinds)


def int_at_least(name: str, value, minimum: int, *, maximum: Optional[int] = None, optional: bool = False,
                 numpy_ints: bool = False, type_error: bool = False, allowed: Optional[str] = None):
    """``value`` as a Python int, checked to be an int with minimum ≤ value (≤ maximum when given).

    optional: None is allowed and returned as is. numpy_ints: NumPy integers are accepted too.
    type_error: a value that is not an int raises TypeError ("{name} must be an int, got
    float 2.0") and only an int out of range raises ValueError; otherwise both are ValueError.
    allowed: the text after "must be" in the message; by default "a positive int (>= 1)",
    "a non-negative int (>= 0)", "an int >= minimum" or "an int in [minimum, maximum]",
    followed by " or None" when optional.
    """
    if optional and value is None:
        return None
    if allowed is None:
        if maximum is not None:
            allowed = f"an int in [{minimum}, {maximum}]"
        else:
            allowed = {1: "a positive int (>= 1)", 0: "a non-negative int (>= 0)"}.get(minimum, f"an int >= {minimum}")
        allowed += " or None" if optional else ""
    if not is_int(value, numpy_ints=numpy_ints):
        if type_error:
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}, got {int(value)!r}")
    return int(value)


def finite_number(name: str, value, *, positive: bool = False, non_negative: bool = False,
                  optional: bool = False, allowed: Optional[str] = None):
    """``value`` unchanged, checked to be a finite ``int`` or ``float`` (not a bool); else ValueError.

    positive: value > 0; non_negative: value ≥ 0; optional: None is allowed (and returned).
    allowed: the text after "must be" in the message; by default "a positive finite number",
    "a finite number >= 0" or "a finite number", followed by " or None" when optional.
    """
    if optional and value is None:
        return None
    if allowed is None:
        allowed = ("a positive finite number" if positive else "a finite number >= 0" if non_negative
                   else "a finite number") + (" or None" if optional else "")
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        try:
            ok = math.isfinite(value)
        except OverflowError:  # an int too large for a float
            ok = False
    if not ok or (positive and value <= 0) or (non_negative and value < 0):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def layer_indices(name: str, layers, *, allowed_sequence: str = "None (every layer) or a non-empty tuple of "
                  "layer indices", allowed_items: str = "distinct non-negative ints") -> Optional[tuple]:
    """``layers`` as a tuple (order kept), or None: a non-empty tuple/list of distinct ints ≥ 0.

    Raises ValueError "{name} must be {allowed_sequence}" when ``layers`` is not a tuple or
    list (a string is not) or is empty, and "{name} must be {allowed_items}" when an entry
    is not an int ≥ 0 (bools and NumPy integers are refused) or appears twice. Bounds
    against the model's N are the caller's (they need the config).
    """
    if layers is None:
        return None
    if not isinstance(layers, (tuple, list)) or not layers:
        raise ValueError(f"{name} must be {allowed_sequence}, got {layers!r}")
    if any(not is_int(i) or i < 0 for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(f"{name} must be {allowed_items}, got {layers!r}")
    return tuple(layers)


def one_of(name: str, value, allowed, *, hint: str = ""):
    """``value`` unchanged when it is one of the names ``allowed`` (strings); else ValueError
    "{name} must be one of {allowed}{hint}, got {value!r}"."""
    allowed = tuple(allowed)
    try:
        ok = isinstance(value, str) and value in allowed
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {allowed}{hint}, got {value!r}")
    return value


def some_of(name: str, values, allowed, *, allow_empty: bool = False) -> tuple:
    """``values`` as a tuple of distinct members of ``allowed`` (order kept); ValueError naming
    ``name`` when it is not a tuple/list (a string is not), is empty, or has an unknown or
    repeated entry."""
    allowed = tuple(allowed)
    if isinstance(values, str) or not isinstance(values, (tuple, list)):
        raise ValueError(f"{name} must be a tuple of names among {allowed}, got {values!r}")
    values = tuple(values)
    if not values and not allow_empty:
        raise ValueError(f"{name} must not be empty; allowed names: {allowed}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{name}: unknown name(s) {bad}; allowed: {allowed}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: each name at most once, got {values}")
    return values


def boolean(name: str, value) -> bool:
    """``value`` as a Python bool: True/False (or a NumPy bool); anything else, 1 and "yes"
    included, is a TypeError "{name} must be True or False (a bool), got ..." (a value of
    the wrong type is a TypeError, a value of the right type outside its range a ValueError)."""
    if not isinstance(value, (bool, onp.bool_)):
        raise TypeError(f"{name} must be True or False (a bool), got {type(value).__name__} {value!r}")
    return bool(value)


def method_name(value) -> str:
    """A method's ``name``: a non-empty string without dots (it becomes the key params[name]
    and the prefix of the method's leaves in a file, "lora.blocks.0...")."""
    if not isinstance(value, str) or not value or "." in value:
        raise ValueError(f"name must be a non-empty string without '.', got {value!r}")
    return value


def shape(what: str, a, want: tuple, hint: str = "") -> None:
    """ValueError when the array ``a`` (θ's ``what``) does not have shape ``want``."""
    if tuple(a.shape) != tuple(want):
        raise ValueError(f"{what}: shape {tuple(a.shape)}, expected {tuple(want)}{hint}")


def nonzero(what: str, s) -> None:
    """ValueError when a scale vector has a zero (its fold cannot be undone by division)."""
    if not (s != 0).all():
        raise ValueError(f"{what}: has a zero entry, so diag({what}) is not invertible and unmerge is undefined")

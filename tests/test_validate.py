"""minipeft.validate: the shared input checks (class of error, message, accepted types)."""
import numpy as onp
import pytest

from minipeft.validate import finite_number, int_at_least, is_int, layer_indices


@pytest.mark.parametrize("v,plain,with_numpy", [
    (3, True, True), (True, False, False), (onp.int64(3), False, True), (3.0, False, False), ("3", False, False)])
def test_is_int_refuses_bools_and_takes_numpy_ints_on_request(v, plain, with_numpy):
    assert is_int(v) is plain and is_int(v, numpy_ints=True) is with_numpy


def test_int_at_least_messages_and_error_classes():
    assert int_at_least("k", onp.int64(4), 1, numpy_ints=True) == 4 and type(int_at_least("k", 4, 1)) is int
    assert int_at_least("k", None, 0, optional=True) is None
    with pytest.raises(ValueError, match=r"k must be a positive int \(>= 1\), got 0"):
        int_at_least("k", 0, 1)
    with pytest.raises(ValueError, match=r"k must be a non-negative int \(>= 0\) or None, got True"):
        int_at_least("k", True, 0, optional=True)
    with pytest.raises(TypeError, match="k must be an int, got float 2.0"):
        int_at_least("k", 2.0, 1, type_error=True)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 8\], got 9"):
        int_at_least("k", onp.int64(9), 1, maximum=8, numpy_ints=True, type_error=True)
    with pytest.raises(ValueError, match="k must be at most two"):
        int_at_least("k", 3, 0, maximum=2, allowed="at most two")


@pytest.mark.parametrize("v", [True, "1", float("nan"), float("inf"), 10 ** 400, None])
def test_finite_number_refuses_non_numbers_and_non_finite(v):
    with pytest.raises(ValueError, match="x must be a finite number, got"):
        finite_number("x", v)


def test_finite_number_signs_and_optional():
    assert finite_number("x", -2.5) == -2.5 and finite_number("x", 0, non_negative=True) == 0
    assert finite_number("x", None, positive=True, optional=True) is None
    with pytest.raises(ValueError, match="x must be a positive finite number or None, got 0.0"):
        finite_number("x", 0.0, positive=True, optional=True)
    with pytest.raises(ValueError, match="x must be a finite number >= 0, got -1"):
        finite_number("x", -1, non_negative=True)


def test_layer_indices_keeps_order_and_names_the_problem():
    assert layer_indices("layers", [2, 0]) == (2, 0) and layer_indices("layers", None) is None
    for bad in ((), "01", 3):
        with pytest.raises(ValueError, match="layers must be None .* non-empty tuple"):
            layer_indices("layers", bad)
    for bad in ((0, 0), (-1,), (True,), (onp.int64(0),)):
        with pytest.raises(ValueError, match="layers must be distinct non-negative ints"):
            layer_indices("layers", bad)

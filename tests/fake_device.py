"""A stand-in for a GPU array library, so the device code paths are tested without a GPU.

``DeviceArray`` holds a NumPy array as its "device memory" and behaves like
``cupy.ndarray`` where it matters for minipeft:

- it refuses implicit conversion to ``numpy.ndarray``: ``np.asarray(d)`` /
  ``np.array(d)`` raise TypeError (CuPy: "Implicit conversion to a NumPy array is not
  allowed"); ``d.get()`` is the explicit copy to the host;
- it refuses host NumPy arrays as operands of its ufuncs and functions (CuPy raises
  TypeError for them), while Python and NumPy *scalars* are fine, and integer/boolean
  host arrays are accepted as indices (CuPy uploads index arrays);
- NumPy's functions and ufuncs reach it through ``__array_function__`` /
  ``__array_ufunc__``, which compute with NumPy on the wrapped data and wrap the result
  (0-d arrays, never NumPy scalars, as CuPy); like CuPy, it declines (NotImplemented)
  operands it does not know, such as autograd's ArrayBox, and ``ufunc.at`` with an
  index tuple;
- in-place updates (``d[i] = v``, ``d += v``) work on its own arrays.

So any code path that hands a device array to host NumPy, or mixes host arrays into
device arithmetic, raises; what runs computes exactly NumPy's numbers.

``fake_xp`` is its array module: ``fake_xp.ndarray`` is ``DeviceArray``; any other
attribute is NumPy's, with callables wrapped to take and return device arrays
(``asarray``/``array`` are the explicit host→device copies). Select it in tests with
``minipeft.backend.use_backend(fake_xp)``.
"""
from __future__ import annotations

import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

_SCALARS = (bool, int, float, complex, np.generic)


class HostArrayError(TypeError):
    """A host NumPy array met device arrays, or a device array was converted implicitly."""


def _unwrap(x, where="operand", int_ok=False):
    """Device data out of DeviceArrays (recursively in lists/tuples/dicts); host arrays refused,
    except integer/boolean ones when ``int_ok`` (axes, shapes and indices, which CuPy reads)."""
    if isinstance(x, DeviceArray):
        return x._data
    if isinstance(x, np.ndarray) and not (int_ok and x.dtype.kind in "iub"):
        raise HostArrayError(f"fake device: a host numpy.ndarray {x.shape} {x.dtype} was passed as an {where} of a "
                             f"device computation (CuPy raises TypeError: implicit host-to-device conversion)")
    if isinstance(x, (list, tuple)):
        out = [_unwrap(v, where, int_ok) for v in x]
        return type(x)(out) if isinstance(x, tuple) else out
    if isinstance(x, dict):
        return {k: _unwrap(v, where, int_ok) for k, v in x.items()}
    return x


def _unwrap_index(idx):
    """An index: device arrays unwrapped; host integer/boolean arrays accepted (CuPy uploads them)."""
    if isinstance(idx, DeviceArray):
        return idx._data
    if isinstance(idx, np.ndarray):
        if idx.dtype.kind not in "iub":
            raise IndexError(f"fake device: arrays used as indices must be integer or boolean, got {idx.dtype}")
        return idx
    if isinstance(idx, tuple):
        return tuple(_unwrap_index(i) for i in idx)
    if isinstance(idx, list):
        return np.asarray([_unwrap_index(i) for i in idx])
    return idx


def _wrap(r):
    """NumPy results back on the device: arrays and NumPy scalars become DeviceArrays."""
    if isinstance(r, np.ndarray):
        return DeviceArray(r)
    if isinstance(r, np.generic) and not isinstance(r, (np.str_, np.bytes_)):
        return DeviceArray(np.asarray(r))
    if isinstance(r, tuple) and not hasattr(r, "_fields"):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


class DeviceArray(NDArrayOperatorsMixin):
    """An array in (pretend) device memory; see the module docstring for what it refuses."""

    __array_priority__ = 100  # as cupy.ndarray
    __slots__ = ("_data",)

    def __init__(self, data):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"DeviceArray wraps a numpy.ndarray, got {type(data).__name__}")
        self._data = data

    # -- the refusals --------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise HostArrayError("fake device: implicit conversion to a NumPy array is not allowed "
                             "(as CuPy); use .get() to copy to the host explicitly")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        for x in inputs + tuple(kwargs.get("out", ())):
            if not isinstance(x, (DeviceArray, np.ndarray) + _SCALARS):
                return NotImplemented  # e.g. an autograd ArrayBox, or an index tuple for ufunc.at
        args = tuple(_unwrap(x) for x in inputs)
        out = kwargs.pop("out", None)
        if out is not None:
            kwargs["out"] = tuple(_unwrap(o) for o in out)
        result = ufunc(*args, **kwargs) if method == "__call__" else getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out  # updated in place, as NumPy returns its out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        if not all(issubclass(t, (DeviceArray, np.ndarray)) for t in types_):
            return NotImplemented  # as CuPy: unknown array types are not ours to handle
        # host integer arrays pass as axes/shapes (CuPy turns such sequences into tuples);
        # host float arrays are data: refused, as CuPy refuses them
        return _wrap(func(*_unwrap(args, int_ok=True), **_unwrap(kwargs, int_ok=True)))

    # -- explicit transfer -----------------------------------------------------------
    def get(self):
        """A NumPy copy on the host (as ``cupy.ndarray.get``)."""
        return self._data.copy()

    def item(self):
        return self._data.item()

    def tolist(self):
        return self._data.tolist()

    def __float__(self):
        return float(self._data)

    def __int__(self):
        return int(self._data)

    def __index__(self):
        return self._data.__index__()

    def __bool__(self):
        return bool(self._data)

    def __len__(self):
        return len(self._data)

    def __iter__(self):
        return (_wrap(v) for v in self._data)

    def __repr__(self):
        return f"DeviceArray({self._data!r})"

    # -- attributes ------------------------------------------------------------------
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    nbytes = property(lambda self: self._data.nbytes)
    itemsize = property(lambda self: self._data.itemsize)
    strides = property(lambda self: self._data.strides)
    T = property(lambda self: DeviceArray(self._data.T))

    def __getitem__(self, idx):
        return _wrap(self._data[_unwrap_index(idx)])

    def __setitem__(self, idx, value):
        if isinstance(value, np.ndarray):
            _unwrap(value, "assigned value")  # raises: host array into device memory
        self._data[_unwrap_index(idx)] = _unwrap(value)

    def reshape(self, *shape, **kw):
        return DeviceArray(self._data.reshape(*shape, **kw))

    def transpose(self, *axes):
        return DeviceArray(self._data.transpose(*axes))

    def astype(self, dtype, copy=True, **kw):
        out = self._data.astype(dtype, copy=copy, **kw)
        return self if out is self._data else DeviceArray(out)

    def copy(self):
        return DeviceArray(self._data.copy())

    def view(self, dtype=None):
        if isinstance(dtype, type) and issubclass(dtype, np.ndarray):
            raise TypeError("fake device: view(numpy.ndarray) is not a dtype (CuPy refuses it)")
        return DeviceArray(self._data.view() if dtype is None else self._data.view(dtype))

    def _method(name):  # noqa: N805 - a factory for reductions and friends
        def m(self, *args, **kw):
            return _wrap(getattr(self._data, name)(*_unwrap(args), **_unwrap(kw)))

        m.__name__ = name
        return m

    for _n in ("sum", "mean", "max", "min", "argmax", "argmin", "var", "std", "prod", "any", "all",
               "ravel", "flatten", "squeeze", "swapaxes", "clip", "cumsum", "take", "dot", "tobytes", "nonzero"):
        locals()[_n] = _method(_n)
    del _n, _method


class _Ufunc:
    """A NumPy ufunc on device arrays, with ``at`` (as ``cupy.add.at``) and ``reduce``."""

    def __init__(self, uf):
        self._uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *args, **kw):
        return self._uf(*args, **kw)  # dispatches through DeviceArray.__array_ufunc__

    def at(self, a, indices, b=None):
        if not isinstance(a, DeviceArray):
            raise TypeError("fake device: ufunc.at needs a device array to update")
        extra = () if b is None else (_unwrap(b),)
        self._uf.at(a._data, _unwrap_index(indices), *extra)

    def reduce(self, a, *args, **kw):
        return _wrap(self._uf.reduce(_unwrap(a), *args, **kw))


def _device_function(name, fn):
    """NumPy's ``fn`` on device arrays: device inputs, device outputs, host arrays refused."""

    def f(*args, **kw):
        return _wrap(fn(*_unwrap(args), **_unwrap(kw)))

    f.__name__ = name
    return f


def _to_device(x, dtype=None, copy=True):
    """Host data (or a device array) to a device array: the explicit transfer."""
    if isinstance(x, DeviceArray):
        return x.astype(dtype, copy=False) if dtype is not None else x
    if isinstance(x, (list, tuple)) and any(isinstance(v, DeviceArray) for v in x):
        x = [v._data if isinstance(v, DeviceArray) else v for v in x]
    return DeviceArray(np.array(x, dtype=dtype, copy=True))


class _FakeXP(types.ModuleType):
    """The stand-in array module: NumPy's names, for device arrays."""

    ndarray = DeviceArray

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        obj = getattr(np, name)
        if isinstance(obj, np.ufunc):
            wrapped = _Ufunc(obj)
        elif isinstance(obj, type) or not callable(obj):
            wrapped = obj  # dtypes (float32, …), constants (pi, newaxis)
        else:
            wrapped = _device_function(name, obj)
        setattr(self, name, wrapped)
        return wrapped

    @staticmethod
    def asarray(x, dtype=None):
        return _to_device(x, dtype, copy=False)

    @staticmethod
    def array(x, dtype=None, copy=True, ndmin=0):
        out = _to_device(x, dtype)
        if ndmin > out.ndim:
            out = out.reshape((1,) * (ndmin - out.ndim) + out.shape)
        return out.copy() if copy and isinstance(x, DeviceArray) else out

    @staticmethod
    def get_array_module(*arrays):
        return fake_xp if any(isinstance(a, DeviceArray) for a in arrays) else np


fake_xp = _FakeXP("fake_xp", "A NumPy-backed stand-in for CuPy (tests only): see tests/fake_device.py")


def pytest_configure(config):
    """Used as a pytest plugin (``PYTHONPATH=tests python -m pytest -p fake_device``), runs the
    whole suite with the stand-in as the backend: a CPU rehearsal of
    ``MINIPEFT_BACKEND=cupy python -m pytest``. (Imported by a test module, it does nothing.)"""
    from minipeft import backend

    backend.use_backend(fake_xp)

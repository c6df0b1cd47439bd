"""Backend: the one place that says which array module and which float dtype minipeft uses.

Arrays carry their dtype: a model built in float32 stays float32 through the forward
and backward pass (nn's primitives never upcast). ``default_dtype()`` only decides the
dtype of *new* parameters and of data batches cast for a model.

    >>> from minipeft import backend
    >>> backend.set_default_dtype("float64")

The array module is NumPy unless CuPy is asked for, by one call or one environment
variable (read when minipeft is imported):

    backend.use_backend("cupy")          # or: MINIPEFT_BACKEND=cupy python ...
    params = backend.to_device(params)   # a tree made before the switch

From then on everything minipeft creates — the backbone (``init_params``,
``load_backbone``), heads, every method's θ (``attach``), loaded adapters — lives on the
GPU, data batches are moved there at the boundary (``fit``, ``predict``, ``forward``),
and autograd differentiates CuPy arrays (``minipeft.cupy_patches``). If CuPy cannot be
used, ``use_backend("cupy")`` raises ``BackendError`` saying why (not installed, no
driver, no device, no working kernel) and nothing changes. ``pip install
"minipeft[gpu]"`` installs cupy-cuda12x.

A model's *device* is the module of its arrays (``module_of(params["embed"]["pos"])``);
``fit`` and ``predict`` refuse a tree whose leaves are not all on the current backend
(ValueError naming the leaf), rather than silently computing on the host.
"""
from __future__ import annotations

import os
import types

import numpy

from . import cupy_patches
from .cupy_patches import DEVICE_MODULES, is_device_array, module_of  # noqa: F401  (public here)

_ALLOWED_DTYPES = ("float32", "float64")
BACKENDS = ("numpy", "cupy")
ENV = "MINIPEFT_BACKEND"
_state = {"xp": numpy, "name": "numpy", "dtype": numpy.dtype("float32")}


class BackendError(RuntimeError):
    """The requested array backend cannot be used here; the message says why."""


def xp():
    """The array module in use (``numpy``; CuPy once selected)."""
    return _state["xp"]


def backend_name() -> str:
    """"numpy", "cupy", or the ``__name__`` of a test module selected with ``use_backend``."""
    return _state["name"]


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


# ------------------------------------------------------------------- the switch
def use_backend(backend):
    """Select the array module for everything minipeft creates from now on; returns it.

    backend: "numpy" (the default) or "cupy". For tests only, a module object that has
    an ``ndarray`` attribute (its array type) and NumPy's function names, such as
    ``tests/fake_device.fake_xp``: it is registered with autograd like CuPy is.
    Asking for CuPy where it cannot run raises ``BackendError`` (why: no CuPy, no driver,
    no device, no kernel) and leaves the backend as it was.
    """
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "numpy":
            _state.update(xp=numpy, name="numpy")
            return numpy
        module, name = _load_cupy(), "cupy"
    elif isinstance(backend, types.ModuleType) and isinstance(getattr(backend, "ndarray", None), type):
        module, name = backend, backend.__name__
    else:
        raise TypeError(f"backend must be one of {BACKENDS} (or, in tests, an array module with an `ndarray` "
                        f"type), got {backend!r}")
    _register(module)
    _state.update(xp=module, name=name)
    return module


def _register(module) -> None:
    """Teach autograd the module's array type (once); see ``minipeft.cupy_patches``."""
    if module.ndarray not in DEVICE_MODULES:
        cupy_patches.install(module.ndarray, module)


def _load_cupy():
    """Import CuPy and prove it can run a kernel on a GPU; BackendError saying why not."""
    try:
        import cupy
    except ImportError as e:
        raise BackendError(f"backend 'cupy': CuPy is not installed ({e}); "
                           f"`pip install \"minipeft[gpu]\"` installs cupy-cuda12x") from None
    except Exception as e:  # a broken install (missing CUDA libraries, …)
        raise BackendError(f"backend 'cupy': CuPy is installed but failed to import: {type(e).__name__}: {e}") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        text = str(e)
        if "Driver" in text or "driver" in text:
            why = "no NVIDIA driver, or one too old for the CUDA runtime CuPy was built with"
        elif "NoDevice" in text or "no CUDA-capable device" in text:
            why = "no CUDA device is visible (check CUDA_VISIBLE_DEVICES)"
        else:
            why = "the CUDA runtime could not start"
        raise BackendError(f"backend 'cupy': {why} ({type(e).__name__}: {e})") from None
    if n < 1:
        raise BackendError("backend 'cupy': no CUDA device is visible (0 devices; check CUDA_VISIBLE_DEVICES)")
    try:  # one elementwise kernel, one reduction, one GEMM: compiler and cuBLAS both work
        a = cupy.arange(6, dtype=numpy.float32).reshape(2, 3)
        ok = float((a @ a.T).sum() + (a * 2).sum()) == 100.0
    except Exception as e:
        raise BackendError(f"backend 'cupy': {n} CUDA device(s) found, but a test kernel failed: "
                           f"{type(e).__name__}: {e}") from None
    if not ok:
        raise BackendError("backend 'cupy': a test kernel ran but computed a wrong result")
    return cupy


# ------------------------------------------------------------- moving arrays
def _is_array(a) -> bool:
    return isinstance(a, (numpy.ndarray, numpy.generic)) or type(a) in DEVICE_MODULES


def to_module(tree, module):
    """``tree`` (an array, or nested dicts/lists/tuples of arrays) with every array on ``module``.

    Host → device copies with ``module.asarray``; device → host with ``.get()``; arrays
    already there are returned as they are (same object). dtypes are kept; non-array
    leaves (ints, strings, None) are left alone. Tuples come back as tuples.
    """
    if isinstance(tree, dict):
        return {k: to_module(v, module) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        out = [to_module(v, module) for v in tree]
        return type(tree)(out) if isinstance(tree, tuple) and not hasattr(tree, "_fields") else out
    if not _is_array(tree) or module_of(tree) is module:
        return tree
    host = tree if module_of(tree) is numpy else tree.get()
    return host if module is numpy else module.asarray(host)


def to_device(tree):
    """``tree`` moved onto the current backend (``xp()``): the way to bring a param tree
    or a data batch made before ``use_backend`` onto the GPU (or back, under NumPy)."""
    return to_module(tree, xp())


def to_host(tree):
    """``tree`` with every array as a NumPy array (device arrays copied with ``.get()``)."""
    return to_module(tree, numpy)


def like(tree, ref):
    """``tree`` moved onto the module of the array ``ref`` (a model's device)."""
    return to_module(tree, module_of(ref))


def cast(tree, dtype, module=None):
    """Every leaf of ``tree`` (nested dicts/lists) as an array of ``dtype`` on ``module``
    (default: the backend's array module, ``xp()``); a leaf already so is not copied."""
    mod = xp() if module is None else module
    if isinstance(tree, dict):
        return {k: cast(v, dtype, mod) for k, v in tree.items()}
    if isinstance(tree, list):
        return [cast(v, dtype, mod) for v in tree]
    return mod.asarray(tree, dtype=dtype)


def cast_like(tree, ref):
    """``tree`` cast to the dtype of the array ``ref`` and moved onto its module (a model's
    dtype and device): how a method's θ, a loaded file's leaves or a batch join a model."""
    return cast(tree, ref.dtype, module_of(ref))


def check_on_backend(tree, what: str = "params") -> None:
    """ValueError naming the first leaf of ``tree`` that is not on the current backend.

    Guards the training and inference entry points: a NumPy tree under the CuPy backend
    (or the reverse) would otherwise compute silently on the other device.
    """
    from .tree import leaves_with_paths, path_str

    mod = xp()
    for p, leaf in leaves_with_paths(tree):
        if _is_array(leaf) and module_of(leaf) is not mod:
            raise ValueError(f"{what}: leaf {path_str(p) or '(root)'} is a {module_of(leaf).__name__} array but the "
                             f"backend is {backend_name()!r}; move the tree with minipeft.backend.to_device({what}) "
                             f"(or select its backend with minipeft.backend.use_backend)")


# ------------------------------------------------------------ the environment
_env = os.environ.get(ENV, "").strip()
if _env:
    if _env not in BACKENDS:
        raise ValueError(f"{ENV} must be one of {BACKENDS}, got {_env!r}")
    use_backend(_env)

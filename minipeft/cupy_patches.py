"""autograd on device arrays (CuPy, or the tests' stand-in): what must be registered or replaced.

autograd wraps NumPy's functions, and NumPy hands a call whose arguments are device
arrays to the arrays' own module through ``__array_function__`` / ``__array_ufunc__``
(NEP 18 / NEP 13); CuPy answers them on the GPU. The forward pass and most VJPs
therefore run on CuPy arrays unchanged. What does not go through that protocol —
host constructors (``onp.zeros``), ``np.asarray``/``np.array`` (CuPy refuses implicit
conversion), ``.view(np.ndarray)``, ``np.add.at`` with an index tuple (CuPy declines it)
— is listed in ``install`` below, one patch each, with why.

Rules kept by every replacement:
- autograd's own code runs, unchanged, whenever no device array is involved, so NumPy
  runs are bit for bit those of stock autograd;
- on a device array it does the same arithmetic with the array's module (same dtypes as
  stock, upcasts included, so a device run gives NumPy's numbers);
- ``STOCK`` keeps every original, for that fallback and for tests.

Pinned to autograd 1.9.x: the names replaced here are module globals of
``autograd/numpy/numpy_wrapper.py`` and ``numpy_vjps.py`` in that release, looked up
at call time by the functions that use them. ``install`` refuses another version.
Forward mode (``make_jvp``) on device arrays is not patched; minipeft uses reverse mode only.
"""
from __future__ import annotations

import importlib.metadata

import autograd.numpy as anp_public
import autograd.numpy.numpy_vjps as av
import autograd.numpy.numpy_wrapper as aw
import numpy as onp
from autograd.core import SparseObject, VSpace, def_linear, defjvp, primitive_jvps, primitive_vjps
from autograd.extend import primitive
from autograd.numpy.numpy_boxes import ArrayBox

AUTOGRAD_SERIES = "1.9."
#: autograd's originals, by name (what the replacements fall back to on host arrays)
STOCK: dict = {}
_patched = {"functions": False}
#: device array type -> its array module, for every type ``install`` taught autograd.
#: The registry ``backend.module_of`` reads; this module imports nothing of minipeft.
DEVICE_MODULES: dict = {}


def module_of(a):
    """The array module an array lives on: a registered device module, else ``numpy``.

    Looks through autograd boxes, so it works on traced values too. (Public as
    ``backend.module_of``; defined here so that this module imports nothing of minipeft.)
    """
    while hasattr(a, "_value") and hasattr(a, "_node"):  # an autograd Box
        a = a._value
    return DEVICE_MODULES.get(type(a), onp)


def is_device_array(a) -> bool:
    """True for an array of a registered device module (CuPy, or the tests' stand-in)."""
    return module_of(a) is not onp


def _on_device(*xs) -> bool:
    return any(is_device_array(x) for x in xs)


# ------------------------------------------------------------------ vector space
class DeviceVSpace(VSpace):
    """autograd's vector space of device arrays of one shape and real dtype.

    Stock ``ArrayVSpace`` calls ``np.asarray(value)`` (CuPy refuses: no implicit
    device→host copy) and makes zeros/ones with NumPy (host arrays that CuPy will not
    add to its own). Here every vector is made by the array's module, on the device.
    """

    def __init__(self, value, module):
        self.shape = tuple(value.shape)
        self.dtype = onp.dtype(value.dtype)
        self.module = module
        if self.dtype.kind == "c":
            raise TypeError(f"DeviceVSpace: complex device arrays are not supported (dtype {self.dtype})")

    @property
    def size(self):
        return int(onp.prod(self.shape))

    @property
    def ndim(self):
        return len(self.shape)

    def zeros(self):
        return self.module.zeros(self.shape, dtype=self.dtype)

    def ones(self):
        return self.module.ones(self.shape, dtype=self.dtype)

    def standard_basis(self):
        for idx in onp.ndindex(*self.shape):
            v = self.zeros()
            v[idx] = 1
            yield v

    def randn(self):
        return self.module.asarray(onp.random.randn(*self.shape).astype(self.dtype))

    def _inner_prod(self, x, y):
        return anp_public.dot(anp_public.ravel(x), anp_public.ravel(y))


# ------------------------------------------------------ replacements (by name)
def repeat_to_match_shape(g, shape, dtype, axis, keepdims):
    """Broadcast a reduction's cotangent back to the input's shape (VJPs of sum, mean,
    var, std, prod, max, min). Stock adds ``onp.zeros(shape)``, a host array, and
    reshapes to a host ``np.array`` shape; here both are made for g's module."""
    if not _on_device(g):
        return STOCK["repeat_to_match_shape"](g, shape, dtype, axis, keepdims)
    if shape == ():
        return g, 1
    axis = list(axis) if isinstance(axis, tuple) else axis
    new_shape = onp.array(shape)  # host arithmetic on the shape only, as stock does it
    new_shape[axis] = 1
    num_reps = onp.prod(onp.array(shape)[axis])
    g = anp_public.reshape(g, tuple(int(s) for s in new_shape))
    return g + module_of(g).zeros(shape, dtype=dtype), num_reps


def _concatenate_args(axis, *args):
    """The forward of ``np.concatenate``. Stock ends with ``.view(np.ndarray)``, which a
    CuPy array takes for a dtype and refuses: the forward pass itself breaks."""
    if not _on_device(*args):
        return STOCK["concatenate_args"].fun(axis, *args)
    return module_of(next(a for a in args if is_device_array(a))).concatenate(args, axis)


def _dot_adjoint_0(B, G, A_meta, B_meta):
    """∂(A·B)/∂A applied to G (``np.dot``'s VJP). Stock ends with ``onp.asarray(out,
    dtype)``, an implicit device→host copy that CuPy refuses; the cast is done in place.

        A 0-d: Σ G ⊙ B;   B 0-d or 1-d: G ⊗ B;   else G contracted with Bᵀ over B's
        leading and last axes.
    """
    if not _on_device(B, G):
        return STOCK["dot_adjoint_0"].fun(B, G, A_meta, B_meta)
    mod = module_of(G if is_device_array(G) else B)
    A_ndim, A_dtype, B_ndim = A_meta[1], A_meta[2], B_meta[1]
    if A_ndim == 0:
        out = mod.tensordot(G, B, B_ndim)
    elif B_ndim <= 1:
        out = mod.tensordot(G, B, 0)
    else:
        out = mod.tensordot(G, mod.swapaxes(B, -1, -2), B_ndim - 1)
    return out.astype(A_dtype, copy=False)


def _dot_adjoint_1(A, G, A_meta, B_meta):
    """∂(A·B)/∂B applied to G (``np.dot``'s VJP); same reason as ``_dot_adjoint_0``.

        B 0-d: Σ G ⊙ A;   A 0-d or 1-d: G ⊗ A;   else A's leading axes contracted with
        G's leading axes; the last two axes swapped when B is a matrix (or more).
    """
    if not _on_device(A, G):
        return STOCK["dot_adjoint_1"].fun(A, G, A_meta, B_meta)
    mod = module_of(G if is_device_array(G) else A)
    A_ndim, B_ndim, B_dtype = A_meta[1], B_meta[1], B_meta[2]
    if B_ndim == 0:
        out = mod.tensordot(G, A, A_ndim)
    elif A_ndim <= 1:
        out = mod.tensordot(G, A, 0)
    else:
        out = mod.tensordot(G, A, [list(range(A_ndim - 1)), list(range(A_ndim - 1))])
    if B_ndim > 1 and A_ndim != 0:
        out = mod.swapaxes(out, -1, -2)
    return out.astype(B_dtype, copy=False)


def _array_from_scalar_or_array(array_args, array_kwargs, scalar):
    """``np.array(x)`` for one value (behind ``np.array`` and ``np.stack``). Stock calls
    ``np.array``, which converts a device array to the host (CuPy refuses)."""
    if not _on_device(scalar):
        return STOCK["_array_from_scalar_or_array"].fun(array_args, array_kwargs, scalar)
    return module_of(scalar).array(scalar, *array_args, **array_kwargs)


def _array_from_args(array_args, array_kwargs, *args):
    """``np.array([a, b, …])`` of traced values; stock ``np.array`` is a host conversion."""
    if not _on_device(*args):
        return STOCK["array_from_args"].fun(array_args, array_kwargs, *args)
    mod = module_of(next(a for a in args if is_device_array(a)))
    return mod.array(list(args), *array_args, **array_kwargs)


def _untake(x, idx, vs):
    """The VJP of indexing, ``A[idx]``: scatter-add the cotangent into zeros of A's space.
    Stock calls ``onp.add.at``; NumPy hands that to CuPy's ``__array_ufunc__``, which
    declines an index tuple (``X[:, 0]``), so the module's own ``add.at`` is called."""
    if not _on_device(x):
        return STOCK["untake"].fun(x, idx, vs)
    mod = module_of(x)
    if isinstance(idx, list) and (len(idx) == 0 or not isinstance(idx[0], slice)):
        idx = onp.array(idx, dtype="int64")  # an index list, as stock does (CuPy uploads index arrays)

    def mut_add(A):
        mod.add.at(A, idx, x)
        return A

    return SparseObject(vs, mut_add)


# ---------------------------------------------------- replacements (VJP tables)
def _where_vjp(stock):
    """``np.where``'s VJP. Stock pads with ``anp.zeros(g.shape)``, a host float64 array;
    here the zeros are the cotangent's module's (float64 too, as stock: same numbers)."""

    def vjp_argnums(argnums, ans, args, kwargs):
        if not _on_device(ans):
            return stock(argnums, ans, args, kwargs)
        c = args[0]
        mod = module_of(ans)

        def one(argnum, g):
            zeros = mod.zeros(g.shape)
            return anp_public.where(c, g, zeros) if argnum == 1 else anp_public.where(c, zeros, g)

        return lambda g: tuple(one(i, g) for i in argnums)

    return vjp_argnums


def _einsum_vjp(stock):
    """``np.einsum``'s VJP. Stock parses the subscripts with NumPy's
    ``_parse_einsum_input``, which calls ``asanyarray`` on every operand (a device→host
    copy CuPy refuses), and contracts summed-out indices with host ``onp.ones``. Here the
    parser sees host stand-ins of the same shapes and the ones are made on the device."""

    def vjp_argnums(argnums, ans, args, kwargs):
        if not _on_device(ans) or not isinstance(args[0], str):
            return stock(argnums, ans, args, kwargs)  # sublist form: stock uses only anp.* calls
        vjps = [_einsum_vjp_string(argnum, ans, args) for argnum in argnums]
        return lambda g: tuple(v(g) for v in vjps)

    return vjp_argnums


def _einsum_vjp_string(argnum, ans, operands):
    subscripts, ops = operands[0], operands[1:]
    proxies = [onp.broadcast_to(onp.zeros((), dtype=aw.result_type(o)), aw.shape(o)) for o in ops]
    in_subs, out_subs, _ = aw.parse_einsum_input(subscripts, *proxies)
    result_meta = aw.metadata(operands[argnum])
    i = argnum - 1
    subs = in_subs.split(",")
    wrt, other_subs = subs[i], subs[:i] + subs[i + 1:]
    rest = ops[:i] + ops[i + 1:]
    named = set(out_subs + "".join(other_subs))
    naked = [(k, c) for k, c in enumerate(wrt) if c not in named]  # summed out by this operand alone
    mod = module_of(ans)

    def vjp(g):
        if naked:
            dims, letters = zip(*naked)
            ones = mod.ones(tuple(int(aw.shape(ops[i])[k]) for k in dims))
            spec, args = [out_subs, "".join(letters)] + other_subs, (g, ones) + tuple(rest)
        else:
            spec, args = [out_subs] + other_subs, (g,) + tuple(rest)
        return av.unbroadcast(anp_public.einsum(",".join(spec) + "->" + wrt, *args), result_meta)

    return vjp


# ------------------------------------------------------------------- install
def _replace_primitive(name, raw, owner):
    """Swap the module global ``owner.name`` (an autograd primitive) for ``primitive(raw)``,
    with the old one's VJP (its makers look their helpers up by name, so they reach the
    new ones). Returns the new primitive."""
    old = getattr(owner, name)
    STOCK[name] = old
    new = primitive(raw)
    new.__name__ = name
    primitive_vjps[new] = primitive_vjps[old]
    setattr(owner, name, new)
    if hasattr(anp_public, name):
        setattr(anp_public, name, new)
    return new


def _patch_functions():
    if _patched["functions"]:
        return
    # sum/mean/var/std/prod/max/min VJPs broadcast with host onp.zeros
    STOCK["repeat_to_match_shape"] = av.repeat_to_match_shape
    av.repeat_to_match_shape = repeat_to_match_shape
    # np.concatenate's forward calls .view(np.ndarray): breaks the forward pass on CuPy
    new = _replace_primitive("concatenate_args", _concatenate_args, aw)
    primitive_jvps[new] = primitive_jvps[STOCK["concatenate_args"]]
    # np.dot's VJP casts with onp.asarray (implicit device→host copy)
    for name, raw in (("dot_adjoint_0", _dot_adjoint_0), ("dot_adjoint_1", _dot_adjoint_1)):
        def_linear(_replace_primitive(name, raw, av))
    # np.array / np.stack convert with np.array (implicit device→host copy)
    _replace_primitive("_array_from_scalar_or_array", _array_from_scalar_or_array, aw)
    _replace_primitive("array_from_args", _array_from_args, aw)
    # the VJP of indexing scatters with onp.add.at, which CuPy declines for index tuples
    defjvp(_replace_primitive("untake", _untake, av), "same")
    # np.where's VJP pads with host zeros; np.einsum's VJP parses operands with asanyarray
    # (autograd.numpy.where is a wrapper of the primitive numpy_wrapper.where, kept as _original_where)
    for name, fun, wrap in (("where", anp_public._original_where, _where_vjp), ("einsum", aw.einsum, _einsum_vjp)):
        STOCK[name + "_vjp"] = primitive_vjps[fun]
        primitive_vjps[fun] = wrap(primitive_vjps[fun])
    _patched["functions"] = True


def install(array_type, module) -> None:
    """Make autograd differentiate ``array_type`` arrays of ``module`` (``cupy.ndarray``
    of ``cupy``, or the tests' stand-in): box them, give them a vector space on the
    device, and install the function replacements above (once). Idempotent."""
    version = importlib.metadata.version("autograd")
    if not version.startswith(AUTOGRAD_SERIES):
        raise RuntimeError(f"minipeft.cupy_patches patches autograd {AUTOGRAD_SERIES}x (pinned in pyproject.toml); "
                           f"found autograd {version}")
    # autograd boxes only types it was told about: else new_box raises
    # "Can't differentiate w.r.t. type <class 'cupy.ndarray'>"
    ArrayBox.register(array_type)
    # vspace(x) picks a space by exact type; stock ArrayVSpace calls np.asarray(x)
    VSpace.register(array_type, lambda x: DeviceVSpace(x, module))
    _patch_functions()
    DEVICE_MODULES[array_type] = module

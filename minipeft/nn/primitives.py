"""Fused primitives with hand-written VJPs: what minipeft trains with.

Each function here is an ``autograd.extend.primitive``: autograd sees one node, and its
gradient is the closed form below, computed in the dtype of the inputs (float32 stays
float32; autograd's own VJPs of mean/var/max upcast to float64). The composed,
line-by-line readable versions of the same equations live in ``nn/reference.py``;
tests check the two agree, in value and in gradient.

Only differentiated arguments get a VJP: for a frozen W, ``linear`` computes no dW —
the PEFT saving. Each VJP closure holds only what its own gradient reads (dX = g W keeps W
and x's shape, not x), so an activation stays alive for the backward pass only when a
gradient that is actually computed needs it — the PEFT memory saving.

Speed notes (measured by benchmarks/bench.py; one BLAS thread): row sums are BLAS
matrix-vector products with a ones vector, several times faster than ``sum(-1)`` on
short rows, and row dots NumPy's ``vecdot``; a per-row shift or a per-column bias added
to a whole array is one BLAS rank-one update (``_add_outer``), where NumPy's broadcast
pays a fixed cost per row; elementwise chains update one buffer in place, because every
fresh temporary costs page faults on first touch; a forward with no gradient (nothing
traced) keeps nothing for a VJP; ``layer_norm`` and ``gelu`` hand x̂, 1/σ and
tanh(·) from the forward to their VJPs instead of recomputing them (``_Stash``);
softmax (in blocks of ``_SOFTMAX_BLOCKS`` times that) and both GELUs walk the array in row
blocks of about ``_BLOCK`` numbers, each block going through the whole chain (statistics,
then the update that reads them) while it is in cache, so the array is read from memory once
rather than once per step (benchmarks/kernel_bench.py measures them against PyTorch's).
"""
from __future__ import annotations

import math
import threading
import weakref

import numpy as onp
from autograd.extend import defvjp, defvjp_argnums, primitive
from autograd.tracer import isbox

_GELU_C = math.sqrt(2.0 / math.pi)  # a Python float: joins float32 without upcasting
_GELU_A = 0.044715


# ------------------------------------------------------------- shared helpers (speed)
class _Stash:
    """One slot through which a primitive's forward hands its intermediates to its VJP.

    autograd builds a node's VJP right after the forward, passing the very array the
    forward returned; ``take(ans)`` gives back what ``put`` stored with that array (and
    empties the slot), or None for any other array — an untraced call, a nested trace —
    and the VJP then recomputes. One tuple, so a reader never pairs an output with
    another call's intermediates.
    """

    __slots__ = ("slot",)

    def __init__(self):
        self.slot = (None, None)

    def put(self, out, aux):
        self.slot = (out, aux)
        return out

    def take(self, out):
        held, aux = self.slot
        if held is not out:
            return None
        self.slot = (None, None)
        return aux


_ONES = {}  # (dtype, n) -> read-only host ones vector, reused by the row and column sums


def _ones(x, n):
    """n ones in x's dtype, made by x's own array module (NumPy, or CuPy on a GPU); on the
    host one read-only vector per (dtype, n) is kept and reused (a few µs per call saved on
    every LayerNorm, softmax and bias gradient; at most 64 kept)."""
    if type(x) is not onp.ndarray:
        return onp.ones_like(x, shape=(n,))
    o = _ONES.get((x.dtype, n))
    if o is None:
        if len(_ONES) >= 64:
            _ONES.clear()
        o = _ONES[x.dtype, n] = onp.ones(n, x.dtype)
        o.flags.writeable = False
    return o


def _row_sum(x):
    """Σ_j x_j over the last axis, keepdims: one BLAS matrix-vector product with ones
    (3-4× faster than ``x.sum(-1)`` on rows of 64-512).  (..., n) -> (..., 1)."""
    return (x @ _ones(x, x.shape[-1]))[..., None]


def _row_dot(a, b):
    """Σ_j a_j b_j over the last axis, keepdims, with no (..., n) temporary.  -> (..., 1).
    NumPy ≥ 2's ``vecdot`` ufunc (a SIMD dot per row, faster than ``einsum`` on short rows,
    benchmarks/kernel_bench.py; a device array's module computes it where it has it); ``einsum`` otherwise."""
    if _VECDOT is not None:
        try:
            return _VECDOT(a, b)[..., None]
        except TypeError:  # a device array module without vecdot declines the ufunc
            pass
    return onp.einsum("...j,...j->...", a, b)[..., None]


_VECDOT = getattr(onp, "vecdot", None)  # NumPy ≥ 2.0


def _col_sum(x2):
    """Σ over the rows of a 2-D array as one BLAS product onesᵀ x.  (M, n) -> (n,)."""
    return _ones(x2, x2.shape[0]) @ x2


def _scipy_blas():
    """scipy.linalg.blas, its BLAS library held to NumPy's BLAS thread count (threadpoolctl):
    loaded on first use, after an entry point limited the libraries then loaded
    (runtime.apply), it would otherwise start one thread per core, which on these
    small element-wise updates only contend. ``?ger`` has no sum, so its bits do not
    depend on the thread count."""
    from scipy.linalg import blas  # a dependency of scikit-learn
    try:
        from threadpoolctl import ThreadpoolController
        libs = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        ours = [lib.num_threads for lib in libs if "numpy" in lib.filepath]
        for lib in libs:
            if ours and "numpy" not in lib.filepath and lib.num_threads != min(ours):
                lib.set_num_threads(min(ours))
    except Exception:  # pragma: no cover - threadpoolctl missing or a library it cannot drive
        pass
    return blas


_GER = {}  # dtype -> BLAS ?ger (scipy.linalg.blas, imported on first use), or None for other dtypes


def _add_outer(a2, u, v, alpha=1.0):
    """a2 += α u vᵀ in place, a2 (M, n), u (M,), v (n,); returns a2.  For a C-contiguous host
    float32/float64 a2, one BLAS ``?ger`` call on its transpose view: NumPy's broadcast
    ``a2 += α u[:, None] v`` pays a fixed cost per row, which dominates the arithmetic on short
    rows (benchmarks/kernel_bench.py). Where u or v is a vector of ones and α = ±1 (per-row shifts, per-column
    biases), each element gets one rounded add: the same numbers as NumPy's."""
    dt = a2.dtype
    if type(a2) is onp.ndarray and dt not in _GER:
        blas = _scipy_blas()
        _GER[dt] = {onp.dtype(onp.float32): blas.sger, onp.dtype(onp.float64): blas.dger}.get(dt)
    ger = _GER.get(dt) if type(a2) is onp.ndarray else None
    if ger is not None and a2.flags.c_contiguous and a2.size:
        r = ger(alpha, v, u, a=a2.T, overwrite_a=True)  # a2ᵀ += α v uᵀ
        if r.ctypes.data == a2.ctypes.data:  # updated in place (F-contiguous a2ᵀ of its dtype)
            return a2
    a2 += (alpha * u)[:, None] * v
    return a2


#: ``?ger`` walks the rows one BLAS axpy each: below rows of this length NumPy's subtraction is
#: as fast or faster
_GER_ROW = 64


def _sub_rows(x2, m, out=None):
    """x2 − m per row into ``out`` (default: x2 itself): x2 (M, n) array, m (M, 1), out (M, n).
    For C-contiguous host float32 / float64 rows of at least ``_GER_ROW`` numbers, a copy of x2
    then the rank-one update −m 1ᵀ (``_add_outer``: one BLAS ``?ger`` call, the same numbers as
    ``x2 - m``: −1 · 1 · m_i = −m_i exactly, then one rounded add), without NumPy's per-row
    cost; otherwise NumPy's subtraction."""
    out = x2 if out is None else out
    if (type(out) is onp.ndarray and out.dtype in (onp.float32, onp.float64) and out.flags.c_contiguous
            and out.shape[1] >= _GER_ROW):
        if out is not x2:
            out[...] = x2
        return _add_outer(out, m.reshape(-1), _ones(out, out.shape[1]), -1.0)
    return onp.subtract(x2, m, out=out)


#: elements per block of a chunked element-wise chain: small enough that the block's
#: temporaries stay in the L2 cache, large enough that NumPy's per-call cost is noise
_BLOCK = 1 << 16


def _blocks(n, device, size=None):
    """Slices covering range(n) in blocks of ``size`` (default ``_BLOCK``; one slice on a
    device, where one kernel over everything is the fast way)."""
    step = n if device else (size or _BLOCK)
    return [slice(i, i + step) for i in range(0, n, max(step, 1))]


def _row_step(size, n, b=None):
    """A block size for ``_blocks`` over the flat view of rows of n numbers: ``size``, or, when
    a bias b (n,) joins each block (added per row while the block is in cache), the most whole
    rows that fit in ``size`` (at least one)."""
    return size if b is None else max(1, size // max(n, 1)) * n


#: above this many numbers a bias goes in as one ``?ger`` call: below, NumPy's broadcast add
#: (a fixed cost per row) costs no more than the BLAS call's own fixed cost
_GER_MIN_SIZE = 1 << 15


def _add_bias_rows(u, b, n):
    """u += b per row, in u's own buffer: u, whole rows of n numbers (a C-contiguous (M, n)
    array, or a flat block of such rows from a ``_row_step`` block: a view); b: None (nothing
    to add) or a bias (n,).  U = x Wᵀ + b: ``linear``'s own bias, or that of a block while it
    is in cache. Where b has u's dtype, one rank-one update onesᵀ b (``_add_outer``: one
    rounded add per element, NumPy's numbers, without its fixed cost per row) for float32 and
    float64 host arrays of more than ``_GER_MIN_SIZE`` numbers; otherwise NumPy's in-place add
    (its casting)."""
    if b is not None:
        ub = u.reshape(-1, n)  # (rows, n): a view of the flat block
        if (type(ub) is onp.ndarray and ub.size > _GER_MIN_SIZE and ub.dtype in (onp.float32, onp.float64)
                and getattr(b, "dtype", None) == ub.dtype):
            _add_outer(ub, _ones(ub, ub.shape[0]), b)
        else:
            ub += b


def _empty(x):
    """A C-contiguous array of x's shape and dtype, by x's array module (its row view
    ``reshape(-1, n)`` is then a view, so writes through it land)."""
    return onp.empty(x.shape, x.dtype) if type(x) is onp.ndarray else onp.empty_like(x)


_SCRATCH = threading.local()  # per thread: dtype -> one flat host buffer, reused by _scratch


def _scratch(x, k, m):
    """k rows of m numbers in x's dtype, to use as a block chain's temporaries: on the host,
    views into one buffer per thread and dtype that is kept and reused (grown when too small),
    so a call faults no fresh pages in; on a device, new arrays.  Overwritten by the next call
    on the same thread: the rows must not outlive the caller."""
    if type(x) is not onp.ndarray:
        return [onp.empty_like(x, shape=(m,)) for _ in range(k)]
    bufs = _SCRATCH.__dict__
    buf = bufs.get(x.dtype)
    if buf is None or buf.shape[0] < k * m:
        buf = bufs[x.dtype] = onp.empty(k * m, x.dtype)
    return [buf[i * m:(i + 1) * m] for i in range(k)]


# --------------------------------------------------------------------------- linear
@primitive
def linear(x, W, b=None):
    """Affine map, weights stored d_out×d_in (equations.md, "Conventions").

        y = x Wᵀ + b

    x: (..., d_in), W: (d_out, d_in), b: (d_out,) or None  ->  y: (..., d_out).
    Applied to the 2-D view (B·T, d_in), so dW is one GEMM: dW = gᵀ x.
    """
    x2 = x.reshape(-1, x.shape[-1])  # (M, d_in)
    y = x2 @ W.T  # (M, d_out)
    _add_bias_rows(y, b, W.shape[0])  # + b
    return y.reshape(x.shape[:-1] + (W.shape[0],))  # (..., d_out)


def _linear_vjp_x(ans, x, W, b=None):
    # dX = g W needs W and x's shape only: holding x itself here would keep every frozen
    # linear's input alive until the backward pass (the activation memory PEFT saves)
    shape = x.shape
    return lambda g: (g.reshape(-1, g.shape[-1]) @ W).reshape(shape)  # (..., d_in)


def _linear_vjp_W(ans, x, W, b=None):
    # exercise linear-vjp [2 pts] "Transformer": return g ↦ ∂L/∂W = gᵀ x (d_out, d_in) of y = x Wᵀ + b, on 2-D views
    x2 = x.reshape(-1, x.shape[-1])  # (M, d_in)
    if type(x2) is onp.ndarray and not x2.flags.c_contiguous:  # a strided view (the CLS rows): hold a
        x2 = x2.copy()  # compact copy, so the closure does not keep the view's whole base alive

    def vjp(g):
        return g.reshape(-1, g.shape[-1]).T @ x2  # (d_out, d_in)

    return vjp
    # end exercise


def _linear_vjp_b(ans, x, W, b=None):
    return lambda g: _col_sum(g.reshape(-1, g.shape[-1]))  # (d_out,)


defvjp(linear, _linear_vjp_x, _linear_vjp_W, _linear_vjp_b)


# ----------------------------------------------------------------------- layer norm
_LN = _Stash()


def _ln_stats(x, eps, out=None):
    # exercise layer-norm [2 pts] "Transformer": x̂ = (x − μ) / sqrt(σ² + ε) and 1/sqrt(σ² + ε) (..., 1), last axis (x̂ into ``out`` if given)
    inv_d = 1.0 / x.shape[-1]
    xc = _shift_rows(x, _row_sum(x) * inv_d, out)  # x − μ
    rstd = 1.0 / onp.sqrt(_row_dot(xc, xc) * inv_d + eps)  # 1/σ, (..., 1)
    xc *= rstd
    return xc, rstd  # x̂ (..., d), 1/σ (..., 1)
    # end exercise


def _shift_rows(x, m, out=None):
    """x − m, m (..., 1) one number per row of x (..., n), into ``out`` (a new C-contiguous
    array if None): ``_sub_rows`` on the 2-D row views, the same numbers as ``x - m``."""
    out = _empty(x) if out is None else out
    n = x.shape[-1]
    _sub_rows(x.reshape(-1, n), m.reshape(-1, 1), out=out.reshape(-1, n))
    return out


def _ln_values(x, gamma, beta, eps=1e-5, stash=True):
    """LN(x) into one new array; ``stash``: x̂ and 1/σ are kept for the VJP (``_LN``), else
    x̂ is formed in the output's own buffer and nothing else of x's size is allocated."""
    x2 = x.reshape(-1, x.shape[-1])  # (M, d)
    y = _empty(x)
    y2 = y.reshape(x2.shape)  # a view of y
    stats = []  # (rows, x̂, 1/σ) of each row block, handed to the VJP
    for sl in _ln_blocks(x2):
        yb = y2[sl]
        xhat, rstd = _ln_stats(x2[sl], eps, out=None if stash else yb)
        _ln_affine(xhat, gamma, beta, yb)  # γ ⊙ x̂ + β
        if stash:
            stats.append((sl, xhat, rstd))
    return _LN.put(y, stats) if stash else y


def _ln_affine(xhat, gamma, beta, out):
    """out = γ ⊙ x̂ + β for a block of rows: x̂, out (rows, d), γ, β (d,); returns out. One
    multiplication, then β as one rank-one update (``_add_outer``: one rounded add per element,
    the numbers of ``x̂ * γ + β``). The forward and ``LNOutput.rebuild`` both go through here, so
    a rebuilt output has the forward's bits."""
    onp.multiply(xhat, gamma, out=out)
    return _add_outer(out, _ones(out, out.shape[0]), beta)  # + β


_layer_norm_node = primitive(_ln_values)  # what autograd traces: its VJP reads the stash


class LNOutput:
    """How to rebuild a traced LayerNorm's output y = γ ⊙ x̂ + β (equations.md, "Transformer")
    from what its own VJP keeps anyway: x̂ of each row block, and γ, β.

    A frozen-backbone step keeps LN's output only where a later node reads it in the backward
    pass — LoRA's ∂L/∂A = ∂uᵀ x reads LN₁'s output, ``frozen_mlp``'s recomputed x W₁ᵀ reads
    LN₂'s — while LN itself keeps x̂ of the same size: two (B, T, d) arrays for one. Such a node
    asks ``ln_output_of(x)`` and, when x is LN's output, holds this instead of x and calls
    ``rebuild()`` in its backward pass (one pass over (B, T, d), the forward's operations:
    the same bits). shape: y's (..., d).
    Where several nodes read the same y (LoRA's ∂A of q and of v both read LN₁'s output), each
    registers with ``reader()`` and the first to run rebuilds y: the others are handed that
    array (read-only), which is let go when the last registered reader has taken it.
    """

    __slots__ = ("stats", "gamma", "beta", "shape", "dtype", "readers", "shared", "__weakref__")

    def __init__(self, stats, gamma, beta, y):
        self.stats, self.gamma, self.beta = stats, gamma, beta
        self.shape, self.dtype = y.shape, y.dtype
        self.readers, self.shared = 0, None  # readers still to come; y while some are

    def reader(self):
        """Register one node that reads y once in its backward pass; returns its ``take``."""
        self.readers += 1
        return self.take

    def take(self):
        """y for one registered reader, read-only: rebuilt (``rebuild``) unless an earlier reader
        of this backward pass left it; held for the readers still to come, then let go.  -> (..., d)."""
        y = self.shared if self.shared is not None else self.rebuild()
        y.flags.writeable = False  # shared between readers: none may write into it
        self.readers -= 1
        self.shared = y if self.readers > 0 else None
        return y

    def rebuild(self):
        """y = γ ⊙ x̂ + β, a new array, bit for bit the forward's output.  -> (..., d)."""
        y = onp.empty(self.shape, self.dtype)
        y2 = y.reshape(-1, self.shape[-1])  # (M, d): LNOutput is made for outputs of ndim ≥ 1 only
        for sl, xhat, _ in self.stats:
            _ln_affine(xhat, self.gamma, self.beta, y2[sl])
        return y


def _dead():
    return None


#: (weak reference to the last traced LayerNorm's output y, weak reference to its LNOutput), one
#: tuple replaced whole, so a reader never pairs one call's y with another call's recipe
_LAST_LN = [(_dead, _dead)]


def ln_output_of(x):
    """The ``LNOutput`` that rebuilds x, when x is the very output of the last traced
    LayerNorm (host arrays; its VJP still alive), else None. Weakly held here: it lives as long
    as that LayerNorm's VJP or a node holding it, and never keeps y itself alive."""
    ref_y, ref_rec = _LAST_LN[0]
    y, rec = ref_y(), ref_rec()
    return rec if rec is not None and y is not None and y is x else None


def input_again(x):
    """What a VJP holds to read its input x again in the backward pass: a function returning x,
    to call once. When x is the last traced LayerNorm's output it is that ``LNOutput``'s ``take``
    (x itself is not held; rebuilt once for all the nodes reading it, the same bits, read-only),
    else x is held — a compact copy of a strided host view, so the
    closure does not keep the view's whole base alive.  x (..., d) -> (() -> (..., d))."""
    rec = ln_output_of(x)
    if rec is not None:
        return rec.reader()
    if type(x) is onp.ndarray and not x.flags.c_contiguous:
        x = x.copy()
    return lambda: x


def layer_norm(x, gamma, beta, eps=1e-5):
    """Layer normalisation over the last axis (equations.md, "Transformer").

        LN(x) = γ ⊙ (x − μ(x)) / sqrt(σ²(x) + ε) + β

    x: (..., d), gamma, beta: (d,)  ->  (..., d).  With x̂ = (x − μ)/σ, ĝ = g ⊙ γ:
        ∂L/∂x = (1/σ)(ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂)),  ∂L/∂γ = Σ_rows g ⊙ x̂,  ∂L/∂β = Σ_rows g
    (means over the last axis).  Traced by autograd (x, γ or β), it is one node
    (``_layer_norm_node``) that keeps x̂ and 1/σ for its VJP; untraced (a forward pass with
    no gradient), x̂ is formed in the output's own buffer and nothing is kept.
    """
    if isbox(x) or isbox(gamma) or isbox(beta):
        return _layer_norm_node(x, gamma, beta, eps)
    return _ln_values(x, gamma, beta, eps, stash=False)


def _ln_block_stats(x, eps):
    """[(rows, x̂, 1/σ)] of ``layer_norm``'s row blocks, recomputed (the forward's were not handed over)."""
    x2 = x.reshape(-1, x.shape[-1])
    return [(sl,) + _ln_stats(x2[sl], eps) for sl in _ln_blocks(x2)]


def _ln_blocks(x2):
    """LayerNorm's row blocks: one block up to 3 ``_BLOCK`` numbers (a short chain: splitting a
    small array adds more calls than it saves), above, blocks of whole rows of about 2 ``_BLOCK``
    numbers each (512 KiB of float32: the forward's x, x̂ and y, the backward's g, x̂, g ⊙ x̂ and
    ∂L/∂x of one block then fit in a 2 MiB L2 cache together); one slice on a device.
    Each block goes through the statistics, the normalisation and γ, β while it is in cache;
    the VJP walks the same blocks, computing all three gradients in one pass (∂L/∂γ, ∂L/∂β: a
    sum over the blocks). Whole-array passes over arrays of several such blocks measured slower
    (``benchmarks/kernel_bench.py`` times the kernel against PyTorch's)."""
    M, d = x2.shape[0], max(x2.shape[-1], 1)
    if M * d <= 3 * _BLOCK:
        return [slice(0, M)]
    return _blocks(M, type(x2) is not onp.ndarray, max(1, 2 * _BLOCK // d))


def _ln_vjp(argnums, ans, args, kwargs):
    x, gamma = args[0], args[1]
    eps = args[3] if len(args) > 3 else kwargs.get("eps", 1e-5)
    if any(i not in (0, 1, 2) for i in argnums):
        raise ValueError("layer_norm: eps is not differentiable")
    stats = _LN.take(ans)
    if stats is None:
        stats = _ln_block_stats(x, eps)
    rec = None
    if type(ans) is onp.ndarray and ans.ndim:  # a node reading y in its backward may rebuild it from this
        rec = LNOutput(stats, gamma, args[2], ans)
        _LAST_LN[0] = (weakref.ref(ans), weakref.ref(rec))
    d = x.shape[-1]
    # the closure keeps x's shape and dtype, not x: holding x would keep the residual stream
    # X_ℓ alive until the backward pass, though dx needs only x̂ and 1/σ (in ``stats``)
    shape, dtype = x.shape, x.dtype
    proto = None if type(x) is onp.ndarray else x  # a device array: its module makes dx

    def vjp(g):
        # one pass over the row blocks computes every requested gradient while g's block is in
        # cache. With s = 1/σ, ∂L/∂x = s ĝ − s mean(ĝ) − s mean(ĝ ⊙ x̂) x̂, every row statistic
        # a matrix-vector product: mean(ĝ) = g γ / d, mean(ĝ ⊙ x̂) = (g ⊙ x̂) γ / d; s ĝ = g ⊙ (s γᵀ)
        g2 = g.reshape(-1, d)
        dx = (onp.empty(shape, dtype) if proto is None else _empty(proto)) if 0 in argnums else None
        dx2 = None if dx is None else dx.reshape(-1, d)
        dgamma = dbeta = t = None
        for sl, xhat, rstd in (stats if rec is None else rec.stats):  # (rec: held for as long as this VJP)
            gb = g2[sl]
            if 0 in argnums or 1 in argnums:
                t = onp.multiply(gb, xhat, out=None if t is None else t[:xhat.shape[0]])  # g ⊙ x̂
            if 1 in argnums:
                part = _col_sum(t)  # Σ_rows g ⊙ x̂
                dgamma = part if dgamma is None else dgamma + part
            if 2 in argnums:
                part = _col_sum(gb)  # Σ_rows g
                dbeta = part if dbeta is None else dbeta + part
            if dx2 is not None:
                s = rstd[:, 0]  # (rows,)
                sm = s * ((t @ gamma) * (1.0 / d))  # s mean(ĝ ⊙ x̂)
                sa = s * ((gb @ gamma) * (1.0 / d))  # s mean(ĝ)
                gx = dx2[sl]
                gx[...] = 0
                _add_outer(gx, s, gamma)  # s γᵀ
                gx *= gb  # s ĝ
                gx -= onp.multiply(xhat, sm[:, None], out=t)  # − s mean(ĝ ⊙ x̂) x̂ (t's buffer reused)
                _add_outer(gx, sa, _ones(gx, d), -1.0)  # − s mean(ĝ)
        grads = {0: dx, 1: dgamma, 2: dbeta}
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(_layer_norm_node, _ln_vjp)


# ------------------------------------------------------------------------------ gelu
_GELU = _Stash()


def _gelu_tanh(x, y=None):
    """t = tanh(√(2/π)(x + 0.044715 x³)), block by block into one new buffer; given ``y``
    (an empty array like x), also writes GELU(x) = ½ x (1 + t) there while the block is in
    cache.  Returns t."""
    t = _empty(x)
    xf, tf = x.reshape(-1), t.reshape(-1)  # flat views (x copied if strided)
    yf = None if y is None else y.reshape(-1)
    for sl in _blocks(xf.shape[0], type(x) is not onp.ndarray):
        xb = xf[sl]
        u = onp.multiply(xb, xb, out=tf[sl])
        u *= xb
        u *= _GELU_A
        u += xb
        u *= _GELU_C
        onp.tanh(u, out=u)
        if yf is not None:
            yb = onp.add(u, 1.0, out=yf[sl])
            yb *= xb
            yb *= 0.5
    return t


@primitive
def gelu(x):
    """GELU, tanh form (as GPT-2 and PyTorch's ``approximate='tanh'``).

        GELU(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))

    Any shape -> same shape.  With t = tanh(·):
        GELU'(x) = ½ (1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²)
    """
    y = _empty(x)
    t = _gelu_tanh(x, y)
    return _GELU.put(y, t)


def _gelu_derivative(x, t):
    """GELU'(x) from t = tanh(·), written into t's buffer block by block: the temporaries are
    of one block's size, never of x's (the same operations, in the same order, as a whole-array
    evaluation: the bits do not depend on the block size)."""
    xf, tf = x.reshape(-1), t.reshape(-1)  # flat views (t is the forward's own buffer)
    sls = _blocks(xf.shape[0], type(x) is not onp.ndarray)
    rows = _scratch(xf, 2, min(sls[0].stop, xf.shape[0])) if sls else None
    for sl in sls:
        xb, tb = xf[sl], tf[sl]
        _gelu_derivative_into(xb, tb, tb, *(r[:xb.shape[0]] for r in rows))
    return t


def _gelu_derivative_into(x, t, out, s, w, squared=False):
    """GELU'(x) = ½ (1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²) of one block, from
    t = tanh(·), into ``out`` (x's shape: a buffer of its own, or x or t itself), through the
    scratch rows s, w (x's size; no other block-sized temporary, no copy); ``squared``: w holds
    x·x already (formed for t). The rounded operations are those of the formula read left to
    right as ((1 − t²)·x)·u + t + 1, ·½ with u = 3·0.044715·√(2/π) x² + √(2/π), in that order
    whatever ``out`` is: the same bits."""
    if not squared:
        onp.multiply(x, x, out=w)
    w *= 3 * _GELU_A * _GELU_C
    w += _GELU_C  # u
    onp.multiply(t, t, out=s)
    onp.subtract(1.0, s, out=s)  # 1 − t²
    s *= x  # x is read for the last time (out may be x)
    s *= w  # x (1 − t²) √(2/π)(1 + 3·0.044715 x²)
    onp.add(s, t, out=out)  # t is read for the last time (out may be t)
    out += 1.0
    out *= 0.5
    return out


def _gelu_vjp(ans, x):
    # autograd builds this right after the forward (and only when x is traced): x and t
    # are still in cache, so GELU'(x) is formed now and the backward is one product.
    t = _GELU.take(ans)  # the forward's tanh buffer, no longer needed: becomes GELU'(x)
    dydx = _gelu_derivative(x, t if t is not None else _gelu_tanh(x))
    return lambda g: g * dydx


defvjp(gelu, _gelu_vjp)


def _erf(x, out=None):
    """erf(x) elementwise in x's dtype (float32 stays float32), by x's array module (SciPy
    for NumPy, cupyx for CuPy); ``out``: a NumPy buffer to write into."""
    if type(x) is onp.ndarray or onp.isscalar(x):
        from scipy.special import erf  # a dependency of scikit-learn
        return erf(x) if out is None else erf(x, out=out)
    from cupyx.scipy.special import erf  # a device array
    return erf(x)


_GELU_ERF = _Stash()
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

#: float32 Φ(−a), a = |x| ≥ 0, as exp(−a²/2) · P(a)/R(a): P/R (degree 4 over a monic 5)
#: approximates ½ erfcx(a/√2) = ½ exp(a²/2) erfc(a/√2), smooth and slowly varying on [0, ∞),
#: in relative error; the coefficients (lowest order first; R's leading 1 left out) are the fit
#: made by ``benchmarks/gelu_erf_fit.py`` (tests/test_kernels.py checks they are its output)
_PHI_P = (48.93103790283203, 42.7879753112793, 17.854324340820312, 3.9503283500671387, 0.3989472985267639)
_PHI_R = (97.86207580566406, 163.65863037109375, 117.35786437988281, 45.738895416259766, 9.902671813964844)
#: the block's constants as float32 scalars (the values a float32 ufunc rounds the Python
#: floats to, so the same bits): NumPy converts such an operand faster on each call
_P32, _R32 = tuple(map(onp.float32, _PHI_P)), tuple(map(onp.float32, _PHI_R))
_HALF32, _NHALF32, _INV_SQRT_2PI32 = onp.float32(0.5), onp.float32(-0.5), onp.float32(_INV_SQRT_2PI)


def _gelu_erf32_block(xb, yb, db, a, e, r, q):
    """GELU(x) into yb and (unless db is None) GELU'(x) into db for one float32 block xb,
    through the scratch rows a, e, r, q (of xb's size; q may be db itself), every step in
    place; yb may be xb itself (x is read for the last time as yb is written).  With
    a = |x|, s = Φ(−a) (above):

        GELU(x)  = max(x, 0) − a s                      (max(x, 0) = ½ (x + a), exact)
        GELU'(x) = Φ(x) + x φ(x) = ½ + sign(x) (½ + a φ(a) − s),  φ(a) = exp(−a²/2)/√(2π)

    No 1 + erf(·) cancellation: Φ(x) for x < 0 keeps its relative accuracy far into the tail.
    """
    onp.absolute(xb, out=a)
    onp.multiply(a, a, out=e)
    e *= _NHALF32
    onp.exp(e, out=e)  # exp(−a²/2)
    s = onp.multiply(a, _P32[-1], out=q)  # P(a) by Horner
    s += _P32[-2]
    for c in _P32[-3::-1]:
        s *= a
        s += c
    onp.add(a, _R32[-1], out=r)  # R(a), monic
    for c in _R32[-2::-1]:
        r *= a
        r += c
    s /= r
    s *= e  # s = Φ(−a)
    if db is not None:
        onp.multiply(a, _INV_SQRT_2PI32, out=r)
        r *= e  # a φ(a)
        r -= s
        r += _HALF32
    onp.multiply(a, s, out=e)  # a s (exp(−a²/2) is no longer read)
    if db is not None:
        _copysign32(r, xb, db)  # s is no longer read
        db += _HALF32  # GELU'(x)
    onp.add(xb, a, out=yb)
    yb *= _HALF32  # max(x, 0)
    yb -= e  # GELU(x)


_ABS_BITS, _SIGN_BITS = onp.int32(0x7FFFFFFF), onp.int32(-0x80000000)


def _copysign32(m, x, out):
    """out = copysign(m, x) (|m| with x's sign) of float32 rows, bit for bit; on the host as
    three integer operations on the bits, (m & 0x7FFFFFFF) | (x & 0x80000000), which NumPy
    vectorizes (its ``copysign`` loop is not vectorized).  m is overwritten."""
    if type(x) is not onp.ndarray:
        onp.copysign(m, x, out=out)
        return
    mi, oi = m.view(onp.int32), out.view(onp.int32)
    onp.bitwise_and(mi, _ABS_BITS, out=mi)
    onp.bitwise_and(x.view(onp.int32), _SIGN_BITS, out=oi)
    onp.bitwise_or(oi, mi, out=oi)


def _gelu_erf_blocks(x, y, keep=None, b=None):
    """y = GELU(x) = x Φ(x) of any float array, block by block (each block's chain in cache);
    returns y.  y: an array like x to write into (x itself: in place).  keep: None, or an
    array like x that receives what the VJP reads (float32: GELU'(x), formed in the same pass
    by ``_gelu_erf32_block``; other dtypes: Φ(x), by SciPy's erf).  b: None, or a bias
    (x.shape[-1],) added to x first, block by block in x's own buffer (which must be the
    caller's to overwrite: U = x W₁ᵀ of ``linear_gelu``), so y = GELU(x + b).
    """
    f32 = x.dtype == onp.float32
    xf, yf = x.reshape(-1), y.reshape(-1)  # flat views (x copied if strided)
    kf = None if keep is None else keep.reshape(-1)
    n = x.shape[-1] if x.ndim else 1
    sls = _blocks(xf.shape[0], type(x) is not onp.ndarray, _row_step(_BLOCK, n, b))  # whole rows, for b
    m = sls[0].stop - sls[0].start if sls else 0
    scratch = _scratch(xf, (4 if keep is None else 3) if f32 else 1, min(m, xf.shape[0]))
    for sl in sls:
        xb, kb = xf[sl], (None if kf is None else kf[sl])
        _add_bias_rows(xb, b, n)  # x + b, in x's buffer
        rows = [t[:xb.shape[0]] for t in scratch]
        if f32:
            _gelu_erf32_block(xb, yf[sl], kb, *rows, *([] if kb is None else [kb]))
            continue
        p = onp.multiply(xb, _INV_SQRT2, out=rows[0] if kb is None else kb)
        host = type(p) is onp.ndarray
        p = _erf(p, out=p) if host else _erf(p)  # (SciPy writes in place)
        p += 1.0
        p *= 0.5  # Φ(x)
        if not host and kb is not None:
            kb[...] = p
        onp.multiply(xb, p, out=yf[sl])
    return y


def _gelu_erf32(x, derivative=True):
    """(GELU(x), GELU'(x) or None) of a float32 array, block by block (``_gelu_erf32_block``)."""
    d = _empty(x) if derivative else None
    return _gelu_erf_blocks(x, _empty(x), d), d


def _gelu_erf_values(x, stash=True):
    """GELU(x) = x Φ(x); ``stash``: also hand the VJP what it reads (float32: GELU'(x), formed
    in the same pass; other dtypes: Φ(x))."""
    keep = _empty(x) if stash else None
    y = _gelu_erf_blocks(x, _empty(x), keep)
    return _GELU_ERF.put(y, (x.dtype == onp.float32, keep)) if stash else y


_gelu_erf_node = primitive(_gelu_erf_values)  # what autograd traces: its VJP reads the stash


def gelu_erf(x):
    """GELU, exact form (BERT's ``hidden_act="gelu"``, PyTorch's default ``GELU()``).

        GELU(x) = x Φ(x) = ½ x (1 + erf(x / √2))

    Any shape -> same shape.  GELU'(x) = Φ(x) + x φ(x),  φ(x) = exp(−x²/2) / √(2π).

    float64 (and other dtypes): SciPy's erf (cupyx's on a device).  float32: Φ(−|x|) from a
    fitted rational function (``_gelu_erf32_block``), GELU'(x) formed in the same pass; measured
    against a float64 ``math.erfc`` reference on a dense grid (tests/test_kernels.py), its
    error is at most PyTorch's float32 GELU's, in absolute terms and in float32 ulps, for the
    value and the derivative, and within |Δ| ≤ 2⁻²³ (|x| + |GELU(x)|) everywhere. ±inf give NaN.
    Traced by autograd, it is one node (``_gelu_erf_node``); untraced (a forward pass with no
    gradient), GELU'(x) is not formed at all.
    """
    return _gelu_erf_node(x) if isbox(x) else _gelu_erf_values(x, stash=False)


def _gelu_erf_derivative(x, Phi):
    """GELU'(x) = Φ(x) + x φ(x) written into Phi's buffer, block by block (the same
    operations, in the same order, as one whole-array pass)."""
    xf, pf = x.reshape(-1), Phi.reshape(-1)
    for sl in _blocks(xf.shape[0], type(x) is not onp.ndarray):
        xb = xf[sl]
        d = xb * xb
        d *= -0.5
        onp.exp(d, out=d)
        d *= xb
        d *= _INV_SQRT_2PI  # x φ(x)
        d += pf[sl]
        pf[sl] = d
    return Phi


def _gelu_erf_vjp(ans, x):
    # built right after the forward: float32's forward formed GELU'(x) already; otherwise Φ
    # (no longer needed) becomes GELU'(x) in its own buffer
    held = _GELU_ERF.take(ans)
    if held is None:  # not handed over: recompute
        held = (True, _gelu_erf32(x)[1]) if x.dtype == onp.float32 else (False, 0.5 * (1.0 + _erf(x * _INV_SQRT2)))
    done, buf = held
    dydx = buf if done else _gelu_erf_derivative(x, buf)
    return lambda g: g * dydx


defvjp(_gelu_erf_node, _gelu_erf_vjp)


# --------------------------------------------------------------------------- softmax
#: rows up to this long take their maximum as log₂ n shifted element-wise maxima over the
#: whole flat block (``_row_max``): NumPy's ``max(axis=-1)`` pays a fixed cost per row that
#: dominates on short rows (the attention scores of short texts); longer rows use
#: ``fmax.reduceat`` over the flat block at the row starts (``_row_fmax``): the same maxima as
#: ``max`` (fmax skips a NaN that ``max`` keeps, but a row holding a NaN has a NaN sum either
#: way, so its softmax is NaN all the same), without ``reduce(axis=-1)``'s per-row cost
#: (benchmarks/kernel_bench.py)
_SHORT_ROW = 64
#: softmax's blocks are this many ``_BLOCK``s (1 MiB of float32, an L2 cache's size): its chain
#: is short (six NumPy calls a block, each with a fixed cost), so a larger block pays that cost on
#: more numbers while the block still fits in cache
_SOFTMAX_BLOCKS = 4


def _row_max(src, scratch):
    """max over the last axis, keepdims, of a host array (..., n), n ≤ ``_SHORT_ROW``, with two
    flat scratch buffers of at least src.size numbers: after k steps of w[i] = max(w[i], w[i + 2ᵏ⁻¹])
    (ping-pong, no overlap), w[i] is the maximum of f[i : i + 2ᵏ] (f the flat src); row r's
    maximum is then w[r n], or max(w[r n], w[r n + n − 2ᵏ]) when n is not a power of two.
    Exact (a maximum has no rounding), so the same numbers as ``src.max(-1)``."""
    n = src.shape[-1]
    f = src.reshape(-1)  # (a copy if src is strided)
    N = f.shape[0]
    if n < 2 or N == 0:
        return src.max(axis=-1, keepdims=True)
    bufs, w, L = (scratch[0][:N], scratch[1][:N]), 1, N
    for k in range(n.bit_length() - 1):  # 2ᵏ ≤ n
        L -= w
        f = onp.maximum(f[:L], f[w:w + L], out=bufs[k % 2][:L])
        w *= 2
    m = f[0:N:n] if w == n else onp.maximum(f[0:N:n], f[n - w:N:n])  # (rows,) the last start fits in f: L = N − w + 1
    return m.reshape(src.shape[:-1] + (1,))


def _row_fmax(src):
    """fmax over the last axis, keepdims, of a host array (..., n) with n ≥ 1: one
    ``fmax.reduceat`` over the flat array at the row starts 0, n, 2n, … (exact: the same numbers
    as ``fmax.reduce(src, axis=-1)``)."""
    n = src.shape[-1]
    f = src.reshape(-1)  # (a copy if src is strided)
    if f.shape[0] == 0:
        return onp.fmax.reduce(src, axis=-1, keepdims=True)
    return onp.fmax.reduceat(f, onp.arange(0, f.shape[0], n)).reshape(src.shape[:-1] + (1,))


def _lead_blocks(shape, size=None):
    """Index tuples covering an array of ``shape`` (..., n) in blocks of whole rows, each about
    ``size`` numbers (default ``_BLOCK``; at least one row): the leading axes are walked one index
    at a time down to the first axis whose sub-arrays fit, which is cut into slices (``_blocks``).
    For attention scores (B, h, T, S) the blocks are a few whole heads of one batch element, or
    a few whole batch elements; for a 2-D array (M, n), row blocks."""
    size = size or _BLOCK
    if len(shape) < 2:
        return [()]
    k, sub = len(shape) - 2, shape[-1]  # the axis to slice, the numbers under one index of it
    while k > 0 and sub * shape[k] <= size:
        sub *= shape[k]
        k -= 1
    return [idx + (sl,) for idx in onp.ndindex(*shape[:k]) for sl in _blocks(shape[k], False, max(1, size // max(sub, 1)))]


def _sub(a, index):
    """The block ``index`` (from ``_lead_blocks`` of the full shape) of an array ``a`` that
    broadcasts to that shape (same number of axes; its length-1 axes are kept whole)."""
    return a[tuple(i if a.shape[ax] > 1 else (0 if isinstance(i, int) else slice(None))
                   for ax, i in enumerate(index))]


def _softmax_blocks(z, shape=None):
    """``_lead_blocks`` of z's shape (or of ``shape``) in blocks of ``_SOFTMAX_BLOCKS`` · ``_BLOCK``
    numbers (one block on a device)."""
    return [()] if type(z) is not onp.ndarray else _lead_blocks(shape or z.shape, _SOFTMAX_BLOCKS * _BLOCK)


def _softmax_scratch(z):
    """Scratch for ``_row_max`` of one ``_softmax`` block of z (None for long rows or a device array)."""
    n = z.shape[-1]
    if type(z) is not onp.ndarray or n > _SHORT_ROW:
        return None
    return [onp.empty(min(z.size, max(_SOFTMAX_BLOCKS * _BLOCK, n)), z.dtype) for _ in range(2)]


def _softmax(z, inplace=False, scale=None, bias=None, scratch=None):
    """softmax over the last axis of z, or of ``scale`` · z + ``bias`` when given (the
    attention scores: scale = 1/sqrt(d_h), bias the key mask's 0 / −∞, an array with z's
    number of axes that broadcasts to z, e.g. (B, 1, 1, S) for scores (B, h, T, S));
    ``inplace`` overwrites z (a C-contiguous buffer the caller owns); ``scratch``: that of
    ``_softmax_scratch`` (made here when None). Whole rows go through scale, bias, max, exp
    and the normalisation one block (``_lead_blocks``) at a time while the block is in cache;
    the bias is broadcast within each block, never materialised.
    """
    n, e, host = z.shape[-1], (z if inplace else _empty(z)), type(z) is onp.ndarray
    scratch = scratch if scratch is not None else _softmax_scratch(z)
    for ix in _softmax_blocks(z):  # (one block on a device: one kernel per step over everything)
        src, eb = z[ix], e[ix]
        held = inplace  # whether src is already in eb's buffer
        if scale is not None:
            src, held = onp.multiply(src, scale, out=eb), True
        if bias is not None:
            src, held = onp.add(src, _sub(bias, ix) if ix else bias, out=eb), True
        eb = eb.reshape(-1, n)  # the block's rows (a view: e is C-contiguous)
        src = eb if held else src.reshape(-1, n)  # in eb's buffer: the same view, so _sub_rows copies nothing
        if scratch:
            m = _row_max(src, scratch)
        else:  # (fmax: see _SHORT_ROW)
            m = _row_fmax(src) if host else src.max(axis=-1, keepdims=True)
        _sub_rows(src, m, out=eb)  # z − max z
        onp.exp(eb, out=eb)
        eb /= _row_sum(eb)  # one matrix-vector product over the block's rows
    return e


def _softmax_vjp_of(y, g, scale=None, out=None):
    """y ⊙ (g − Σ_j g_j y_j) over the last axis (times ``scale`` when given), row block by
    row block into one new buffer (or into ``out``, C-contiguous of y's shape; ``out`` may be g
    itself, a buffer the caller owns: then g is overwritten, with no copy); y and g are read
    once each."""
    n = y.shape[-1]
    dz = _empty(y) if out is None else out
    y2, d2 = y.reshape(-1, n), dz.reshape(-1, n)
    g2 = d2 if dz is g else g.reshape(-1, n)  # in place: the same row view, so _sub_rows copies nothing
    for sl in _softmax_blocks(y2):
        yb, db = y2[sl], d2[sl]
        _sub_rows(g2[sl], _row_dot(g2[sl], yb), out=db)  # g − Σ_j g_j y_j
        db *= yb
        if scale is not None:
            db *= scale
    return dz


@primitive
def softmax(z):
    """Numerically stable softmax over the last axis.

        softmax(z)_j = exp(z_j − max z) / Σ_i exp(z_i − max z)

    Any shape (..., n) -> (..., n).  Gradient: y ⊙ (g − Σ_j g_j y_j), y = softmax(z).
    """
    return _softmax(z)


defvjp(softmax, lambda y, z: lambda g: _softmax_vjp_of(y, g))


@primitive
def log_softmax(z):
    """log softmax over the last axis: z − max z − log Σ exp(z − max z). (..., n) -> (..., n)."""
    zc = z - z.max(axis=-1, keepdims=True)
    return zc - onp.log(onp.exp(zc).sum(axis=-1, keepdims=True))


defvjp(log_softmax, lambda ls, z: lambda g: g - onp.exp(ls) * g.sum(axis=-1, keepdims=True))


@primitive
def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of integer labels.

        L = −(1/B) Σ_b log softmax(logits_b)[y_b]

    logits: (B, C), labels: (B,) int in [0, C)  ->  scalar (0-d array, logits' dtype).
    Gradient: (softmax(logits) − onehot(y)) / B.
    """
    ls = log_softmax(logits)
    return -ls[onp.arange(len(labels)), labels].mean()


def _ce_vjp(ans, logits, labels):
    def vjp(g):
        p = softmax(logits)
        p[onp.arange(len(labels)), labels] -= 1.0
        return p * (g / len(labels))

    return vjp


defvjp(cross_entropy, _ce_vjp)

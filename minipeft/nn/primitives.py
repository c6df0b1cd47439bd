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
short rows; elementwise chains update one buffer in place, because every fresh
temporary costs page faults on first touch; ``layer_norm`` and ``gelu`` hand x̂, 1/σ and
tanh(·) from the forward to their VJPs instead of recomputing them (``_Stash``);
softmax (in blocks of ``_SOFTMAX_BLOCKS`` times that) and both GELUs walk the array in row
blocks of about ``_BLOCK`` numbers, each block going through the whole chain (statistics,
then the update that reads them) while it is in cache, so the array is read from memory once
rather than once per step (benchmarks/kernel_bench.py measures them against PyTorch's).
"""
from __future__ import annotations

import math

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
    """Σ_j a_j b_j over the last axis, keepdims, with no (..., n) temporary.  -> (..., 1)."""
    return onp.einsum("...j,...j->...", a, b)[..., None]


def _col_sum(x2):
    """Σ over the rows of a 2-D array as one BLAS product onesᵀ x.  (M, n) -> (n,)."""
    return _ones(x2, x2.shape[0]) @ x2


#: elements per block of a chunked element-wise chain: small enough that the block's
#: temporaries stay in the L2 cache, large enough that NumPy's per-call cost is noise
_BLOCK = 1 << 16


def _blocks(n, device, size=None):
    """Slices covering range(n) in blocks of ``size`` (default ``_BLOCK``; one slice on a
    device, where one kernel over everything is the fast way)."""
    step = n if device else (size or _BLOCK)
    return [slice(i, i + step) for i in range(0, n, max(step, 1))]


def _row_blocks(x2):
    """Row slices of a 2-D (M, n) array, each about ``_BLOCK`` numbers (whole rows): a
    row-wise chain (statistics, then the update that reads them) runs on one block while
    it is in cache, instead of streaming the whole array through memory once per step."""
    return _blocks(x2.shape[0], type(x2) is not onp.ndarray, max(1, _BLOCK // max(x2.shape[-1], 1)))


def _empty(x):
    """A C-contiguous array of x's shape and dtype, by x's array module (its row view
    ``reshape(-1, n)`` is then a view, so writes through it land)."""
    return onp.empty(x.shape, x.dtype) if type(x) is onp.ndarray else onp.empty_like(x)


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
    if b is not None:
        y += b
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


def _ln_stats(x, eps):
    # exercise layer-norm [2 pts] "Transformer": x̂ = (x − μ) / sqrt(σ² + ε) and 1/sqrt(σ² + ε) (..., 1), last axis
    inv_d = 1.0 / x.shape[-1]
    xc = x - _row_sum(x) * inv_d  # x − μ
    rstd = 1.0 / onp.sqrt(_row_dot(xc, xc) * inv_d + eps)  # 1/σ, (..., 1)
    xc *= rstd
    return xc, rstd  # x̂ (..., d), 1/σ (..., 1)
    # end exercise


@primitive
def layer_norm(x, gamma, beta, eps=1e-5):
    """Layer normalisation over the last axis (equations.md, "Transformer").

        LN(x) = γ ⊙ (x − μ(x)) / sqrt(σ²(x) + ε) + β

    x: (..., d), gamma, beta: (d,)  ->  (..., d).  With x̂ = (x − μ)/σ, ĝ = g ⊙ γ:
        ∂L/∂x = (1/σ)(ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂)),  ∂L/∂γ = Σ_rows g ⊙ x̂,  ∂L/∂β = Σ_rows g
    (means over the last axis).
    """
    x2 = x.reshape(-1, x.shape[-1])  # (M, d)
    y = _empty(x)
    y2 = y.reshape(x2.shape)  # a view of y
    stats = []  # (rows, x̂, 1/σ) of each row block, handed to the VJP
    for sl in _ln_blocks(x2):
        xhat, rstd = _ln_stats(x2[sl], eps)
        onp.multiply(xhat, gamma, out=y2[sl])
        y2[sl] += beta
        stats.append((sl, xhat, rstd))
    return _LN.put(y, stats)


def _ln_block_stats(x, eps):
    """[(rows, x̂, 1/σ)] of ``layer_norm``'s row blocks, recomputed (the forward's were not handed over)."""
    x2 = x.reshape(-1, x.shape[-1])
    return [(sl,) + _ln_stats(x2[sl], eps) for sl in _ln_blocks(x2)]


def _ln_blocks(x2):
    """LayerNorm's row blocks: one, the whole (M, d) array. Its chain is short (two row
    statistics, the normalisation, γ and β), and blocks of ``_BLOCK`` numbers measured slower
    than one pass at MiniLM's sizes (benchmarks/kernel_bench.py); the VJP still computes all
    three gradients in one pass."""
    return [slice(0, x2.shape[0])]


def _ln_vjp(argnums, ans, args, kwargs):
    x, gamma = args[0], args[1]
    eps = args[3] if len(args) > 3 else kwargs.get("eps", 1e-5)
    if any(i not in (0, 1, 2) for i in argnums):
        raise ValueError("layer_norm: eps is not differentiable")
    stats = _LN.take(ans)
    if stats is None:
        stats = _ln_block_stats(x, eps)
    d = x.shape[-1]
    # the closure keeps x's shape and dtype, not x: holding x would keep the residual stream
    # X_ℓ alive until the backward pass, though dx needs only x̂ and 1/σ (in ``stats``)
    shape, dtype = x.shape, x.dtype
    proto = None if type(x) is onp.ndarray else x  # a device array: its module makes dx

    def vjp(g):
        # one pass over the row blocks computes every requested gradient while g's block is in cache
        g2 = g.reshape(-1, d)
        dx = (onp.empty(shape, dtype) if proto is None else _empty(proto)) if 0 in argnums else None
        dx2 = None if dx is None else dx.reshape(-1, d)
        dgamma = dbeta = None
        for sl, xhat, rstd in stats:
            gb, t = g2[sl], None
            if 1 in argnums:
                t = gb * xhat  # g ⊙ x̂ (block), its buffer reused below
                part = _col_sum(t)  # Σ_rows g ⊙ x̂
                dgamma = part if dgamma is None else dgamma + part
            if 2 in argnums:
                part = _col_sum(gb)  # Σ_rows g
                dbeta = part if dbeta is None else dbeta + part
            if dx2 is not None:
                gx = onp.multiply(gb, gamma, out=dx2[sl])  # ĝ
                c = _row_dot(gx, xhat) * (1.0 / d)
                t = xhat * c if t is None else onp.multiply(xhat, c, out=t)  # x̂ ⊙ mean(ĝ ⊙ x̂)
                t += _row_sum(gx) * (1.0 / d)  # + mean(ĝ)
                gx -= t
                gx *= rstd
        grads = {0: dx, 1: dgamma, 2: dbeta}
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(layer_norm, _ln_vjp)


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
    for sl in _blocks(xf.shape[0], type(x) is not onp.ndarray):
        xb, tb = xf[sl], tf[sl]
        s = tb * tb
        onp.subtract(1.0, s, out=s)  # 1 − t²
        s *= xb
        u = xb * xb
        u *= 3 * _GELU_A * _GELU_C
        u += _GELU_C
        s *= u  # x (1 − t²) √(2/π)(1 + 3·0.044715 x²)
        s += tb
        s += 1.0
        s *= 0.5
        tb[...] = s
    return t


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


def _gelu_erf32_block(xb, yb, db, a, e, r, q):
    """GELU(x) into yb and (unless db is None) GELU'(x) into db for one float32 block xb,
    through the scratch rows a, e, r, q (of xb's size; q may be db itself), every step in
    place.  With a = |x|, s = Φ(−a) (above):

        GELU(x)  = max(x, 0) − a s                      (max(x, 0) = ½ (x + a), exact)
        GELU'(x) = Φ(x) + x φ(x) = ½ + sign(x) (½ + a φ(a) − s),  φ(a) = exp(−a²/2)/√(2π)

    No 1 + erf(·) cancellation: Φ(x) for x < 0 keeps its relative accuracy far into the tail.
    """
    onp.absolute(xb, out=a)
    onp.multiply(a, a, out=e)
    e *= -0.5
    onp.exp(e, out=e)  # exp(−a²/2)
    s = onp.multiply(a, _PHI_P[-1], out=q)  # P(a) by Horner
    s += _PHI_P[-2]
    for c in _PHI_P[-3::-1]:
        s *= a
        s += c
    onp.add(a, _PHI_R[-1], out=r)  # R(a), monic
    for c in _PHI_R[-2::-1]:
        r *= a
        r += c
    s /= r
    s *= e  # s = Φ(−a)
    if db is not None:
        onp.multiply(a, _INV_SQRT_2PI, out=r)
        r *= e  # a φ(a)
        r -= s
        r += 0.5
    onp.add(xb, a, out=yb)
    yb *= 0.5  # max(x, 0)
    a *= s
    yb -= a  # GELU(x)
    if db is not None:
        onp.copysign(r, xb, out=db)
        db += 0.5  # GELU'(x)


def _gelu_erf32(x, derivative=True):
    """(GELU(x), GELU'(x) or None) of a float32 array, block by block (``_gelu_erf32_block``)."""
    y, d = _empty(x), (_empty(x) if derivative else None)
    xf, yf = x.reshape(-1), y.reshape(-1)  # flat views (x copied if strided)
    df = None if d is None else d.reshape(-1)
    sls = _blocks(xf.shape[0], type(x) is not onp.ndarray)
    scratch = [onp.empty_like(xf[sls[0]]) for _ in range(3 if derivative else 4)] if sls else []
    for sl in sls:
        xb = xf[sl]
        rows = [t[:xb.shape[0]] for t in scratch]
        db = None if df is None else df[sl]
        _gelu_erf32_block(xb, yf[sl], db, *rows, *([db] if derivative else []))
    return y, d


def _gelu_erf_values(x, stash=True):
    """GELU(x) = x Φ(x); ``stash``: also hand the VJP what it reads (float32: GELU'(x), formed
    in the same pass; other dtypes: Φ(x))."""
    if x.dtype == onp.float32:
        y, dydx = _gelu_erf32(x, derivative=stash)
        return _GELU_ERF.put(y, (True, dydx)) if stash else y
    y, Phi = _empty(x), _empty(x)
    xf, yf, pf = x.reshape(-1), y.reshape(-1), Phi.reshape(-1)  # flat views (x copied if strided)
    for sl in _blocks(xf.shape[0], type(x) is not onp.ndarray):  # each block's chain in cache
        p = onp.multiply(xf[sl], _INV_SQRT2, out=pf[sl])
        host = type(p) is onp.ndarray
        p = _erf(p, out=p) if host else _erf(p)  # (SciPy writes in place)
        p += 1.0
        p *= 0.5  # Φ(x)
        if not host:
            pf[sl] = p
        onp.multiply(xf[sl], p, out=yf[sl])
    return _GELU_ERF.put(y, (False, Phi)) if stash else y


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
#: ``fmax.reduce``: the same maxima as ``max`` in less time (it skips a NaN that ``max`` keeps,
#: but a row holding a NaN has a NaN sum either way, so its softmax is NaN all the same)
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


_GER = {}  # dtype -> BLAS ?ger (scipy.linalg.blas, imported on first use) or None
#: ``?ger`` walks the rows one BLAS axpy each: below rows of this length NumPy's subtraction is
#: as fast or faster
_GER_ROW = 64


def _sub_rows(x2, m, out=None):
    """x2 − m per row into ``out`` (default: x2 itself): x2 (M, n) host array, m (M, 1), out a
    C-contiguous (M, n).  As the rank-one update outᵀ += (−1) 1 mᵀ of a copy of x2, one BLAS
    ``?ger`` call for float32 / float64 (the same numbers as ``x2 - m``: −1 · 1 · m_i = −m_i
    exactly, then one rounded add), without NumPy's per-row cost; rows shorter than
    ``_GER_ROW`` and other dtypes: NumPy."""
    out = x2 if out is None else out
    dt = out.dtype
    if dt not in _GER and type(out) is onp.ndarray:
        from scipy.linalg import blas  # a dependency of scikit-learn
        _GER[dt] = {onp.dtype(onp.float32): blas.sger, onp.dtype(onp.float64): blas.dger}.get(dt)
    ger = _GER.get(dt)
    if ger is not None and type(out) is onp.ndarray and out.flags.c_contiguous and out.shape[1] >= _GER_ROW:
        if out is not x2:
            out[...] = x2
        r = ger(-1.0, _ones(out, out.shape[1]), m.reshape(-1), a=out.T, overwrite_a=True)
        if r.ctypes.data == out.ctypes.data:  # updated in place (F-contiguous outᵀ of out's dtype)
            return out
        out[...] = x2  # (not updated in place: NumPy below)
    return onp.subtract(x2, m, out=out)


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
        if scale is not None:
            src = onp.multiply(src, scale, out=eb)
        if bias is not None:
            src = onp.add(src, _sub(bias, ix) if ix else bias, out=eb)
        src, eb = src.reshape(-1, n), eb.reshape(-1, n)  # the block's rows (views: e is C-contiguous)
        if scratch:
            m = _row_max(src, scratch)
        else:  # (fmax: see _SHORT_ROW)
            m = onp.fmax.reduce(src, axis=-1, keepdims=True) if host else src.max(axis=-1, keepdims=True)
        _sub_rows(src, m, out=eb)  # z − max z
        onp.exp(eb, out=eb)
        eb /= _row_sum(eb)  # one matrix-vector product over the block's rows
    return e


def _softmax_vjp_of(y, g, scale=None, out=None):
    """y ⊙ (g − Σ_j g_j y_j) over the last axis (times ``scale`` when given), row block by
    row block into one new buffer (or into ``out``, C-contiguous of y's shape); y and g are
    read once each."""
    n = y.shape[-1]
    dz = _empty(y) if out is None else out
    y2, g2, d2 = y.reshape(-1, n), g.reshape(-1, n), dz.reshape(-1, n)
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

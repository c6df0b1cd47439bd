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
tanh(·) from the forward to their VJPs instead of recomputing them (``_Stash``).
"""
from __future__ import annotations

import math

import numpy as onp
from autograd.extend import defvjp, defvjp_argnums, primitive

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


def _ones(x, n):
    """n ones in x's dtype, made by x's own array module (NumPy, or CuPy on a GPU)."""
    return onp.ones_like(x, shape=(n,))


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
    xhat, rstd = _ln_stats(x, eps)
    y = xhat * gamma
    y += beta
    return _LN.put(y, (xhat, rstd))


def _ln_vjp(argnums, ans, args, kwargs):
    x, gamma = args[0], args[1]
    eps = args[3] if len(args) > 3 else kwargs.get("eps", 1e-5)
    stats = _LN.take(ans)
    xhat, rstd = stats if stats is not None else _ln_stats(x, eps)
    d = x.shape[-1]

    def vjp_x(g):
        gx = g * gamma  # ĝ
        t = xhat * (_row_dot(gx, xhat) * (1.0 / d))  # x̂ ⊙ mean(ĝ ⊙ x̂)
        t += _row_sum(gx) * (1.0 / d)  # + mean(ĝ)
        gx -= t
        gx *= rstd
        return gx

    def vjp(g):
        out = []
        for i in argnums:
            if i == 0:
                out.append(vjp_x(g))
            elif i == 1:
                out.append(_col_sum((g * xhat).reshape(-1, d)))  # (d,)
            elif i == 2:
                out.append(_col_sum(g.reshape(-1, d)))  # (d,)
            else:
                raise ValueError("layer_norm: eps is not differentiable")
        return tuple(out)

    return vjp


defvjp_argnums(layer_norm, _ln_vjp)


# ------------------------------------------------------------------------------ gelu
_GELU = _Stash()


def _gelu_tanh(x):
    u = x * x  # tanh(√(2/π)(x + 0.044715 x³)), built in one buffer
    u *= x
    u *= _GELU_A
    u += x
    u *= _GELU_C
    return onp.tanh(u, out=u)


@primitive
def gelu(x):
    """GELU, tanh form (as GPT-2 and PyTorch's ``approximate='tanh'``).

        GELU(x) = ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))

    Any shape -> same shape.  With t = tanh(·):
        GELU'(x) = ½ (1 + t) + ½ x (1 − t²) √(2/π) (1 + 3·0.044715 x²)
    """
    t = _gelu_tanh(x)
    y = t + 1.0
    y *= x
    y *= 0.5
    return _GELU.put(y, t)


#: elements per block of a chunked element-wise chain: small enough that the block's
#: temporaries stay in the L2 cache, large enough that NumPy's per-call cost is noise
_BLOCK = 1 << 15


def _blocks(n, device):
    """Slices covering range(n) in blocks of ``_BLOCK`` (one slice on a device, where one
    kernel over everything is the fast way)."""
    step = n if device else _BLOCK
    return [slice(i, i + step) for i in range(0, n, max(step, 1))]


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


def _erf(x):
    """erf(x) elementwise in x's dtype, by x's array module (SciPy for NumPy, cupyx for CuPy)."""
    if type(x) is onp.ndarray or onp.isscalar(x):
        from scipy.special import erf  # a dependency of scikit-learn
    else:  # a device array
        from cupyx.scipy.special import erf
    return erf(x)


_GELU_ERF = _Stash()
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@primitive
def gelu_erf(x):
    """GELU, exact form (BERT's ``hidden_act="gelu"``, PyTorch's default ``GELU()``).

        GELU(x) = x Φ(x) = ½ x (1 + erf(x / √2))

    Any shape -> same shape.  GELU'(x) = Φ(x) + x φ(x),  φ(x) = exp(−x²/2) / √(2π).
    """
    phi = _erf(x * _INV_SQRT2)
    phi += 1.0
    phi *= 0.5  # Φ(x)
    return _GELU_ERF.put(x * phi, phi)


def _gelu_erf_vjp(ans, x):
    Phi = _GELU_ERF.take(ans)
    if Phi is None:
        Phi = 0.5 * (1.0 + _erf(x * _INV_SQRT2))
    dydx = x * x
    dydx *= -0.5
    onp.exp(dydx, out=dydx)
    dydx *= x
    dydx *= _INV_SQRT_2PI  # x φ(x)
    dydx += Phi
    return lambda g: g * dydx


defvjp(gelu_erf, _gelu_erf_vjp)


# --------------------------------------------------------------------------- softmax
def _softmax(z, inplace=False):
    """softmax over the last axis; ``inplace`` overwrites z (a buffer the caller owns)."""
    m = z.max(axis=-1, keepdims=True)
    if inplace:
        z -= m
        e = z
    else:
        e = z - m
    onp.exp(e, out=e)
    e /= _row_sum(e)
    return e


def _softmax_vjp_of(y, g):
    """y ⊙ (g − Σ_j g_j y_j) over the last axis, in one buffer."""
    dz = g - _row_dot(g, y)
    dz *= y
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

"""What every graded test shares: tiny configs, random trees, the naive references, checks.

The references here are written from equations.md with plain loops and NumPy, never by
calling the code under test, and never through another exercise's region (a test of one
exercise must pass when only that exercise is solved). Every check fails with a message
saying what was compared and a hint.
"""
import math

import numpy as onp

import minipeft as mp

RTOL, ATOL = 1e-10, 1e-12  # float64 throughout


def tiny_cfg(**kw):
    """A 2-layer ViT on 8×8 grey images, patch 4: m = 4 patches, T = 1 + 4 rows, d = 8, h = 2, d_ff = 12."""
    base = dict(d=8, h=2, N=2, d_ff=12, n_classes=3, image_size=8, patch=4)
    base.update(kw)
    return mp.Config(**base)


def rng(seed=0):
    return onp.random.default_rng(seed)


def randomize(tree, seed=0, scale=0.3, center=None):
    """A copy of a nested dict/list of arrays with every leaf replaced by N(center or leaf, scale²)
    noise (so biases ≠ 0, γ ≠ 1, LoRA's B ≠ 0, adapters' W_up ≠ 0)."""
    g = rng(seed)

    def walk(t):
        if isinstance(t, dict):
            return {k: walk(v) for k, v in t.items()}
        if isinstance(t, list):
            return [walk(v) for v in t]
        a = onp.asarray(t)
        base = a if center is None else onp.full_like(a, center)
        return (base + scale * g.standard_normal(a.shape)).astype(a.dtype)

    return walk(tree)


def backbone(cfg, seed=0):
    """φ of ``cfg`` with every leaf perturbed (mp.init_params, then ``randomize``)."""
    return randomize(mp.init_params(cfg, seed=seed, dtype="float64"), seed=seed + 100)


def with_method(cfg, m, seed=0):
    """``backbone(cfg, seed)`` with method m's θ attached (mp.attach) and perturbed (``randomize``)."""
    params = mp.attach(backbone(cfg, seed), [m], cfg, seed=seed)
    params[m.name] = randomize(params[m.name], seed=seed)
    return params


def leaf_paths(tree, prefix=()):
    """Every leaf's path, by a plain walk: ("blocks", 0, "attn", "W_q"), …"""
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in leaf_paths(v, prefix + (k,))]
    if isinstance(tree, list):
        return [p for i, v in enumerate(tree) for p in leaf_paths(v, prefix + (i,))]
    return [prefix]


# ------------------------------------------------------------------------ checks
class GradingFailure(AssertionError):
    """A check that failed: what was compared, and a hint."""


def fail(what, hint):
    raise GradingFailure(f"{what}\n  hint: {hint}")


def check(cond, what, hint):
    if not cond:
        fail(what, hint)


def check_shape(a, shape, what, hint):
    got = tuple(getattr(a, "shape", ()))
    check(got == tuple(shape), f"{what}: shape {got}, expected {tuple(shape)}", hint)


def check_close(actual, expected, what, hint, rtol=RTOL, atol=ATOL):
    """actual ≈ expected (same shape, |Δ| ≤ atol + rtol·|expected|)."""
    expected = onp.asarray(expected)
    check_shape(actual, expected.shape, what, hint)
    actual = onp.asarray(actual)
    if not onp.all(onp.isfinite(actual)):
        fail(f"{what}: has NaN or inf", hint)
    err = onp.abs(actual - expected)
    bad = err > atol + rtol * onp.abs(expected)
    if bad.any():
        idx = tuple(int(i) for i in onp.argwhere(bad)[0])
        fail(f"{what}: differs from the reference (max |Δ| = {err.max():.3e}; first at index {idx}: "
             f"got {actual[idx]:.6g}, expected {expected[idx]:.6g})", hint)


def check_same(actual, expected, what, hint):
    """Bit-for-bit equal (values that must pass through untouched)."""
    check_shape(actual, onp.shape(expected), what, hint)
    check(onp.array_equal(onp.asarray(actual), onp.asarray(expected)), f"{what}: changed, but must be unchanged",
          hint)


def check_gradient(f, x, what, hint, n=4, eps=1e-6, seed=0):
    """autograd's gradient of the scalar f at x against central differences along n random directions."""
    from autograd import grad

    try:
        g = grad(f)(x)
    except Exception as e:  # an op autograd cannot differentiate, an in-place write, ...
        fail(f"{what}: autograd could not differentiate it ({type(e).__name__}: {e})", hint)
    check_shape(g, x.shape, f"{what}: gradient", hint)
    r = rng(seed)
    for _ in range(n):
        u = r.standard_normal(x.shape)
        fd = (f(x + eps * u) - f(x - eps * u)) / (2 * eps)
        ag = float(onp.sum(g * u))
        check(abs(ag - fd) <= 1e-6 * max(1.0, abs(fd)),
              f"{what}: gradient along a random direction {ag:.8g}, finite differences {fd:.8g}", hint)


# -------------------------------------------------------------- naive references
def naive_linear(x, W, b=None):
    """y = x Wᵀ + b by an explicit sum over d_in.  x (..., d_in), W (d_out, d_in)."""
    y = onp.zeros(x.shape[:-1] + (W.shape[0],))
    for i in range(W.shape[1]):
        y = y + x[..., i:i + 1] * W[:, i]
    return y if b is None else y + b


def naive_softmax(z):
    """softmax over the last axis, one row at a time (math.exp after subtracting the row max)."""
    z = onp.asarray(z, dtype=float)
    out = onp.empty_like(z)
    for idx in onp.ndindex(z.shape[:-1]):
        row = z[idx]
        e = [math.exp(v - max(row)) for v in row]
        s = sum(e)
        out[idx] = [v / s for v in e]
    return out


def naive_attention(Q, K, V, h):
    """(Z, A): per batch b, head j, query t: A[b,j,t,s] = softmax_s(q·k_s / sqrt(d_h)); Z[b,t] = concat_j Σ_s A v_s."""
    B, T, d = Q.shape
    S, dh = K.shape[1], d // h
    A = onp.zeros((B, h, T, S))
    Z = onp.zeros((B, T, d))
    for b in range(B):
        for j in range(h):
            cols = slice(j * dh, (j + 1) * dh)
            for t in range(T):
                scores = [float(onp.dot(Q[b, t, cols], K[b, s, cols])) / math.sqrt(dh) for s in range(S)]
                A[b, j, t] = naive_softmax(onp.array(scores))
                Z[b, t, cols] = sum(A[b, j, t, s] * V[b, s, cols] for s in range(S))
    return Z, A


def naive_layer_norm(x, gamma, beta, eps):
    """γ ⊙ (x − μ) / sqrt(σ² + ε) + β, one row at a time."""
    out = onp.empty_like(x, dtype=float)
    for idx in onp.ndindex(x.shape[:-1]):
        row = [float(v) for v in x[idx]]
        mu = sum(row) / len(row)
        var = sum((v - mu) ** 2 for v in row) / len(row)
        out[idx] = [(v - mu) / math.sqrt(var + eps) for v in row]
    return out * gamma + beta


def naive_gelu(x):
    """GELU, tanh form: ½ x (1 + tanh(√(2/π)(x + 0.044715 x³)))."""
    return 0.5 * x * (1.0 + onp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def naive_bottleneck(x, a):
    """ReLU(x W_downᵀ + b_down) W_upᵀ + b_up."""
    z = naive_linear(x, a["W_down"], a["b_down"])
    return naive_linear(onp.where(z > 0, z, 0.0), a["W_up"], a["b_up"])


def call(fn, *args, what, hint, **kwargs):
    """fn(*args, **kwargs), turning an error into a failure with the hint (NotImplementedError, MemoryError pass)."""
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, GradingFailure, MemoryError):
        raise
    except Exception as e:
        fail(f"{what}: raised {type(e).__name__}: {e}", hint)

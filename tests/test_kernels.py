"""The fast element-wise kernels (nn/primitives.py, nn/attention.py) against their composed
twins (nn/reference.py, ``attention_composed``), in value and VJP, float64 and float32, at
shapes that span several row blocks (and with tiny blocks, so that ragged last blocks and
the per-batch key-mask rows are exercised); the exact GELU against math.erf over a dense
grid in both dtypes; and the float32 BERT path (masked, post-LN, erf GELU) with no float64
anywhere in its forward or backward pass.
"""
import math

import autograd.numpy as anp
import numpy as onp
import pytest
from autograd import make_vjp

import minipeft as mp
from minipeft import tree
from minipeft.nn import primitives as P
from minipeft.nn import reference as R
from minipeft.nn.attention import attention, attention_composed
from test_bert_forks import TINY, batch
from test_float32_methods import _not32, record  # noqa: F401  (record: a fixture)

#: tolerance per dtype (the two sides round differently; float32's twin mixes in float64)
TOL = {"float64": 1e-11, "float32": 2e-5}


def _vjp_pair(fast, twin, args, argnums, dtype, seed=0):
    """(value, VJP) of ``fast`` and of ``twin`` at ``args`` for one random cotangent."""
    r = onp.random.default_rng(seed)
    out = []
    for f in (fast, twin):
        vjp, y = make_vjp(f, argnums)(*args)
        g = r.standard_normal(onp.shape(y)).astype(dtype) if not out else out[0][2]
        out.append((y, vjp(g), g))
    return out


def _close(a, b, dtype, what):
    a, b = onp.asarray(a), onp.asarray(b)
    scale = max(float(onp.abs(b).max()), 1.0)
    err = float(onp.abs(a.astype(onp.float64) - b.astype(onp.float64)).max()) / scale
    assert err <= TOL[dtype], f"{what}: max |Δ| / max(|twin|, 1) = {err:.2e} > {TOL[dtype]}"


@pytest.fixture(params=[None, 64], ids=["default-blocks", "tiny-blocks"])
def blocks(request, monkeypatch):
    """Run with the kernels' own block size, and with blocks of 64 numbers (ragged)."""
    if request.param is not None:
        monkeypatch.setattr(P, "_BLOCK", request.param)
    return request.param


def _x(shape, dtype, seed, scale=1.0, shift=0.0):
    return (shift + scale * onp.random.default_rng(seed).standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layer_norm_equals_its_twin_with_bert_epsilon(blocks, dtype):
    # rows far from zero mean (post-LN residual sums), ε = 1e-12 as in BERT, 3·37 rows of 50
    x = _x((3, 37, 50), dtype, 0, scale=2.0, shift=5.0)
    gam, bet = _x(50, dtype, 1, 0.3, 1.0), _x(50, dtype, 2, 0.3)
    for eps in (1e-12, 1e-5):
        (yf, gf, _), (yr, gr, _) = _vjp_pair(lambda a, b, c: P.layer_norm(a, b, c, eps),
                                              lambda a, b, c: R.layer_norm(a, b, c, eps), (x, gam, bet),
                                              (0, 1, 2), dtype)
        assert yf.dtype == onp.dtype(dtype) and all(g.dtype == onp.dtype(dtype) for g in gf)
        _close(yf, yr, dtype, f"LN value (ε={eps})")
        for name, a, b in zip(("x", "γ", "β"), gf, gr):
            _close(a, b, dtype, f"∂L/∂{name} of LN (ε={eps})")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layer_norm_one_gradient_at_a_time(dtype):
    """Each requested gradient alone (a frozen γ, β or x) equals the same one of all three."""
    x, gam, bet = _x((4, 9, 16), dtype, 3), _x(16, dtype, 4, 0.2, 1.0), _x(16, dtype, 5, 0.2)
    _, (_, all3, g) = None, _vjp_pair(P.layer_norm, R.layer_norm, (x, gam, bet), (0, 1, 2), dtype)[0]
    for i in range(3):
        vjp, _ = make_vjp(P.layer_norm, i)(x, gam, bet)
        onp.testing.assert_array_equal(vjp(g), all3[i])


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_add_outer_is_numpys_broadcast_add(dtype):
    """The BLAS rank-one update (float32/float64; NumPy for other dtypes and strided arrays)
    gives NumPy's numbers for a per-row shift and a per-column bias, in place."""
    a, m, b = _x((37, 50), dtype, 9), _x(37, dtype, 10), _x(50, dtype, 11)
    for arr in (a.copy(), onp.asfortranarray(a)):
        want = arr - m[:, None] + b
        out = P._add_outer(P._add_outer(arr, m, P._ones(arr, 50), -1.0), P._ones(arr, 37), b)
        assert out is arr and arr.dtype == onp.dtype(dtype)
        onp.testing.assert_array_equal(arr, want)


@pytest.mark.parametrize("ger_above", [None, 0], ids=["default-threshold", "ger-always"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_linear_adds_its_bias_with_numpys_numbers(monkeypatch, ger_above, dtype):
    """y = x Wᵀ + b: the bias added as a rank-one update (float32/float64, above
    ``_GER_MIN_SIZE`` numbers; forced here with 0) is NumPy's ``x2 @ W.T + b`` to the bit, for
    a batch (B, T, d_in), a single row (d_in,) and a bias of another dtype (NumPy's casting: y
    keeps the product's dtype)."""
    if ger_above is not None:
        monkeypatch.setattr(P, "_GER_MIN_SIZE", ger_above)
    x, W, b = _x((3, 7, 20), dtype, 12), _x((9, 20), dtype, 13), _x(9, dtype, 14)
    want = x.reshape(-1, 20) @ W.T
    want += b
    got = P.linear(x, W, b)
    assert got.shape == (3, 7, 9) and got.dtype == onp.dtype(dtype)
    assert got.tobytes() == want.tobytes()
    one = x[0, 0][None] @ W.T  # (1, 9): a one-row product (BLAS may sum it otherwise than row 0 above)
    one += b
    assert P.linear(x[0, 0], W, b).tobytes() == one.tobytes()
    b64 = b.astype(onp.float64) + 1e-3  # not representable in float16/float32: cast as NumPy casts
    want64 = x.reshape(-1, 20) @ W.T
    want64 += b64
    assert P.linear(x, W, b64).reshape(-1, 9).tobytes() == want64.tobytes()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_untraced_layer_norm_is_the_traced_value_and_keeps_nothing(blocks, dtype):
    """A forward with no gradient (x̂ formed in the output's buffer, nothing stashed) gives the
    traced node's very numbers, equals the composed twin, and leaves x untouched."""
    x, gam, bet = _x((3, 37, 50), dtype, 6, 2.0, 5.0), _x(50, dtype, 7, 0.3, 1.0), _x(50, dtype, 8, 0.3)
    keep = x.copy()
    P._LN.put(None, None)
    y = P.layer_norm(x, gam, bet, 1e-12)
    assert P._LN.slot == (None, None)  # nothing kept for a VJP that will never run
    onp.testing.assert_array_equal(x, keep)
    _, traced = make_vjp(lambda a: P.layer_norm(a, gam, bet, 1e-12))(x)
    assert y.dtype == onp.dtype(dtype)
    onp.testing.assert_array_equal(y, traced)
    _close(y, R.layer_norm(x, gam, bet, 1e-12), dtype, "untraced LN value")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_softmax_equals_its_twin(blocks, dtype):
    z = _x((3, 41, 29), dtype, 6, scale=4.0)
    (yf, (gf,), _), (yr, (gr,), _) = _vjp_pair(P.softmax, R.softmax, (z,), (0,), dtype)
    assert yf.dtype == gf.dtype == onp.dtype(dtype)
    _close(yf, yr, dtype, "softmax value")
    _close(gf, gr, dtype, "softmax VJP")
    onp.testing.assert_array_equal(z, _x((3, 41, 29), dtype, 6, scale=4.0))  # input untouched


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_attention_weights_equal_the_composed_attention(blocks, dtype, masked):
    """Scale, key mask and softmax fused in one block loop = the composed equation."""
    B, T, S, d, h = 3, 7, 9, 16, 4
    Q, K, V = _x((B, T, d), dtype, 7), _x((B, S, d), dtype, 8), _x((B, S, d), dtype, 9)
    mask = (onp.arange(S)[None] < onp.array([[9], [4], [6]])) if masked else None
    fast = lambda q, k, v: attention(q, k, v, h, return_weights=True, mask=mask)[1]  # noqa: E731
    twin = lambda q, k, v: attention_composed(q, k, v, h, return_weights=True, mask=mask)[1]  # noqa: E731
    (Af, gf, _), (Ar, gr, _) = _vjp_pair(fast, twin, (Q, K, V), (0, 1), dtype)
    assert Af.dtype == onp.dtype(dtype)
    _close(Af, Ar, dtype, "attention weights")
    if masked:
        assert (Af[~mask[:, None, None, :].repeat(h, 1).repeat(T, 2)] == 0).all()
    for name, a, b in zip("QK", gf, gr):
        assert a.dtype == onp.dtype(dtype)
        _close(a, b, dtype, f"∂L/∂{name} through the weights")


@pytest.mark.parametrize("fn,twin", [(P.gelu_erf, R.gelu_erf), (P.gelu, R.gelu)], ids=["erf", "tanh"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gelu_equals_its_twin(blocks, fn, twin, dtype):
    x = _x((5, 33, 19), dtype, 10, scale=2.0)[:, ::2]  # a strided view
    (yf, (gf,), _), (yr, (gr,), _) = _vjp_pair(fn, twin, (x,), (0,), dtype)
    assert yf.dtype == gf.dtype == onp.dtype(dtype)
    _close(yf, yr, dtype, "GELU value")
    _close(gf, gr, dtype, "GELU VJP")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exact_gelu_over_a_dense_grid_against_math_erf(dtype):
    """GELU(x) = ½ x (1 + erf(x/√2)) at 200,001 points of [−10, 10] against math.erf in
    float64 (on the same, dtype-rounded, inputs). The bound comes from the dtype: erf and
    every step round to half an ulp, so |Δ| ≤ 2 ε (|x| + |GELU(x)|) with ε its unit
    roundoff; GELU'(x) = Φ(x) + x φ(x) likewise, against the same closed form."""
    x = onp.linspace(-10, 10, 200_001).astype(dtype)
    x64 = x.astype(onp.float64)
    erf = onp.frompyfunc(math.erf, 1, 1)
    Phi = 0.5 * (1.0 + erf(x64 / math.sqrt(2.0)).astype(onp.float64))
    want = x64 * Phi
    dwant = Phi + x64 * onp.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)
    eps = float(onp.finfo(dtype).eps) / 2
    y = P.gelu_erf(x)
    assert y.dtype == onp.dtype(dtype)
    bound = 2 * eps * (onp.abs(x64) + onp.abs(want))
    assert (onp.abs(y.astype(onp.float64) - want) <= bound).all(), float(onp.max(onp.abs(y - want) / bound))
    vjp, _ = make_vjp(P.gelu_erf)(x)
    dy = vjp(onp.ones_like(x))
    assert dy.dtype == onp.dtype(dtype)
    dbound = 4 * eps * (1.0 + onp.abs(x64) + x64 * x64)
    assert (onp.abs(dy.astype(onp.float64) - dwant) <= dbound).all()


#: the float32 exact GELU's test grid: 200,001 points of [−10, 10], the negative tail to −20
#: (GELU(x) leaves float32's normal range near −13), large positive values, and ±0
_GRID32 = onp.concatenate([onp.linspace(-10, 10, 200_001), -onp.geomspace(10, 20, 2001),
                           onp.geomspace(10, 1e4, 2001), [0.0, -0.0]]).astype(onp.float32)


def _gelu_errors(y, dy, x):
    """{(value|derivative, abs|ulp): max error} of float32 GELU(x) and GELU'(x) against float64
    references with Φ(x) = ½ erfc(−x/√2) (math.erfc: no 1 + erf cancellation in the tail);
    ulp = the float32 spacing at the reference value."""
    x64 = x.astype(onp.float64)
    Phi = onp.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x64.tolist()])
    refs = {"value": x64 * Phi, "derivative": Phi + x64 * onp.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)}
    out = {}
    for what, got in (("value", y), ("derivative", dy)):
        d = onp.abs(onp.asarray(got, onp.float64) - refs[what])
        out[what, "abs"] = float(d.max())
        out[what, "ulp"] = float((d / onp.spacing(onp.abs(refs[what]).astype(onp.float32))).max())
    return out


def test_float32_exact_gelu_is_at_least_as_exact_as_pytorchs():
    """The accuracy criterion of the float32 exact GELU: on the grid, its largest error —
    absolute and in float32 ulps, of GELU(x) and of GELU'(x) — is at most that of PyTorch's
    float32 ``F.gelu`` (and its autograd derivative) against the same float64 reference."""
    torch = pytest.importorskip("torch")
    x = _GRID32
    vjp, y = make_vjp(P.gelu_erf)(x)
    ours = _gelu_errors(y, vjp(onp.ones_like(x)), x)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.gelu(tx)
    ty.backward(torch.ones_like(ty))
    theirs = _gelu_errors(ty.detach().numpy(), tx.grad.numpy(), x)
    table = {k: f"minipeft {ours[k]:.3g}, torch {theirs[k]:.3g}" for k in ours}
    print(table)
    assert all(ours[k] <= theirs[k] for k in ours), table


def test_float32_exact_gelu_tail_keeps_its_relative_accuracy():
    """For x < 0, GELU(x) = x Φ(x) is tiny and SciPy's ½(1 + erf) form loses it to
    cancellation; the float32 kernel computes Φ(−a) = exp(−a²/2)·P(a)/R(a) directly, so its
    relative error grows only with the rounding of a² in exp(−a²/2):
    |Δ| / |GELU(x)| ≤ 2⁻²³ (8 + x²) wherever GELU(x) < 0 is a normal float32."""
    x = _GRID32[_GRID32 < 0]
    x64 = x.astype(onp.float64)
    want = x64 * onp.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x64.tolist()])
    keep = onp.abs(want) >= onp.finfo(onp.float32).tiny
    x, x64, want = x[keep], x64[keep], want[keep]
    rel = onp.abs(P.gelu_erf(x).astype(onp.float64) - want) / onp.abs(want)
    bound = 2.0 ** -23 * (8.0 + x64 * x64)
    assert (rel <= bound).all(), float((rel / bound).max())


def test_float32_exact_gelu_constants_are_the_fits_output():
    """_PHI_P, _PHI_R are what benchmarks/gelu_erf_fit.py makes (as float32), and that fit's
    relative error is below float32's unit roundoff 2⁻²⁴ (so rounding, not the fit, dominates)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gelu_erf_fit
    p, r, err = gelu_erf_fit.fit()
    onp.testing.assert_allclose(P._PHI_P, p.astype(onp.float32), rtol=1e-6)
    onp.testing.assert_allclose(P._PHI_R, r.astype(onp.float32), rtol=1e-6)
    assert err < 2.0 ** -24


def test_float32_copysign_on_the_bits_is_numpys_copysign():
    """The float32 GELU' kernel's sign step, (m & 0x7FFFFFFF) | (x & 0x80000000) on the bits,
    against ``numpy.copysign`` byte for byte, ±0, ±inf and NaN included."""
    r = onp.random.default_rng(16)
    m, x = (r.standard_normal(999).astype(onp.float32) for _ in range(2))
    m[:6] = [-0.0, 0.0, onp.nan, -onp.inf, 1e-45, -1e-45]
    x[:6] = [-0.0, 0.0, -onp.inf, onp.nan, -1.0, 3.0]
    want = onp.copysign(m, x)
    out = onp.empty_like(m)
    P._copysign32(m.copy(), x, out)
    assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exact_gelu_vjp_recomputes_when_not_handed_over(dtype):
    x = _x((3, 70), dtype, 11, 2.0)
    g = _x(x.shape, dtype, 12)
    y = P._gelu_erf_node(x)  # the traced node's forward: hands its stash over
    stashed = P._gelu_erf_vjp(y, x)(g)
    recomputed = P._gelu_erf_vjp(y.copy(), x)(g)
    onp.testing.assert_array_equal(stashed, recomputed)
    assert P._GELU_ERF.take(y) is None


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_untraced_exact_gelu_is_the_traced_value_with_nothing_stashed(blocks, dtype):
    """A forward pass with no gradient forms no GELU'(x) and stashes nothing; same numbers."""
    x = _x((9, 61), dtype, 15, 3.0)
    y = P.gelu_erf(x)
    assert P._GELU_ERF.take(y) is None
    _, y_traced = make_vjp(P.gelu_erf)(x)
    onp.testing.assert_array_equal(y, y_traced)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_float32_bert_path_stays_float32(record, method):  # noqa: F811
    """The masked, post-LN, erf-GELU, mean-pooled BERT forward and backward (LoRA on q, v
    or full fine-tuning) in float32: no intermediate, no cotangent is float64."""
    cfg = TINY
    methods = [mp.method_class("lora")(r=2, targets=("q", "v"))] if method == "lora" else [mp.FullFineTune()]
    p = mp.attach(mp.init_params(cfg, 0, "float32"), methods, cfg, seed=0)
    if method == "lora":
        for blk in p["lora"]["blocks"]:  # B ≠ 0, so ∂L/∂A is a real product too
            for t in blk.values():
                t["B"] = t["B"] + onp.float32(0.01)
    theta, phi = tree.split(p, mp.trainable(methods))
    x, y = batch(), onp.array([0, 2, 1])
    assert not x[:, 2].all()  # padded rows: the key mask is on
    value, g = mp.value_and_grad(lambda th: mp.loss(th, phi, x, y, cfg, methods), theta)
    assert value.dtype == onp.float32
    assert not _not32(record["forward"]), record["forward"]
    assert not _not32(record["backward"]), record["backward"]
    assert not [tree.path_str(q) for q, a in tree.leaves_with_paths(g) if a.dtype != onp.float32]
    assert mp.forward(p, x, cfg, methods).dtype == onp.float32


def test_float32_exact_gelu_on_a_device_equals_the_host(blocks):
    """The float32 kernel through the fake device's array module (CuPy's stand-in): every
    step a ufunc on device arrays, no host array mixed in; the same numbers as on the host."""
    from fake_device import fake_xp

    from minipeft import backend
    x = _x((7, 45), "float32", 13, 3.0)
    g = _x(x.shape, "float32", 14)
    vjp, y = make_vjp(P.gelu_erf)(x)
    dx = vjp(g)
    prev = backend.xp()
    backend.use_backend(fake_xp)
    try:
        dvjp, dy = make_vjp(P.gelu_erf)(fake_xp.asarray(x))
        ddx = dvjp(fake_xp.asarray(g))
    finally:
        backend.use_backend("numpy" if prev is onp else prev)
    onp.testing.assert_array_equal(dy.get(), y)
    onp.testing.assert_array_equal(ddx.get(), dx)

"""Adapters (equations.md, "Adapters: AdaptFormer", "Adapters: serial"): an independent
reference forward, identity at init, σ-scaling of the near-identity init, closed-form
counts, finite-difference gradients, training leaves φ bit-identical, save/load, CLI
flags, merge refusal and bad input."""
import dataclasses
import math

import numpy as onp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import minipeft as mp
from conftest import images, randomize
from minipeft import tree
from minipeft.adapters import load_adapter, save_adapter
from minipeft.methods.adapter import AdaptFormer, SerialAdapter
from minipeft.nn import reference as R
from test_nn import naive_attention
from test_train import toy_data

TINY = mp.Config(d=16, h=2, N=2, d_ff=24, n_classes=3, image_size=8, patch=4)
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-6)}


def small_cfg(h, k, N):
    """A tiny ViT of width d = h·k (Hypothesis draws the shape)."""
    return mp.Config(d=h * k, h=h, N=N, d_ff=12, n_classes=3, image_size=8, patch=4)


shapes = dict(h=st.integers(1, 2), k=st.integers(2, 6), N=st.integers(1, 3))


def layers_for(data_layers, N):
    """A Hypothesis-drawn subset of blocks (None = all) that fits N."""
    return None if data_layers is None else tuple(sorted({v % N for v in data_layers}))


# ------------------------------------------------------------------ the reference
def ref_adapter(a, x):
    """ReLU(x W_downᵀ + b_down) W_upᵀ + b_up, written out with onp.maximum.  (B, T, d) -> (B, T, d)."""
    return onp.maximum(x @ a["W_down"].T + a["b_down"], 0.0) @ a["W_up"].T + a["b_up"]


def reference_forward(params, x, cfg, method=None):
    """equations.md "Transformer" with "Adapters: AdaptFormer" / "Adapters: serial" written in
    plain NumPy with per-head loops (no seams, no hooks)."""
    B, P, g = x.shape[0], cfg.patch, cfg.image_size // cfg.patch
    patches = onp.stack([x[:, :, i * P:(i + 1) * P, j * P:(j + 1) * P].reshape(B, -1)
                         for i in range(g) for j in range(g)], 1)
    e = params["embed"]
    Z = onp.concatenate([onp.tile(e["cls"], (B, 1, 1)), patches @ e["W"].T + e["b"]], 1) + e["pos"]
    adapted = list(range(cfg.N)) if method is None or method.layers is None else list(method.layers)
    for ell, bp in enumerate(params["blocks"]):
        th = params[method.name]["blocks"][ell] if method is not None and ell in adapted else None
        serial = isinstance(method, SerialAdapter) and th is not None
        a, m = bp["attn"], bp["mlp"]
        h1 = R.layer_norm(Z, bp["ln1"]["gamma"], bp["ln1"]["beta"])
        O = naive_attention(h1 @ a["W_q"].T + a["b_q"], h1 @ a["W_k"].T + a["b_k"], h1 @ a["W_v"].T + a["b_v"],
                            cfg.h) @ a["W_o"].T + a["b_o"]
        if serial and "attn" in th:
            O = O + ref_adapter(th["attn"], O)  # A(h) = h + adapter(h)
        X1 = Z + O  # X'_ℓ
        h2 = R.layer_norm(X1, bp["ln2"]["gamma"], bp["ln2"]["beta"])
        M = R.gelu(h2 @ m["W_1"].T + m["b_1"]) @ m["W_2"].T + m["b_2"]
        if serial:
            M = M + ref_adapter(th["mlp"], M)
        if isinstance(method, AdaptFormer) and th is not None:
            s = th["s"][0] if method.learnable_s else method.s
            M = M + s * ref_adapter(th, h2 if method.input == "normed" else X1)  # + s·X̃_ℓ
        Z = X1 + M
    cls = R.layer_norm(Z, params["ln_f"]["gamma"], params["ln_f"]["beta"])[:, 0]
    return cls @ params["head"]["W"].T + params["head"]["b"]


def attached(cfg, method, seed=0, dtype="float64", scale=0.3):
    """Backbone + θ, every leaf perturbed (so W_up ≠ 0, LN γ ≠ 1, …)."""
    return randomize(mp.attach(mp.init_params(cfg, seed, dtype), [method], cfg, seed), seed, scale)


@given(**shapes, d_hat=st.integers(1, 6), s=st.floats(-2, 2), inp=st.sampled_from(["normed", "residual"]),
       learnable=st.booleans(), lay=st.none() | st.lists(st.integers(0, 5), min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_adaptformer_matches_reference(h, k, N, d_hat, s, inp, learnable, lay, seed):
    cfg = small_cfg(h, k, N)
    m = AdaptFormer(d_hat=d_hat, s=s, input=inp, learnable_s=learnable, layers=layers_for(lay, N))
    p, x = attached(cfg, m, seed), images(cfg, 2, seed)
    onp.testing.assert_allclose(mp.forward(p, x, cfg, [m]), reference_forward(p, x, cfg, m), **TOL["float64"])


@given(**shapes, d_hat=st.integers(1, 6), placement=st.sampled_from(["houlsby", "pfeiffer"]),
       lay=st.none() | st.lists(st.integers(0, 5), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_serial_adapter_matches_reference(h, k, N, d_hat, placement, lay, seed):
    cfg = small_cfg(h, k, N)
    m = SerialAdapter(d_hat=d_hat, placement=placement, layers=layers_for(lay, N))
    p, x = attached(cfg, m, seed), images(cfg, 2, seed)
    onp.testing.assert_allclose(mp.forward(p, x, cfg, [m]), reference_forward(p, x, cfg, m), **TOL["float64"])


def test_the_two_inputs_and_the_placements_differ():
    x = images(TINY, 2)
    p = attached(TINY, AdaptFormer())
    a, b = (mp.forward(p, x, TINY, [AdaptFormer(input=i)]) for i in ("normed", "residual"))
    assert not onp.allclose(a, b)
    p = attached(TINY, SerialAdapter())
    q = {**p, "serial_adapter": {"blocks": [{"mlp": t["mlp"]} for t in p["serial_adapter"]["blocks"]]}}
    assert not onp.allclose(mp.forward(p, x, TINY, [SerialAdapter()]),
                            mp.forward(q, x, TINY, [SerialAdapter(placement="pfeiffer")]))


# ------------------------------------------------------------------ identity at init
@given(**shapes, d_hat=st.integers(1, 6), s=st.floats(-4, 4), dtype=st.sampled_from(["float32", "float64"]),
       inp=st.sampled_from(["normed", "residual"]), seed=st.integers(0, 2**16))
def test_adaptformer_identity_at_init_and_with_s_zero(h, k, N, d_hat, s, dtype, inp, seed):
    """W_up = 0, b_up = 0 at init: X̃ = 0 exactly, outputs bit-equal the backbone's; and
    s = 0 with any weights (the adapter disabled)."""
    cfg = small_cfg(h, k, N)
    base_p = randomize(mp.init_params(cfg, seed, dtype), seed)
    x = images(cfg, 3, seed, dtype)
    tr0 = {}
    base = mp.forward(base_p, x, cfg, trace=tr0)
    m = AdaptFormer(d_hat=d_hat, s=s, input=inp)
    tr = {}
    onp.testing.assert_array_equal(mp.forward(mp.attach(base_p, [m], cfg, seed), x, cfg, [m], trace=tr), base)
    for u, v in zip(tr["hidden"], tr0["hidden"]):
        onp.testing.assert_array_equal(u, v)
    off = AdaptFormer(d_hat=d_hat, s=0.0, input=inp)
    p = {**base_p, "adaptformer": randomize(mp.attach(base_p, [off], cfg, seed)["adaptformer"], seed, 1.0)}
    onp.testing.assert_array_equal(mp.forward(p, x, cfg, [off]), base)


@given(**shapes, d_hat=st.integers(1, 6), placement=st.sampled_from(["houlsby", "pfeiffer"]),
       dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**16))
def test_serial_adapter_with_zero_up_projection_is_the_identity(h, k, N, d_hat, placement, dtype, seed):
    cfg = small_cfg(h, k, N)
    base_p = randomize(mp.init_params(cfg, seed, dtype), seed)
    x = images(cfg, 3, seed, dtype)
    base = mp.forward(base_p, x, cfg)
    m = SerialAdapter(d_hat=d_hat, placement=placement, sigma=0.5, sigma_up=0.0)
    p = mp.attach(base_p, [m], cfg, seed)
    assert all(not a["W_up"].any() and a["W_down"].any() for _, a in _sites(p[m.name]))
    onp.testing.assert_array_equal(mp.forward(p, x, cfg, [m]), base)
    # any W_down, b_down with W_up = 0, b_up = 0
    r = onp.random.default_rng(seed)
    th = tree.map_leaves(lambda q, a: (a * 0 if q[-1] in ("W_up", "b_up") else r.standard_normal(a.shape)).astype(dtype),
                         m.init(cfg, base_p, r))
    onp.testing.assert_array_equal(mp.forward({**base_p, m.name: th}, x, cfg, [m]), base)


def _sites(theta):
    return [((i, s), a) for i, layer in enumerate(theta["blocks"]) for s, a in layer.items()]


@given(d_hat=st.integers(1, 6), sigma=st.floats(1e-4, 0.5), sigma_up=st.floats(1e-4, 0.5), seed=st.integers(0, 2**16))
@example(d_hat=3, sigma=0.1875, sigma_up=0.5, seed=52940)  # one output near 0 by cancellation
def test_serial_init_scales_as_sigma_times_sigma_up(d_hat, sigma, sigma_up, seed):
    """Zero biases and a positively homogeneous ReLU: A_σ(h) − h = σ·σ_up·(A_1(h) − h) for
    the same draws."""
    p = mp.init_params(TINY, 0, "float64")
    th = SerialAdapter(d_hat=d_hat, sigma=sigma, sigma_up=sigma_up).init(TINY, p, onp.random.default_rng(seed))
    th1 = SerialAdapter(d_hat=d_hat, sigma=1.0, sigma_up=1.0).init(TINY, p, onp.random.default_rng(seed))
    hid = onp.random.default_rng(seed + 1).standard_normal((2, 5, TINY.d))
    for (_, a), (_, a1) in zip(_sites(th), _sites(th1)):
        want = sigma * sigma_up * ref_adapter(a1, hid)  # sums of d̂ terms: tolerance ~ε·|largest term|
        onp.testing.assert_allclose(ref_adapter(a, hid), want, rtol=1e-12, atol=1e-13 * onp.abs(want).max())


def test_serial_near_identity_init_is_second_order_in_sigma():
    """The model's deviation from the backbone is O(σ²) (σ_up = σ): halving σ divides it by ≈ 4, a
    tenth of σ by ≈ 100; it is not exactly 0 (W_up ≠ 0), unlike σ_up = 0."""
    p0 = randomize(mp.init_params(TINY, 0, "float64"), 0, 0.2)
    x = images(TINY, 4)
    base = mp.forward(p0, x, TINY)
    dev = {}
    for sigma in (1e-2, 5e-3, 1e-3):
        m = SerialAdapter(sigma=sigma)
        dev[sigma] = onp.abs(mp.forward(mp.attach(p0, [m], TINY, 3), x, TINY, [m]) - base).max()
    assert 3.8 < dev[1e-2] / dev[5e-3] < 4.2 and 95 < dev[1e-2] / dev[1e-3] < 105
    assert dev[1e-3] > 0


# ------------------------------------------------------------------ closed-form counts
@given(**shapes, d_hat=st.integers(1, 9), learnable=st.booleans(),
       lay=st.none() | st.lists(st.integers(0, 5), min_size=1, max_size=3))
def test_adaptformer_count(h, k, N, d_hat, learnable, lay):
    cfg = small_cfg(h, k, N)
    m = AdaptFormer(d_hat=d_hat, learnable_s=learnable, layers=layers_for(lay, N))
    n_adapters = N if lay is None else len(m.layers)
    want = n_adapters * (2 * cfg.d * d_hat + cfg.d + d_hat + (1 if learnable else 0))
    p = mp.attach(mp.init_params(cfg, 0), [m], cfg)
    assert m.n_params(cfg) == want == mp.count_trainable(p, [m], train_head=False)
    assert mp.count_trainable(p, [m]) == want + cfg.n_classes * (cfg.d + 1)


@given(**shapes, d_hat=st.integers(1, 9), placement=st.sampled_from(["houlsby", "pfeiffer"]), ln=st.booleans(),
       lay=st.none() | st.lists(st.integers(0, 5), min_size=1, max_size=3))
def test_serial_adapter_count(h, k, N, d_hat, placement, ln, lay):
    cfg = small_cfg(h, k, N)
    m = SerialAdapter(d_hat=d_hat, placement=placement, layers=layers_for(lay, N), train_layer_norm=ln)
    n_blocks = N if lay is None else len(m.layers)
    per_adapter = 2 * cfg.d * d_hat + cfg.d + d_hat
    want = n_blocks * ((2 if placement == "houlsby" else 1) * per_adapter + (4 * cfg.d if ln else 0))
    p = mp.attach(mp.init_params(cfg, 0), [m], cfg)
    assert m.n_params(cfg) == want == mp.count_trainable(p, [m], train_head=False)


def test_default_counts_on_the_pretrained_shape():
    cfg = mp.Config()  # d = 64, N = 4
    assert AdaptFormer().n_params(cfg) == 4 * (2 * 64 * 8 + 64 + 8) == 4384
    assert SerialAdapter().n_params(cfg) == 2 * 4384 and SerialAdapter(placement="pfeiffer").n_params(cfg) == 4384


# ------------------------------------------------------------------------- gradients
def fd_check(params, method, x, y, cfg, n=4, seed=0, rtol=1e-6):
    """∂L/∂θ (θ = the method's trainable leaves, head frozen) against central differences along
    random directions, float64."""
    th, ph = mp.split(params, mp.trainable([method], train_head=False))
    pairs = tree.leaves_with_paths(th)
    _, g = mp.value_and_grad(lambda t: mp.loss(t, ph, x, y, cfg, [method]), th)
    r = onp.random.default_rng(seed)
    for _ in range(n):
        u = {q: r.standard_normal(a.shape) for q, a in pairs}
        shift = lambda e: tree.map_leaves(lambda q, a: a + e * u[q], th)  # noqa: E731
        L = lambda e: float(mp.loss(shift(e), ph, x, y, cfg, [method]))  # noqa: E731
        fd = (L(1e-6) - L(-1e-6)) / 2e-6
        gu = sum(float(onp.sum(tree.get(g, q) * u[q])) for q, _ in pairs)
        assert math.isclose(gu, fd, rel_tol=rtol, abs_tol=1e-9), (gu, fd)
    return g


@pytest.mark.parametrize("method", [
    AdaptFormer(d_hat=3, s=0.7), AdaptFormer(d_hat=2, learnable_s=True, input="residual", layers=(1,)),
    SerialAdapter(d_hat=3), SerialAdapter(d_hat=2, placement="pfeiffer", train_layer_norm=True),
], ids=["adaptformer", "adaptformer-learnable-residual", "houlsby", "pfeiffer-ln"])
@settings(max_examples=3)
@given(seed=st.integers(0, 2**16))
def test_gradients_match_finite_differences(method, seed):
    p = attached(TINY, method, seed, scale=0.3)
    fd_check(p, method, images(TINY, 3, seed), onp.array([0, 1, 2]), TINY, seed=seed)


def test_adaptformer_step_zero_gradients():
    """At init W_up = 0: ∂L/∂W_down = ∂L/∂b_down = 0 exactly (as LoRA's A), ∂L/∂W_up ≠ 0; with s = 0
    every gradient is 0 (the adapter is off)."""
    x, y = images(TINY, 3), onp.array([0, 1, 2])
    for s, live in ((0.1, True), (0.0, False)):
        m = AdaptFormer(s=s)
        p = mp.attach(randomize(mp.init_params(TINY, 0, "float64")), [m], TINY)
        th, ph = mp.split(p, mp.trainable([m], train_head=False))
        _, g = mp.value_and_grad(lambda t: mp.loss(t, ph, x, y, TINY, [m]), th)
        for a in g["adaptformer"]["blocks"]:
            assert not a["W_down"].any() and not a["b_down"].any()
            assert bool(a["W_up"].any()) == live and bool(a["b_up"].any()) == live


@pytest.mark.parametrize("method", [AdaptFormer(learnable_s=True), SerialAdapter(train_layer_norm=True)],
                         ids=["adaptformer", "serial"])
def test_float32_gradients_stay_float32_and_match_float64(method):
    p64 = attached(TINY, method, 1, "float64", 0.2)
    p32 = mp.tree.map_leaves(lambda q, a: a.astype("float32"), p64)
    x, y = images(TINY, 3), onp.array([2, 0, 1])
    grads = {}
    for name, p in (("64", p64), ("32", p32)):
        th, ph = mp.split(p, mp.trainable([method], train_head=False))
        v, grads[name] = mp.value_and_grad(lambda t: mp.loss(t, ph, x, y, TINY, [method]), th)
        assert v.dtype == p["embed"]["pos"].dtype
    for (q, a), (_, b) in zip(tree.leaves_with_paths(grads["32"]), tree.leaves_with_paths(grads["64"])):
        assert a.dtype == onp.float32, q
        onp.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * onp.abs(b).max(), err_msg=tree.path_str(q))


# -------------------------------------------------------------------------- training
@pytest.mark.parametrize("method", [AdaptFormer(d_hat=4, s=1.0), SerialAdapter(d_hat=4, placement="pfeiffer")],
                         ids=["adaptformer", "serial"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_training_lowers_the_loss_and_leaves_phi_bit_identical(method, dtype):
    p = mp.attach(mp.init_params(TINY, 0, dtype), [method], TINY, 0)
    copies = {q: a.copy() for q, a in tree.leaves_with_paths(p)}
    data = toy_data(TINY)
    before = mp.evaluate(p, data, TINY, [method])["loss"]
    p2, hist = mp.fit(p, data, TINY, [method], train_head=False, steps=80, batch_size=16, lr=3e-2, progress=False)
    assert mp.evaluate(p2, data, TINY, [method])["loss"] < 0.8 * before
    for q, a in tree.leaves_with_paths(p2):
        if q[0] == method.name:
            assert a.dtype == onp.dtype(dtype)
        else:  # φ, and the frozen head: the very same arrays, bits unchanged
            assert a is tree.get(p, q) and a.tobytes() == copies[q].tobytes()
    assert any(not onp.array_equal(a, copies[q]) for q, a in tree.leaves_with_paths(p2) if q[0] == method.name)


def test_serial_train_layer_norm_unfreezes_only_the_adapted_blocks_ln():
    m = SerialAdapter(d_hat=2, layers=(1,), train_layer_norm=True)
    p = mp.attach(mp.init_params(TINY, 0, "float64"), [m], TINY)
    p2, _ = mp.fit(p, toy_data(TINY), TINY, [m], train_head=False, steps=3, batch_size=8, lr=1e-2, progress=False)
    changed = {q for q, a in tree.leaves_with_paths(p2) if not onp.array_equal(a, tree.get(p, q))}
    assert {q for q in changed if q[0] != m.name} == {("blocks", 1, ln, g) for ln in ("ln1", "ln2") for g in ("gamma", "beta")}


# ------------------------------------------------------------------- disk and CLI
@pytest.mark.parametrize("method", [
    AdaptFormer(d_hat=3, learnable_s=True, input="residual", layers=(0,), sigma=0.2),
    SerialAdapter(d_hat=2, placement="pfeiffer", layers=(1,), train_layer_norm=True, sigma_up=0.0),
    SerialAdapter(),
], ids=["adaptformer", "pfeiffer", "houlsby"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_adapter_round_trip_is_bit_exact(tmp_path, method, dtype):
    backbone = mp.init_params(TINY, 0, dtype)
    th, ph = mp.split(mp.attach(mp.new_head(backbone, 5), [method], TINY, 2), mp.trainable([method]))
    p = mp.combine(randomize(th, 4, 0.1), ph)  # trained-looking θ (W_up ≠ 0, LN moved), φ untouched
    f = tmp_path / "a.npz"
    save_adapter(f, p, [method], TINY)
    q, methods, meta = load_adapter(f, backbone, TINY)
    assert methods == [method] and meta["n_classes"] == 5
    la, lb = tree.leaves_with_paths(p), tree.leaves_with_paths(q)
    assert [k for k, _ in la] == [k for k, _ in lb]
    for (k, a), (_, b) in zip(la, lb):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), tree.path_str(k)
    x = images(TINY, 2, dtype=dtype)
    onp.testing.assert_array_equal(mp.forward(q, x, TINY, methods), mp.forward(p, x, TINY, [method]))


def test_cli_builds_every_option():
    from minipeft.cli import build_parser

    a = build_parser("adaptformer").parse_args(
        "train --method adaptformer --d-hat 4 --s 0.5 --learnable-s true --input residual --layers 2 0 --sigma 0.1".split())
    m = AdaptFormer(**{k[4:]: tuple(v) if isinstance(v, list) else v for k, v in vars(a).items()
                       if k.startswith("opt_") and v is not dataclasses.MISSING})
    assert m == AdaptFormer(d_hat=4, s=0.5, learnable_s=True, input="residual", layers=(0, 2), sigma=0.1)
    a = build_parser("serial-adapter").parse_args(
        "train --method serial-adapter --placement pfeiffer --sigma-up 0 --train-layer-norm yes".split())
    m = SerialAdapter(**{k[4:]: v for k, v in vars(a).items() if k.startswith("opt_") and v is not dataclasses.MISSING})
    assert (m.placement, m.sigma_up, m.train_layer_norm) == ("pfeiffer", 0.0, True)
    with pytest.raises(SystemExit):
        build_parser("serial-adapter").parse_args("train --method serial-adapter --placement middle".split())


# ------------------------------------------------------------------- merge, bad input
@pytest.mark.parametrize("method", [AdaptFormer(), SerialAdapter()], ids=["adaptformer", "serial"])
def test_merge_is_refused_with_the_reason(method):
    p = mp.attach(mp.init_params(TINY, 0), [method], TINY)
    assert not method.mergeable
    with pytest.raises(ValueError, match=r"cannot be merged.*ReLU.*nonlinear|cannot be merged.*nonlinear.*ReLU"):
        method.merge(p)


@pytest.mark.parametrize("cls,kw,match", [
    (AdaptFormer, {"s": float("nan")}, "s .*finite"), (AdaptFormer, {"s": float("inf")}, "s .*finite"),
    (AdaptFormer, {"s": "0.1"}, "s .*finite"), (AdaptFormer, {"s": True}, "s .*finite"),
    (AdaptFormer, {"d_hat": 0}, "d_hat.*positive int"), (AdaptFormer, {"d_hat": -3}, "d_hat.*positive int"),
    (AdaptFormer, {"d_hat": 2.0}, "d_hat.*positive int"), (SerialAdapter, {"d_hat": 0}, "d_hat.*positive int"),
    (AdaptFormer, {"input": "raw"}, r"input must be one of \('normed', 'residual'\)"),
    (AdaptFormer, {"layers": (0, 0)}, "layers.*distinct"), (AdaptFormer, {"layers": (-1,)}, "layers.*≥ 0"),
    (AdaptFormer, {"layers": ()}, "layers"), (AdaptFormer, {"layers": "01"}, "layers"),
    (AdaptFormer, {"sigma": -1.0}, "sigma.*≥ 0"), (AdaptFormer, {"sigma": float("nan")}, "sigma"),
    (SerialAdapter, {"placement": "middle"}, r"placement must be one of \('houlsby', 'pfeiffer'\)"),
    (SerialAdapter, {"sigma": float("inf")}, "sigma"), (SerialAdapter, {"sigma_up": -0.1}, "sigma_up"),
])
def test_bad_options_name_the_field(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)


@pytest.mark.parametrize("cls,kw,match", [
    (AdaptFormer, {"learnable_s": "yes"}, "learnable_s must be True or False"),
    (SerialAdapter, {"train_layer_norm": 1}, "train_layer_norm must be True or False"),
])
def test_a_bool_option_of_another_type_is_a_type_error(cls, kw, match):
    """validate.boolean: a value of the wrong type is a TypeError, for every method's bool options."""
    with pytest.raises(TypeError, match=match):
        cls(**kw)


@pytest.mark.parametrize("cls", [AdaptFormer, SerialAdapter])
def test_layers_outside_the_backbone(cls):
    m = cls(layers=(0, 2))
    with pytest.raises(ValueError, match=r"layers must be block indices in 0\.\.1"):
        mp.attach(mp.init_params(TINY, 0), [m], TINY)
    with pytest.raises(ValueError, match="layers"):
        m.n_params(TINY)


def test_registry_and_options_are_json_ready():
    assert mp.method_class("adaptformer") is AdaptFormer and mp.method_class("serial-adapter") is SerialAdapter
    assert AdaptFormer(layers=[3, 1]).options()["layers"] == [1, 3]
    assert AdaptFormer.__doc__.count("2·d·d̂ + d + d̂") >= 1 and "W_downᵀ" in SerialAdapter.__doc__


# ------------------------------------------------------------ the real backbone (slow)
@pytest.mark.slow
@pytest.mark.parametrize("method", [AdaptFormer(), SerialAdapter(placement="pfeiffer")], ids=["adaptformer", "pfeiffer"])
def test_adapters_learn_digits_on_the_pretrained_backbone(method):
    """3 epochs on real data (lr 0.01, head trainable): the loss falls by more than half, the
    adapter beats the linear probe with the same budget, and φ stays bit-identical."""
    from minipeft.pretrained import load_backbone

    backbone, _ = load_backbone()
    cfg = mp.Config()
    task = mp.load_task("digits")
    acc, loss0, loss = {}, {}, {}
    for m in (mp.LinearProbe(), method):
        p = mp.attach(mp.new_head(backbone, task.n_classes, 0), [m], cfg, 0)
        loss0[m.name] = mp.evaluate(p, task.test, cfg, [m])["loss"]
        p2, _ = mp.fit(p, task.train, cfg, [m], epochs=3, lr=1e-2, progress=False)
        r = mp.evaluate(p2, task.test, cfg, [m])
        acc[m.name], loss[m.name] = r["acc"], r["loss"]
    assert loss[method.name] < 0.5 * loss0[method.name]
    assert acc[method.name] > acc["linear_probe"]
    for q, a in tree.leaves_with_paths(backbone):
        if q[0] != "head":
            assert tree.get(p2, q).tobytes() == a.tobytes()

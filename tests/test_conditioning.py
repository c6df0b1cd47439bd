"""Conditioning methods (equations.md "Prompt tuning", "VPT", "Prefix tuning"): each
against an independent per-head NumPy reference, the shapes and the CLS-first layout,
VPT-Deep's replacement, VPT-Shallow as a VPT-Deep fed its own prompt outputs, He et
al.'s unified view of prefix attention, prompts changing the real tokens' attention,
finite-difference gradients, frozen φ, float32, closed-form counts, save/load/eject,
training on toy data (real backbone under -m slow), and bad input."""
import dataclasses
import math

import numpy as onp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import minipeft as mp
import reference
from conftest import TINY, directional_check, images, prefix_insertions, randomize, theta_vec_fn
from minipeft import tree
from minipeft.adapters import load_adapter, save_adapter
from minipeft.methods.prefix import PrefixTuning, unified_view
from minipeft.methods.layout import P_MAX, key_columns, token_rows
from minipeft.methods.prompt import PromptTuning
from minipeft.methods.vpt import VPTDeep, VPTShallow, vpt_bound

ALL = [PromptTuning(p=3), VPTShallow(p=2), VPTDeep(p=2), PrefixTuning(p=3),
       PrefixTuning(p=2, reparam=True, d_prime=3, hidden=5),
       PrefixTuning(p=2, reparam=True, encoder="per-layer", d_prime=3, hidden=4)]
IDS = ["prompt", "vpt-shallow", "vpt-deep", "prefix", "prefix-reparam", "prefix-reparam-per-layer"]


# ------------------------------------------------------------------------ helpers
@st.composite
def vision_cfgs(draw):
    h, d_h = draw(st.integers(1, 3)), draw(st.integers(3, 4))  # d ≥ 3: LN of d ≤ 2 numbers is degenerate
    patch, grid = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    return mp.Config(d=h * d_h, h=h, N=draw(st.integers(1, 3)), d_ff=draw(st.integers(1, 6)), n_classes=3,
                     image_size=patch * grid, patch=patch, channels=draw(st.integers(1, 2)))


def setup(cfg, methods, seed=0, dtype="float64", B=2):
    """Randomised backbone (γ ≠ 1, biases ≠ 0), methods attached, images, labels."""
    p = mp.attach(randomize(mp.init_params(cfg, seed, dtype), seed, 0.2), methods, cfg, seed)
    return p, images(cfg, B, seed, dtype), onp.arange(B) % cfg.n_classes


def ref_forward(params, x, cfg, shallow=None, deep=None, prefix=None):
    """equations.md in plain NumPy with per-head loops (reference.py): shallow P (p, d)
    after CLS at the input; deep P (N, p, d), P[ℓ-1] at the input of block ℓ, replacing
    rows 1..p from block 2 on; prefix (P_k, P_v) (N, p, d) each."""
    if deep is not None:
        blocks = [{"P": P} for P in deep]
    elif prefix is not None:
        blocks = prefix_insertions(*prefix)
    else:
        blocks = None
    return reference.forward(params, x, cfg, prompt=shallow, blocks=blocks)


def mlp_table(th, cfg):
    """Prefix reparameterisation by hand: row i of tanh(P' W_1ᵀ + b_1) W_2ᵀ + b_2 is
    [P_k^1, P_v^1, …, P_k^N, P_v^N] for prefix position i."""
    P = onp.tanh(th["P_prime"] @ th["W_1"].T + th["b_1"]) @ th["W_2"].T + th["b_2"]  # (p, 2Nd)
    P_k = onp.stack([P[:, (2 * lay) * cfg.d:(2 * lay + 1) * cfg.d] for lay in range(cfg.N)])
    P_v = onp.stack([P[:, (2 * lay + 1) * cfg.d:(2 * lay + 2) * cfg.d] for lay in range(cfg.N)])
    return P_k, P_v


def per_layer_mlp_table(th, cfg):
    """The layer-specific prefix encoder by hand, one row and one layer at a time: row i of
    layer ℓ's [P_k^ℓ, P_v^ℓ] is tanh(P'_i W_1^ℓᵀ + b_1^ℓ) W_2^ℓᵀ + b_2^ℓ (2·d numbers)."""
    p, d = th["P_prime"].shape[0], cfg.d
    P_k, P_v = onp.zeros((cfg.N, p, d)), onp.zeros((cfg.N, p, d))
    for lay in range(cfg.N):
        for i in range(p):
            h = onp.tanh(th["W_1"][lay] @ th["P_prime"][i] + th["b_1"][lay])  # (hidden,)
            row = th["W_2"][lay] @ h + th["b_2"][lay]  # (2d,)
            P_k[lay, i], P_v[lay, i] = row[:d], row[d:]
    return P_k, P_v


def reference_for(m, params, x, cfg):
    th = params[m.name]
    if isinstance(m, PrefixTuning):
        if not m.reparam:
            table = (th["P_k"], th["P_v"])
        else:
            table = per_layer_mlp_table(th, cfg) if m.encoder == "per-layer" else mlp_table(th, cfg)
        return ref_forward(params, x, cfg, prefix=table)
    if isinstance(m, VPTDeep):
        return ref_forward(params, x, cfg, deep=th["P"])
    return ref_forward(params, x, cfg, shallow=th["P"])


@dataclasses.dataclass(frozen=True)
class Spy(mp.Method):
    """Records what some seams see (and can edit layer_in rows 1..p with ``noise``)."""
    name: str = "spy"
    seen: dict = dataclasses.field(default_factory=dict, compare=False)
    noise: object = None

    def on_linear(self, th, y, x, layer, name, cfg):
        self.seen[("linear", layer, name)] = y
        return y

    def on_kv(self, th, kv, layer, cfg):
        self.seen[("kv", layer)] = kv
        return kv

    def on_after(self, th, y, layer, name, cfg):
        self.seen[("after", layer, name)] = y
        return y

    def on_layer_in(self, th, X, layer, cfg):
        self.seen[("layer_in", layer)] = X
        return X if self.noise is None else self.noise(X, layer)


# --------------------------------------------------- forward vs an independent reference
@settings(max_examples=15)
@given(cfg=vision_cfgs(), which=st.integers(0, len(ALL) - 1), p=st.integers(1, 4), B=st.integers(1, 3),
       seed=st.integers(0, 2**16), dtype=st.sampled_from(["float64", "float32"]))
def test_forward_matches_per_head_reference(cfg, which, p, B, seed, dtype):
    """float64: to 1e-10; float32: params and images rounded to float32, against the float64
    reference of those same rounded numbers, to 1e-5 · (1 + max |logit|)."""
    m = dataclasses.replace(ALL[which], p=p)
    params, x, _ = setup(cfg, [m], seed, B=B)
    if dtype == "float32":
        params, x = mp.tree.map_leaves(lambda q, a: a.astype("float32"), params), x.astype("float32")
    want = reference_for(m, mp.tree.map_leaves(lambda q, a: a.astype("float64"), params), x.astype("float64"), cfg)
    got = mp.forward(params, x, cfg, [m])
    assert got.dtype == dtype
    if dtype == "float64":
        onp.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    else:
        assert onp.abs(got - want).max() <= 1e-5 * (1.0 + onp.abs(want).max())


# ------------------------------------------------------------------ shapes and layout
@settings(max_examples=10)
@given(cfg=vision_cfgs(), p=st.integers(1, 5), B=st.integers(1, 3), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["prompt", "vpt-shallow", "vpt-deep"]))
def test_prompt_sequences_grow_by_p_cls_first_prompts_without_positions(cfg, p, B, seed, kind):
    m = {"prompt": PromptTuning(p=p), "vpt-shallow": VPTShallow(p=p), "vpt-deep": VPTDeep(p=p)}[kind]
    spy = Spy()
    params, x, _ = setup(cfg, [m, spy], seed, B=B)
    tr = {}
    assert mp.forward(params, x, cfg, [m, spy], trace=tr).shape == (B, 3)
    T = 1 + cfg.n_patches
    X1 = spy.seen[("layer_in", 0)]  # what block 1 reads
    assert X1.shape == (B, T + p, cfg.d)
    assert all(h.shape == (B, T + p, cfg.d) for h in tr["hidden"][1:])
    assert all(A.shape == (B, cfg.h, T + p, T + p) for A in tr["attn"])
    Z0 = onp.asarray(mp.transformer.embed(params, x, cfg))
    P = params[m.name]["P"][0] if kind == "vpt-deep" else params[m.name]["P"]
    onp.testing.assert_array_equal(X1[:, 0], Z0[:, 0])  # CLS first, unchanged
    onp.testing.assert_array_equal(X1[:, 1:1 + p], onp.repeat(P[None], B, 0))  # P exactly: no position added
    onp.testing.assert_array_equal(X1[:, 1 + p:], Z0[:, 1:])
    rows = token_rows([m], cfg.n_patches)
    assert rows == {"cls": slice(0, 1), m.name: slice(1, 1 + p), "input": slice(1 + p, T + p)}


@settings(max_examples=10)
@given(cfg=vision_cfgs(), p=st.integers(1, 5), B=st.integers(1, 3), seed=st.integers(0, 2**16), reparam=st.booleans())
def test_prefix_keeps_the_token_count_and_adds_p_key_columns(cfg, p, B, seed, reparam):
    m = PrefixTuning(p=p, reparam=reparam, d_prime=2, hidden=3)
    params, x, _ = setup(cfg, [m], seed, B=B)
    tr = {}
    mp.forward(params, x, cfg, [m], trace=tr)
    T = 1 + cfg.n_patches
    assert all(h.shape == (B, T, cfg.d) for h in tr["hidden"])
    assert all(A.shape == (B, cfg.h, T, p + T) for A in tr["attn"])
    assert key_columns([m], cfg.n_patches) == {"prefix": slice(0, p), "cls": slice(p, p + 1), "input": slice(p + 1, p + T)}


def test_layout_helpers_with_every_method_active_at_once(tiny_cfg):
    ms = [PromptTuning(p=2), VPTDeep(p=3), PrefixTuning(p=4), VPTShallow(p=1), PrefixTuning(p=2, name="prefix2")]
    spy = Spy()
    params, x, _ = setup(tiny_cfg, ms + [spy], 1)
    tr = {}
    mp.forward(params, x, tiny_cfg, ms + [spy], trace=tr)
    rows, cols = token_rows(ms, tiny_cfg.n_patches), key_columns(ms, tiny_cfg.n_patches)
    X1 = spy.seen[("layer_in", 0)]
    for m in (ms[0], ms[3]):
        onp.testing.assert_array_equal(X1[:, rows[m.name]], onp.repeat(params[m.name]["P"][None], 2, 0))
    onp.testing.assert_array_equal(X1[:, rows["vpt_deep"]], onp.repeat(params["vpt_deep"]["P"][0][None], 2, 0))
    onp.testing.assert_array_equal(X1[:, rows["input"]], mp.transformer.embed(params, x, tiny_cfg)[:, 1:])
    K, V = spy.seen[("kv", 1)]  # after both prefixes (the spy is listed last)
    onp.testing.assert_array_equal(K[:, cols["prefix"]], onp.repeat(params["prefix"]["P_k"][1][None], 2, 0))
    onp.testing.assert_array_equal(V[:, cols["prefix2"]], onp.repeat(params["prefix2"]["P_v"][1][None], 2, 0))
    A = tr["attn"][1]
    assert A.shape[-1] == sum(s.stop - s.start for s in cols.values()) == 4 + 2 + 1 + 3 + 1 + 2 + 4
    assert sorted(i for s in cols.values() for i in range(s.start, s.stop)) == list(range(A.shape[-1]))
    assert cols["input"].start == rows["input"].start + 6
    with pytest.raises(ValueError, match="at most one VPT-Deep"):
        token_rows([VPTDeep(), VPTDeep(name="b")], 4)


# --------------------------------------------------------------------------- VPT
@settings(max_examples=10)
@given(cfg=vision_cfgs(), p=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_vpt_deep_replaces_its_prompts_at_every_layer(cfg, p, seed):
    m = VPTDeep(p=p)
    params, x, _ = setup(cfg, [m], seed)
    tr0 = {}
    base = mp.forward(params, x, cfg, [m], trace=tr0)
    # changing P_{ℓ-1} (entering block ℓ) changes X_ℓ but nothing before it
    for layer in range(cfg.N):
        P = params[m.name]["P"].copy()
        P[layer] += 1.0
        tr = {}
        mp.forward({**params, m.name: {"P": P}}, x, cfg, [m], trace=tr)
        for j in range(layer + 1):
            onp.testing.assert_array_equal(tr["hidden"][j], tr0["hidden"][j])
        assert not onp.allclose(tr["hidden"][layer + 1], tr0["hidden"][layer + 1])
    # the prompt outputs Z_ℓ of block ℓ never reach block ℓ+1: noise on them changes nothing
    rng = onp.random.default_rng(seed)
    noise = lambda X, layer: X if layer == 0 else onp.concatenate(  # noqa: E731
        [X[:, :1], X[:, 1:1 + p] + rng.standard_normal(X[:, 1:1 + p].shape), X[:, 1 + p:]], 1)
    noisy = Spy(noise=noise)
    onp.testing.assert_array_equal(mp.forward({**params, "spy": {}}, x, cfg, [noisy, m]), base)
    # ... whereas VPT-Shallow carries them on (for N ≥ 2 they matter)
    s = VPTShallow(p=p)
    ps = mp.attach(params, [s], cfg, seed)
    if cfg.N >= 2:
        assert not onp.allclose(mp.forward({**ps, "spy": {}}, x, cfg, [s, noisy]), mp.forward(ps, x, cfg, [s]))


@settings(max_examples=10)
@given(cfg=vision_cfgs(), p=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_vpt_shallow_is_vpt_deep_fed_its_own_prompt_outputs(cfg, p, seed):
    """[x_ℓ, Z_ℓ, E_ℓ] = L_ℓ([x_{ℓ-1}, Z_{ℓ-1}, E_{ℓ-1}]): with P_0 = P and P_{ℓ-1} = Z_{ℓ-1}
    of the shallow run (one example, so Z is one (p, d) set), VPT-Deep is VPT-Shallow."""
    s, dp = VPTShallow(p=p), VPTDeep(p=p)
    params, x, _ = setup(cfg, [s, dp], seed, B=1)
    tr = {}
    shallow = mp.forward(params, x, cfg, [s], trace=tr)
    P = onp.stack([params[s.name]["P"]] + [tr["hidden"][ell][0, 1:1 + p] for ell in range(1, cfg.N)])
    deep = mp.forward({**params, dp.name: {"P": P}}, x, cfg, [dp])
    onp.testing.assert_allclose(deep, shallow, rtol=1e-12, atol=1e-13)


def test_vpt_init_is_uniform_in_plus_minus_v():
    cfg = mp.Config(d=8, h=2, N=3, d_ff=8, image_size=6, patch=3, channels=2)
    v = math.sqrt(6 / (2 * 9 + 8))
    assert vpt_bound(cfg) == v
    for m, shape in ((VPTShallow(p=64), (64, 8)), (VPTDeep(p=64), (3, 64, 8))):
        P = mp.attach(mp.init_params(cfg, 0, "float64"), [m], cfg)[m.name]["P"]
        assert P.shape == shape and onp.abs(P).max() <= v and onp.abs(P).max() > 0.95 * v
        assert abs(P.std() - v / math.sqrt(3)) < 0.1 * v


# ---------------------------------------------------------------- prefix: unified view
@settings(max_examples=30)
@given(B=st.integers(1, 3), T=st.integers(1, 5), S=st.integers(1, 5), p=st.integers(1, 4),
       h=st.sampled_from([1, 2, 4]), d_h=st.integers(1, 3), seed=st.integers(0, 2**16))
@example(B=1, T=1, S=1, p=1, h=1, d_h=1, seed=0)
def test_unified_view_equals_prefix_attention_per_head(B, T, S, p, h, d_h, seed):
    """He et al. (2022): Attn(Q, [P_k; K], [P_v; V]) = (1−λ)Attn(Q, K, V) + λ softmax(Q P_kᵀ/√d_h) P_v."""
    r = onp.random.default_rng(seed)
    d = h * d_h
    Q, K, V = (r.standard_normal((B, n, d)) for n in (T, S, S))
    P_k, P_v = r.standard_normal((p, d)), r.standard_normal((p, d))
    Z, A = mp.nn.attention(Q, K, V, h, prefix=(P_k, P_v), return_weights=True)
    out, lam = unified_view(Q, K, V, P_k, P_v, h)
    onp.testing.assert_allclose(out, Z, rtol=1e-10, atol=1e-12)
    onp.testing.assert_allclose(lam, A[..., :p].sum(-1), rtol=1e-10, atol=1e-14)
    # λ and the gated sum by a naive per-head loop
    for b in range(B):
        for hh in range(h):
            sl = slice(hh * d_h, (hh + 1) * d_h)
            for t in range(T):
                q = Q[b, t, sl]
                ep = onp.array([math.exp(q @ P_k[i, sl] / math.sqrt(d_h)) for i in range(p)])
                ex = onp.array([math.exp(q @ K[b, j, sl] / math.sqrt(d_h)) for j in range(S)])
                lam_naive = ep.sum() / (ep.sum() + ex.sum())
                want = (1 - lam_naive) * (ex @ V[b, :, sl]) / ex.sum() + lam_naive * (ep @ P_v[:, sl]) / ep.sum()
                assert math.isclose(lam[b, hh, t], lam_naive, rel_tol=1e-10, abs_tol=1e-14)
                onp.testing.assert_allclose(Z[b, t, sl], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reparam", [False, True])
def test_unified_view_through_the_block(tiny_cfg, reparam):
    m, spy = PrefixTuning(p=3, reparam=reparam, d_prime=2, hidden=4), Spy()
    params, x, _ = setup(tiny_cfg, [spy, m], 2)
    tr = {}
    mp.forward(params, x, tiny_cfg, [spy, m], trace=tr)  # the spy sees K, V before the prefix
    P_k, P_v = m.table(params[m.name], tiny_cfg.N, tiny_cfg.d)
    cols = key_columns([m], tiny_cfg.n_patches)
    for layer in range(tiny_cfg.N):
        a = params["blocks"][layer]["attn"]
        K, V = spy.seen[("kv", layer)]
        out, lam = unified_view(spy.seen[("linear", layer, "q")], K, V, P_k[layer], P_v[layer], tiny_cfg.h)
        onp.testing.assert_allclose(tr["attn"][layer][..., cols["prefix"]].sum(-1), lam, rtol=1e-10)
        onp.testing.assert_allclose(spy.seen[("after", layer, "attn")], out @ a["W_o"].T + a["b_o"], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------- prompts change attention weights
@pytest.mark.parametrize("m", ALL, ids=IDS)
def test_prompts_change_the_attention_among_real_tokens(tiny_cfg, m):
    """The notes' "Why prompt tokens work". In block 1 the prompts only take attention
    mass (the real tokens' weights over each other, renormalised, are the frozen
    model's); from block 2 on they change those weights themselves."""
    params, x, _ = setup(tiny_cfg, [m], 4)
    base, tr = {}, {}
    mp.forward(params, x, tiny_cfg, trace=base)
    mp.forward(params, x, tiny_cfg, [m], trace=tr)
    rows, cols = token_rows([m], tiny_cfg.n_patches), key_columns([m], tiny_cfg.n_patches)
    real_rows = [0] + list(range(rows["input"].start, rows["input"].stop))
    real_cols = [cols["cls"].start] + list(range(cols["input"].start, cols["input"].stop))
    for layer, A in enumerate(tr["attn"]):
        onp.testing.assert_allclose(A.sum(-1), 1.0, rtol=1e-12)
        assert (A[..., cols[m.name]].sum(-1) > 1e-6).all()  # every query gives the prompts some mass
        sub = A[:, :, real_rows][..., real_cols]
        sub = sub / sub.sum(-1, keepdims=True)
        if layer == 0:
            onp.testing.assert_allclose(sub, base["attn"][0], rtol=1e-10)
        else:
            assert not onp.allclose(sub, base["attn"][layer], atol=1e-6)


# ------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("m", ALL, ids=IDS)
def test_gradient_matches_finite_differences(tiny_cfg, m):
    params, x, y = setup(tiny_cfg, [m], 5, B=3)
    vec, f, g = theta_vec_fn(params, [m], x, y, tiny_cfg, train_head=True)
    directional_check(f, vec, g, 4, rel_tol=1e-6, abs_tol=1e-9)


def test_gradient_of_several_methods_together(tiny_cfg):
    ms = [PromptTuning(p=2), VPTDeep(p=2), PrefixTuning(p=2, reparam=True, d_prime=2, hidden=3)]
    params, x, y = setup(tiny_cfg, ms, 6, B=2)
    vec, f, g = theta_vec_fn(params, ms, x, y, tiny_cfg, train_head=False)
    directional_check(f, vec, g, 1, rel_tol=1e-6, abs_tol=1e-9, seed=1)


@pytest.mark.parametrize("m", ALL, ids=IDS)
def test_float32_in_every_gradient_float32(tiny_cfg, m):
    params, x, y = setup(tiny_cfg, [m], 7, dtype="float32")
    assert all(a.dtype == onp.float32 for _, a in tree.leaves_with_paths(params[m.name]))
    th, ph = mp.split(params, mp.trainable([m]))
    v, g = mp.value_and_grad(lambda t: mp.loss(t, ph, x, y, tiny_cfg, [m]), th)
    assert v.dtype == onp.float32
    assert all(a.dtype == onp.float32 for _, a in tree.leaves_with_paths(g))


# ------------------------------------------------------------- counts, frozen φ, training
@settings(max_examples=15)
@given(cfg=vision_cfgs(), p=st.integers(1, P_MAX), d_prime=st.integers(1, 5), hidden=st.integers(1, 5))
def test_closed_form_counts_equal_the_counted_ones(cfg, p, d_prime, hidden):
    ms = [PromptTuning(p=p), VPTShallow(p=p), VPTDeep(p=p), PrefixTuning(p=p),
          PrefixTuning(p=p, reparam=True, d_prime=d_prime, hidden=hidden),
          PrefixTuning(p=p, reparam=True, d_prime=d_prime, hidden=hidden, encoder="per-layer")]
    base = mp.init_params(cfg, 0)
    for m in ms:
        assert m.n_params(cfg) == mp.count_trainable(mp.attach(base, [m], cfg), [m], train_head=False)
    assert ms[0].n_params(cfg) == p * cfg.d and ms[2].n_params(cfg) == cfg.N * p * cfg.d
    assert ms[3].n_params(cfg) == 2 * cfg.N * p * cfg.d
    # per-layer: the shared P' plus N MLPs of d' -> hidden -> 2d
    assert ms[5].n_params(cfg) == p * d_prime + cfg.N * (hidden * d_prime + hidden + 2 * cfg.d * hidden + 2 * cfg.d)
    together = [ms[0], ms[2], dataclasses.replace(ms[4], name="prefix_mlp")]
    q = mp.attach(base, together, cfg)
    head = cfg.n_classes * (cfg.d + 1)
    assert mp.count_trainable(q, together) == sum(m.n_params(cfg) for m in together) + head


def toy_task(cfg, n=48, seed=0):
    """Images whose label is the brightest of the first three patches (a task the
    frozen random backbone does not solve)."""
    rng = onp.random.default_rng(seed)
    X = rng.random((n, 1, cfg.image_size, cfg.image_size)) * 0.5
    y = rng.integers(0, 3, n)
    P = cfg.patch
    for i, k in enumerate(y):
        X[i, 0, :P, k * P // 2:(k * P // 2) + P // 2] += 0.5
    return X, y


@pytest.mark.parametrize("m", ALL + ["together"], ids=IDS + ["together"])
def test_training_lowers_the_loss_and_leaves_phi_bit_identical(m):
    cfg = TINY
    ms = [PromptTuning(p=2), VPTDeep(p=2), PrefixTuning(p=2)] if m == "together" else [m]
    params = mp.attach(randomize(mp.init_params(cfg, 0, "float32"), 0, 0.2), ms, cfg, 0)
    X, y = toy_task(cfg)
    before = mp.evaluate(params, (X, y), cfg, ms)["loss"]
    out, hist = mp.fit(params, (X, y), cfg, ms, train_head=False, steps=30, batch_size=16, lr=3e-2, progress=False)
    after = mp.evaluate(out, (X, y), cfg, ms)["loss"]
    assert after < 0.85 * before, (before, after)  # the prompts alone (head frozen) lower the loss
    _, phi0 = mp.split(params, mp.trainable(ms, train_head=False))
    _, phi1 = mp.split(out, mp.trainable(ms, train_head=False))
    for (pa, a), (pb, b) in zip(tree.leaves_with_paths(phi0), tree.leaves_with_paths(phi1)):
        assert pa == pb and a.tobytes() == b.tobytes()
    for m_ in ms:
        assert any(not onp.array_equal(a, b) for (_, a), (_, b) in
                   zip(tree.leaves_with_paths(params[m_.name]), tree.leaves_with_paths(out[m_.name])))


# -------------------------------------------------------------------------- text front
def test_prompt_tuning_on_the_text_front(text_cfg):
    base = mp.init_params(text_cfg, 0, "float64")
    W = base["embed"]["W_tok"]
    text = PromptTuning(p=5, init_from="text", init_tokens=(7, 2))
    vocab = PromptTuning(p=4, init_from="vocab")
    params = mp.attach(base, [text, dataclasses.replace(vocab, name="vocab")], text_cfg, 0)
    onp.testing.assert_array_equal(params["prompt"]["P"], W[[7, 2, 7, 2, 7]])
    assert not onp.shares_memory(params["prompt"]["P"], W)
    P = params["vocab"]["P"]
    assert all(any(onp.array_equal(row, w) for w in W) for row in P)
    assert len({row.tobytes() for row in P}) == 4  # drawn without replacement (p ≤ vocab)
    trimmed = mp.attach(base, [PromptTuning(p=2, init_from="text", init_tokens=(3, 4, 5))], text_cfg)
    onp.testing.assert_array_equal(trimmed["prompt"]["P"], W[[3, 4]])
    ids = onp.array([[1, 2, 3], [4, 5, 10]])
    tr = {}
    out = mp.forward(params, ids, text_cfg, [text], trace=tr)
    assert out.shape == (2, 3) and tr["hidden"][0].shape == (2, 1 + 5 + 3, 16)
    onp.testing.assert_array_equal(tr["hidden"][0][:, 1:6], onp.repeat(W[[7, 2, 7, 2, 7]][None], 2, 0))
    onp.testing.assert_allclose(out, ref_forward(params, ids, text_cfg, shallow=params["prompt"]["P"]), rtol=1e-10)
    big = mp.attach(base, [PromptTuning(p=20, init_from="vocab")], text_cfg)  # p > vocab: with replacement
    assert big["prompt"]["P"].shape == (20, 16)


# ---------------------------------------------------------------- save, load, eject
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adapters_round_trip_bit_exactly_and_resume(tmp_path, tiny_cfg, dtype):
    ms = [PromptTuning(p=3), VPTShallow(p=2, name="vs"), VPTDeep(p=2), PrefixTuning(p=2),
          PrefixTuning(p=2, reparam=True, d_prime=3, hidden=4, name="pm"),
          PrefixTuning(p=2, reparam=True, d_prime=2, hidden=3, encoder="per-layer", name="pl")]
    backbone = mp.init_params(tiny_cfg, 0, dtype)
    params = mp.attach(mp.new_head(backbone, 4, 1), ms, tiny_cfg, 3)
    f = tmp_path / "cond.npz"
    save_adapter(f, params, ms, tiny_cfg)
    q, loaded, _ = load_adapter(f, backbone, tiny_cfg)
    assert loaded == ms
    for m in ms:
        for (pa, a), (pb, b) in zip(tree.leaves_with_paths(params[m.name]), tree.leaves_with_paths(q[m.name])):
            assert pa == pb and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    x = images(tiny_cfg, 2, dtype=dtype)
    onp.testing.assert_array_equal(mp.forward(q, x, tiny_cfg, loaded), mp.forward(params, x, tiny_cfg, ms))
    assert set(q["pm"]) == {"P_prime", "W_1", "b_1", "W_2", "b_2"}  # the MLP is kept: training can resume
    assert q["pl"]["W_1"].shape == (tiny_cfg.N, 3, 2)  # one MLP per layer, kept too
    q2, hist = mp.fit(q, (x, onp.array([0, 3])), tiny_cfg, loaded, steps=2, progress=False)
    assert not onp.array_equal(q2["pm"]["W_1"], q["pm"]["W_1"])


def test_text_prompt_options_round_trip(tmp_path, text_cfg):
    m = PromptTuning(p=3, init_from="text", init_tokens=(4, 1))
    backbone = mp.init_params(text_cfg, 0)
    f = tmp_path / "t.npz"
    save_adapter(f, mp.attach(backbone, [m], text_cfg), [m], text_cfg, train_head=False)
    _, loaded, meta = load_adapter(f, backbone, text_cfg)
    assert loaded == [m] and meta["methods"][0]["options"]["init_tokens"] == [4, 1]


def test_a_prefix_saved_for_another_backbone_is_refused(tmp_path, tiny_cfg):
    other = dataclasses.replace(tiny_cfg, N=3)
    m = PrefixTuning(p=2)
    f = tmp_path / "p.npz"
    save_adapter(f, mp.attach(mp.init_params(other, 0), [m], other), [m], other)
    with pytest.raises(ValueError, match="config"):
        load_adapter(f, mp.init_params(tiny_cfg, 0), tiny_cfg)


@pytest.mark.parametrize("encoder", ["shared", "per-layer"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_eject_gives_the_plain_table_with_identical_outputs(tiny_cfg, dtype, encoder):
    m = PrefixTuning(p=3, reparam=True, d_prime=2, hidden=5, encoder=encoder)
    params, x, _ = setup(tiny_cfg, [m], 8, dtype=dtype)
    flat, m2 = m.eject(params)
    assert m2 == PrefixTuning(p=3, d_prime=2, hidden=5) and set(flat[m.name]) == {"P_k", "P_v"}
    onp.testing.assert_array_equal(mp.forward(flat, x, tiny_cfg, [m2]), mp.forward(params, x, tiny_cfg, [m]))
    P_k, P_v = (per_layer_mlp_table if encoder == "per-layer" else mlp_table)(params[m.name], tiny_cfg)
    tol = 1e-12 if dtype == "float64" else 1e-5
    onp.testing.assert_allclose(flat[m.name]["P_k"], P_k, rtol=tol, atol=tol)
    onp.testing.assert_allclose(flat[m.name]["P_v"], P_v, rtol=tol, atol=tol)
    assert mp.count_trainable(flat, [m2], train_head=False) == m2.n_params(tiny_cfg) == 2 * 2 * 3 * 16
    assert "W_1" in params[m.name]  # params untouched
    with pytest.raises(ValueError, match=r"prefix\.W_1"):  # θ of the other encoder's shapes: named
        dataclasses.replace(m, encoder="per-layer" if encoder == "shared" else "shared").table(
            params[m.name], tiny_cfg.N, tiny_cfg.d)
    with pytest.raises(ValueError, match="already a plain table"):
        m2.eject(flat)
    with pytest.raises(ValueError, match="attach"):
        m.eject(mp.init_params(tiny_cfg, 0))


def test_cli_flags_for_each_method():
    from minipeft.cli import build_parser
    a = build_parser("prompt").parse_args(["train", "--method", "prompt", "--p", "4", "--init-from", "text",
                                           "--init-tokens", "1", "2"])
    assert (a.opt_p, a.opt_init_from, a.opt_init_tokens) == (4, "text", [1, 2])
    a = build_parser("prefix").parse_args(["train", "--method", "prefix", "--reparam", "true", "--d-prime", "8"])
    assert a.opt_reparam is True and a.opt_d_prime == 8
    a = build_parser("prefix").parse_args(["train", "--method", "prefix", "--reparam", "true", "--encoder", "per-layer"])
    assert a.opt_encoder == "per-layer"
    with pytest.raises(SystemExit):  # argparse refuses an encoder outside ENCODERS
        build_parser("prefix").parse_args(["train", "--method", "prefix", "--encoder", "layer"])
    for name in ("vpt-shallow", "vpt-deep"):
        assert build_parser(name).parse_args(["train", "--method", name, "--p", "3"]).opt_p == 3


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,err,match", [
    (lambda: PromptTuning(p=0), ValueError, r"p must be an int in \[1, 64\]"),
    (lambda: PromptTuning(p=P_MAX + 1), ValueError, r"p must be an int in \[1, 64\]"),
    (lambda: PromptTuning(p=2.0), TypeError, "p must be an int"),
    (lambda: PromptTuning(init_from="normal"), ValueError, "init_from must be one of"),
    (lambda: PromptTuning(init_from="text"), ValueError, "init_tokens: init_from='text' needs"),
    (lambda: PromptTuning(init_tokens=(1,)), ValueError, "init_tokens is only used by init_from='text'"),
    (lambda: PromptTuning(init_from="text", init_tokens=(-1,)), ValueError, "init_tokens must hold non-negative"),
    (lambda: PromptTuning(init_from="text", init_tokens="ab"), TypeError, "init_tokens must be a tuple"),
    (lambda: PromptTuning(scale=0.0), ValueError, "scale must be a positive"),
    (lambda: PromptTuning(name=""), ValueError, "name must be"),
    (lambda: VPTShallow(p=0), ValueError, r"p must be an int in \[1, 64\]"),
    (lambda: VPTDeep(p=65), ValueError, r"p must be an int in \[1, 64\]"),
    (lambda: PrefixTuning(p=-1), ValueError, r"p must be an int in \[1, 64\]"),
    (lambda: PrefixTuning(init_std=-1.0), ValueError, "init_std must be a positive"),
    (lambda: PrefixTuning(reparam="yes"), TypeError, "reparam must be True or False"),
    (lambda: PrefixTuning(reparam=True, d_prime=0), ValueError, "d_prime must be a positive int"),
    (lambda: PrefixTuning(reparam=True, hidden=1.5), ValueError, "hidden must be a positive int"),
    (lambda: PrefixTuning(reparam=True, encoder="layer"), ValueError, "encoder must be one of"),
    (lambda: PrefixTuning(encoder="per-layer"), ValueError, "encoder='per-layer' needs reparam=True"),
])
def test_bad_options_name_the_field(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_bad_init_for_the_model(tiny_cfg, text_cfg):
    vision, text = mp.init_params(tiny_cfg, 0), mp.init_params(text_cfg, 0)
    for m in (PromptTuning(init_from="text", init_tokens=(1,)), PromptTuning(init_from="vocab")):
        with pytest.raises(ValueError, match="init_from: .* vision model .* allows init_from='uniform'"):
            mp.attach(vision, [m], tiny_cfg)
    with pytest.raises(ValueError, match=r"init_tokens: ids must lie in \[0, vocab=11\)"):
        mp.attach(text, [PromptTuning(init_from="text", init_tokens=(3, 11))], text_cfg)
    for m in (VPTShallow(), VPTDeep()):
        with pytest.raises(ValueError, match="needs a vision model"):
            mp.attach(text, [m], text_cfg)


def test_theta_of_the_wrong_shape_is_a_clear_error(tiny_cfg):
    x = images(tiny_cfg, 1)
    other = dataclasses.replace(tiny_cfg, N=3, d=12, h=2)
    cases = [
        (PromptTuning(p=3), {"P": onp.zeros((4, 16))}, r"prompt.P: shape \(4, 16\), expected \(3, 16\)"),
        (VPTShallow(p=3), {"P": onp.zeros((3, 8))}, r"vpt_shallow.P: shape \(3, 8\), expected \(3, 16\)"),
        (VPTDeep(p=2), {"P": onp.zeros((3, 2, 16))}, r"vpt_deep.P: shape \(3, 2, 16\), expected \(2, 2, 16\) .*N=2"),
        (PrefixTuning(p=2), mp.attach(mp.init_params(other, 0), [PrefixTuning(p=2)], other)["prefix"],
         r"prefix.P_k: shape \(3, 2, 12\), expected \(2, 2, 16\) \(a prefix for a backbone with N=2 layers of width d=16"),
        (PrefixTuning(p=2, reparam=True, d_prime=2, hidden=3),
         mp.attach(mp.init_params(other, 0), [PrefixTuning(p=2, reparam=True, d_prime=2, hidden=3)], other)["prefix"],
         r"prefix.W_2: shape \(72, 3\), expected \(64, 3\)"),
    ]
    base = mp.init_params(tiny_cfg, 0, "float64")
    for m, th, match in cases:
        with pytest.raises(ValueError, match=match):
            mp.forward({**base, m.name: th}, x, tiny_cfg, [m])


# ------------------------------------------------------------------ the real backbone
@pytest.mark.slow
@pytest.mark.parametrize("m", [PromptTuning(), VPTShallow(), VPTDeep(), PrefixTuning(), PrefixTuning(reparam=True),
                               PrefixTuning(reparam=True, encoder="per-layer")],
                         ids=IDS)
def test_each_method_trains_on_the_pretrained_backbone(m):
    from minipeft.pretrained import DEFAULT_CONFIG as cfg
    from minipeft.pretrained import load_backbone
    backbone, _ = load_backbone(cfg)
    task = mp.load_task("digits")
    params = mp.attach(mp.new_head(backbone, task.n_classes, 0), [m], cfg, 0)
    out, hist = mp.fit(params, task.train, cfg, [m], epochs=2, lr=m.suggested_lr, progress=False)
    assert onp.mean(hist["loss"][-5:]) < 0.6 * onp.mean(hist["loss"][:5])
    assert mp.evaluate(out, task.test, cfg, [m])["acc"] > 0.6  # chance is 0.1
    for (_, a), (_, b) in zip(tree.leaves_with_paths(params["blocks"]), tree.leaves_with_paths(out["blocks"])):
        assert a is b

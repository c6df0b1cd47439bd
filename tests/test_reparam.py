"""Reparameterisation methods (equations.md "LoRA", "BitFit", "(IA)³", "SSF"): identity at
init, exact merges against direct matrix formulas and an independent forward, unmerge,
closed-form counts, gradients (finite differences; LoRA's dL/dA = 0 at B = 0), training
keeps φ, several methods at once, adapters on disk, bad input."""
import numpy as onp
import pytest
from autograd.misc import flatten
from hypothesis import given
from hypothesis import strategies as st

import minipeft as mp
import reference
from conftest import TINY, finite_diff_check, images, randomize
from minipeft import tree
from minipeft.adapters import load_adapter, save_adapter
from minipeft.merge import merge_methods
from minipeft.methods.bitfit import BitFit
from minipeft.methods.ia3 import IA3
from minipeft.methods.lora import LoRA
from minipeft.methods.ssf import SSF

LINEARS = ("q", "k", "v", "o", "mlp1", "mlp2")
MODULE = {"q": ("attn", "W_q", "b_q"), "k": ("attn", "W_k", "b_k"), "v": ("attn", "W_v", "b_v"),
          "o": ("attn", "W_o", "b_o"), "mlp1": ("mlp", "W_1", "b_1"), "mlp2": ("mlp", "W_2", "b_2")}
#: relative tolerance of a merged forward (or an unmerge) by dtype: a few hundred ulps
TOL = {"float64": 1e-11, "float32": 1e-5}


def shape(cfg, t):
    """(d_out, d_in) of projection t, written out independently of the code under test."""
    return {"mlp1": (cfg.d_ff, cfg.d), "mlp2": (cfg.d, cfg.d_ff)}.get(t, (cfg.d, cfg.d))


# -------------------------------------------------------------------------- strategies
@st.composite
def configs(draw):
    h = draw(st.integers(1, 2))
    return mp.Config(d=h * draw(st.integers(2, 5)), h=h, N=draw(st.integers(1, 2)), d_ff=draw(st.integers(2, 12)),
                     n_classes=3, image_size=8, patch=4)


def subsets(items, min_size=1):
    return st.lists(st.sampled_from(items), min_size=min_size, max_size=len(items), unique=True).map(tuple)


@st.composite
def methods_for(draw, cfg, kind=None, name=None):
    """One reparameterisation method with drawn options that fit ``cfg``."""
    kind = kind or draw(st.sampled_from(["lora", "bitfit", "ia3", "ssf"]))
    kw = {"name": name} if name else {}
    if kind == "lora":
        targets = draw(subsets(LINEARS))
        rmax = min(min(shape(cfg, t)) for t in targets)
        layers = draw(st.none() | subsets(tuple(range(cfg.N))))
        alpha = draw(st.none() | st.floats(0.5, 16.0))
        return LoRA(r=draw(st.integers(1, rmax)), alpha=alpha, targets=targets, layers=layers, **kw)
    if kind == "bitfit":
        return BitFit(biases=draw(subsets(("b_q", "b_k", "b_v", "b_o", "b_1", "b_2", "beta"))), **kw)
    if kind == "ia3":
        return IA3(variant=draw(st.sampled_from(["notes", "paper"])), **kw)
    return SSF(placements=draw(subsets(LINEARS + ("ln1", "ln2", "ln_f"))),
               init_mode=draw(st.sampled_from(["official", "identity"])), **kw)


def backbone(cfg, seed, dtype):
    """A backbone with every leaf away from its init (LN γ ≠ 1, biases ≠ 0)."""
    return mp.backend.cast(randomize(mp.init_params(cfg, seed, "float64"), seed), dtype)


def attached_random(cfg, methods, seed, dtype):
    """Backbone + methods with random, non-zero θ (B ≠ 0, l ≠ 1, γ ≠ 1): θ ← θ + 0.3·N(0, 1)."""
    p = mp.attach(backbone(cfg, seed, dtype), methods, cfg, seed)
    rng = onp.random.default_rng(seed + 100)
    names = {m.name for m in methods}
    return tree.map_leaves(lambda path, a: (a + 0.3 * rng.standard_normal(a.shape)).astype(a.dtype)
                           if path[0] in names else a, p)


def close(got, want, dtype, what=""):
    scale = 1.0 + float(onp.abs(want).max())
    err = float(onp.abs(got - want).max())
    assert err <= TOL[dtype] * scale, f"{what}: max |Δ| {err:.3g} > {TOL[dtype]} × {scale:.3g}"


def snapshot(params):
    return [(p, a.dtype, a.tobytes()) for p, a in tree.leaves_with_paths(params)]


def skeleton(params):
    """The nesting of a tree, leaves replaced by their shapes (empty {} entries kept)."""
    return tree.map_leaves(lambda p, a: a.shape, params)


dtypes = st.sampled_from(["float64", "float32"])


# ------------------------------------------------------------------ identity at init
@given(cfg=configs(), data=st.data(), seed=st.integers(0, 10_000), dtype=dtypes)
def test_identity_at_init(cfg, data, seed, dtype):
    m = data.draw(methods_for(cfg))
    if isinstance(m, SSF):
        m = SSF(placements=m.placements, init_mode="identity")
    p0 = backbone(cfg, seed, dtype)
    p = mp.attach(p0, [m], cfg, seed)
    x = images(cfg, 2, seed, dtype)
    onp.testing.assert_array_equal(mp.forward(p, x, cfg, [m]), mp.forward(p0, x, cfg))


def test_ssf_official_init_statistics():
    cfg = mp.Config(d=64, h=4, N=4, d_ff=128, image_size=8, patch=4)
    th = SSF().init(cfg, mp.init_params(cfg, 0, "float64"), onp.random.default_rng(0))
    g = onp.concatenate([a for p, a in tree.leaves_with_paths(th) if p[-1] == "gamma"])
    b = onp.concatenate([a for p, a in tree.leaves_with_paths(th) if p[-1] == "beta"])
    assert g.size == b.size == SSF().n_params(cfg) // 2
    assert abs(g.mean() - 1) < 0.002 and abs(g.std() - 0.02) < 0.002
    assert abs(b.mean()) < 0.002 and abs(b.std() - 0.02) < 0.002


def test_lora_init_B_zero_A_gaussian_variance_one_over_k():
    cfg = mp.Config(d=64, h=4, N=4, d_ff=128, image_size=8, patch=4)
    th = mp.attach(mp.init_params(cfg, 0, "float32"), [LoRA(r=8, targets=("q", "mlp2"))], cfg)["lora"]
    for t, k in (("q", 64), ("mlp2", 128)):
        A = onp.stack([b[t]["A"] for b in th["blocks"]])
        assert A.dtype == onp.float32 and A.shape == (4, 8, k)
        assert abs(A.var() * k - 1) < 0.1
        assert not onp.any(onp.stack([b[t]["B"] for b in th["blocks"]]))


# ---------------------------------------------------------------- merge equivalence
@given(cfg=configs(), data=st.data(), seed=st.integers(0, 10_000), dtype=dtypes)
def test_merge_equals_unmerged_forward_and_unmerge_restores(cfg, data, seed, dtype):
    m = data.draw(methods_for(cfg))
    p = attached_random(cfg, [m], seed, dtype)
    before = snapshot(p)
    x = images(cfg, 3, seed, dtype)
    want = mp.forward(p, x, cfg, [m])
    merged = m.merge(p)
    assert set(merged) == {"embed", "blocks", "ln_f", "head"}  # the original architecture, θ gone
    assert skeleton(merged) == skeleton(mp.backend.cast(mp.init_params(cfg, 0), dtype))
    assert all(a.dtype == onp.dtype(dtype) for _, a in tree.leaves_with_paths(merged))
    close(mp.forward(merged, x, cfg), want, dtype, "merged vs unmerged")
    with pytest.raises(ValueError, match="already merged"):
        m.merge(merged)
    back = m.unmerge(merged, p[m.name])
    assert back[m.name] is p[m.name]
    for (path, a), (_, b) in zip(tree.leaves_with_paths(back), tree.leaves_with_paths(p)):
        assert a.dtype == b.dtype
        close(a, b, dtype, f"unmerge {tree.path_str(path)}")
    with pytest.raises(ValueError, match="not merged"):
        m.unmerge(back, p[m.name])
    assert snapshot(p) == before  # merge and unmerge never modify their input


def _direct_merge(p, m):
    """The merged backbone by the papers' matrix formulas, with explicit diag() and a rank loop."""
    q = tree.map_leaves(lambda path, a: a.copy(), {k: v for k, v in p.items() if k != m.name})
    th = p[m.name]
    for ell, blk in enumerate(q["blocks"]):
        if isinstance(m, LoRA) and (m.layers is None or ell in m.layers):
            for t in m.targets:
                mod, W, _ = MODULE[t]
                A, B = th["blocks"][ell][t]["A"], th["blocks"][ell][t]["B"]
                delta = sum(onp.outer(B[:, j], A[j, :]) for j in range(m.r))  # Σ_j b_j a_jᵀ = B A
                blk[mod][W] = blk[mod][W] + m.scaling * delta
        if isinstance(m, IA3):
            for t in m.scaled:
                mod, W, b = MODULE[t]
                L = onp.diag(th["blocks"][ell]["l_" + t])
                blk[mod][W], blk[mod][b] = L @ blk[mod][W], L @ blk[mod][b]
            if m.ff:
                blk["mlp"]["W_2"] = blk["mlp"]["W_2"] @ onp.diag(th["blocks"][ell]["l_ff"])
        if isinstance(m, SSF):
            for pl, gb in th["blocks"][ell].items():
                G = onp.diag(gb["gamma"])
                mod, W, b = MODULE[pl] if pl in MODULE else (pl, "gamma", "beta")
                blk[mod][W], blk[mod][b] = G @ blk[mod][W], G @ blk[mod][b] + gb["beta"]
    if isinstance(m, SSF) and "ln_f" in th:
        G = onp.diag(th["ln_f"]["gamma"])
        q["ln_f"] = {"gamma": G @ q["ln_f"]["gamma"], "beta": G @ q["ln_f"]["beta"] + th["ln_f"]["beta"]}
    return q


@given(cfg=configs(), data=st.data(), seed=st.integers(0, 10_000))
def test_merge_matches_direct_formulas_and_an_independent_forward(cfg, data, seed):
    """merge(φ) = the papers' formulas; the hooked forward = a per-head loop forward of them."""
    m = data.draw(methods_for(cfg))
    p = attached_random(cfg, [m], seed, "float64")
    direct = _direct_merge(p, m)
    for (path, a), (_, b) in zip(tree.leaves_with_paths(m.merge(p)), tree.leaves_with_paths(direct)):
        onp.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13, err_msg=tree.path_str(path))
    x = images(cfg, 2, seed)
    onp.testing.assert_allclose(mp.forward(p, x, cfg, [m]), reference.forward(direct, x, cfg), rtol=1e-10, atol=1e-11)


def _insertions(p, m, N):
    """θ as reference.forward's insertions, by the notes' equations: LoRA ΔW = (α/r) B A on
    each target; (IA)³ l ⊙ y and l_ff ⊙ H; SSF (γ, β) per placement. BitFit's θ is the
    backbone's own biases: no insertion.  -> (blocks, ln_f_ssf)."""
    blocks = [{} for _ in range(N)]
    if isinstance(m, BitFit):
        return blocks, None
    for ell, ins in enumerate(blocks):
        th = p[m.name]["blocks"][ell]
        if isinstance(m, LoRA) and (m.layers is None or ell in m.layers):
            ins["delta"] = {t: m.scaling * th[t]["B"] @ th[t]["A"] for t in m.targets}
        if isinstance(m, IA3):
            ins["scale"] = {t: th["l_" + t] for t in m.scaled}
            if m.ff:
                ins["l_ff"] = th["l_ff"]
        if isinstance(m, SSF):
            ins["ssf"] = {pl: (gb["gamma"], gb["beta"]) for pl, gb in th.items()}
    ln_f = p[m.name].get("ln_f") if isinstance(m, SSF) else None
    return blocks, None if ln_f is None else (ln_f["gamma"], ln_f["beta"])


@pytest.mark.parametrize("kind", ["lora", "bitfit", "ia3", "ssf"])
@given(cfg=configs(), data=st.data(), seed=st.integers(0, 10_000))
def test_hooked_forward_matches_the_reference_with_insertions(kind, cfg, data, seed):
    """Unmerged: the hooks put ΔW, l and (γ, β) where the notes' equations put them."""
    m = data.draw(methods_for(cfg, kind))
    p = attached_random(cfg, [m], seed, "float64")
    blocks, ln_f = _insertions(p, m, cfg.N)
    x = images(cfg, 2, seed)
    onp.testing.assert_allclose(mp.forward(p, x, cfg, [m]), reference.forward(p, x, cfg, blocks=blocks, ln_f_ssf=ln_f),
                                rtol=1e-10, atol=1e-11)


def test_lora_hook_is_h_equals_y_plus_alpha_over_r_x_BA_transposed(tiny_cfg):
    """h = x W₀ᵀ + b + (α/r)(x Aᵀ)Bᵀ: with α = 6, r = 2 the update is 3 · x (BA)ᵀ."""
    m = LoRA(r=2, alpha=6.0)
    th = attached_random(tiny_cfg, [m], 0, "float64")["lora"]
    rng = onp.random.default_rng(1)
    x, y = rng.standard_normal((2, 5, 16)), rng.standard_normal((2, 5, 16))
    A, B = th["blocks"][1]["v"]["A"], th["blocks"][1]["v"]["B"]
    h = m.on_linear(th, y, x=x, layer=1, name="v", cfg=tiny_cfg)
    onp.testing.assert_allclose(h - y, 3.0 * onp.einsum("btk,dk->btd", x, B @ A), rtol=1e-12, atol=1e-14)
    assert m.on_linear(th, y, x=x, layer=1, name="k", cfg=tiny_cfg) is y  # not a target: untouched
    assert LoRA(r=2).scaling == 1.0 and m.scaling == 3.0


# ------------------------------------------------------------------------ counts
@given(cfg=configs(), data=st.data())
def test_closed_form_counts_equal_counted(cfg, data):
    m = data.draw(methods_for(cfg))
    p = mp.attach(mp.init_params(cfg, 0), [m], cfg)
    assert m.n_params(cfg) == mp.count_trainable(p, [m], train_head=False)
    d, d_ff, N = cfg.d, cfg.d_ff, cfg.N
    if isinstance(m, LoRA):  # r(d + k) per adapted matrix
        n_layers = N if m.layers is None else len(m.layers)
        want = n_layers * sum(m.r * sum(shape(cfg, t)) for t in m.targets)
    elif isinstance(m, IA3):  # 3dN or (2d + d_ff)N
        want = 3 * d * N if m.variant == "notes" else (2 * d + d_ff) * N
    elif isinstance(m, SSF):  # γ and β per placement
        w = {"mlp1": d_ff}
        want = 2 * sum(w.get(pl, d) * (1 if pl == "ln_f" else N) for pl in m.placements)
    else:  # BitFit: the selected biases
        w = {"b_1": d_ff, "beta": 2 * d}
        want = N * sum(w.get(b, d) for b in m.biases) + (d if "beta" in m.biases else 0)
    assert m.n_params(cfg) == want


def test_counts_on_the_default_config():
    cfg = mp.Config()
    assert LoRA().n_params(cfg) == 4 * 2 * 4 * (64 + 64)  # N · targets(q, v) · r(d + k)
    assert BitFit().n_params(cfg) == 4 * (5 * 64 + 128 + 2 * 64) + 64
    assert IA3().n_params(cfg) == 3 * 64 * 4 and IA3(variant="paper").n_params(cfg) == (2 * 64 + 128) * 4
    assert SSF().n_params(cfg) == 2 * (4 * (7 * 64 + 128) + 64)


# --------------------------------------------------------------------- gradients
def test_lora_B_zero_gives_dL_dA_zero_exactly_and_dL_dB_nonzero(tiny_cfg):
    m = LoRA(r=3, targets=LINEARS)
    p = mp.attach(backbone(tiny_cfg, 0, "float64"), [m], tiny_cfg, 0)
    theta, phi = mp.split(p, mp.trainable([m], train_head=False))
    x, y = images(tiny_cfg, 4), onp.array([0, 1, 2, 1])
    _, g = mp.value_and_grad(lambda th: mp.loss(th, phi, x, y, tiny_cfg, [m]), theta)
    for ell in range(tiny_cfg.N):
        for t in LINEARS:
            gA, gB = g["lora"]["blocks"][ell][t]["A"], g["lora"]["blocks"][ell][t]["B"]
            assert not onp.any(gA), (ell, t)  # dL/dA = (α/r) Bᵀ (∂L/∂h)ᵀ x = 0 exactly
            assert onp.abs(gB).max() > 1e-8, (ell, t)


@pytest.mark.parametrize("m", [LoRA(r=2, alpha=3.0, targets=("q", "o", "mlp2")), BitFit(), BitFit(biases=("b_q", "b_1")),
                               IA3(), IA3(variant="paper"), SSF()], ids=lambda m: repr(m)[:40])
def test_gradient_matches_finite_differences(tiny_cfg, m):
    p = attached_random(tiny_cfg, [m], 1, "float64")
    theta, phi = mp.split(p, mp.trainable([m], train_head=False))
    v0, unflat = flatten(theta)
    x, y = images(tiny_cfg, 3, 1), onp.array([2, 0, 1])
    finite_diff_check(lambda v: mp.loss(unflat(v), phi, x, y, tiny_cfg, [m]), v0, rtol=1e-5, atol=1e-8)


def _toy_task(cfg, n=48, seed=0):
    """Images labelled by which third of the image is brightest: learnable, deterministic."""
    x = images(cfg, n, seed)
    thirds = onp.array_split(x.reshape(n, -1), 3, axis=1)
    return x, onp.argmax(onp.stack([t.mean(axis=1) for t in thirds], 1), axis=1)


@pytest.mark.parametrize("m", [LoRA(r=2), BitFit(), IA3(variant="paper"), SSF()], ids=lambda m: type(m).__name__)
def test_training_keeps_phi_bit_identical_and_lowers_the_loss(tiny_cfg, m):
    p = mp.attach(mp.init_params(tiny_cfg, 0, "float32"), [m], tiny_cfg, 0)
    x, y = _toy_task(tiny_cfg)
    pred = mp.trainable([m], train_head=False)
    before = {path: a.tobytes() for path, a in tree.leaves_with_paths(p)}
    q, hist = mp.fit(p, (x, y), tiny_cfg, [m], train_head=False, steps=25, batch_size=48, lr=3e-2, progress=False)
    changed = 0
    for path, a in tree.leaves_with_paths(q):
        if pred(path, a):
            changed += a.tobytes() != before[path]
        else:
            assert a.tobytes() == before[path], tree.path_str(path)  # φ untouched, bit for bit
    assert changed > 0
    assert hist["loss"][-1] < 0.95 * hist["loss"][0]


# ------------------------------------------------------------ several methods at once
def test_lora_plus_bitfit_train_together_and_lora_merges_while_bitfit_stays(tiny_cfg):
    lora, bitfit = LoRA(r=2, targets=("q", "v", "mlp1")), BitFit(biases=("b_q", "b_1"))
    ms = [lora, bitfit]
    p = mp.attach(mp.init_params(tiny_cfg, 0, "float32"), ms, tiny_cfg, 0)
    assert mp.count_trainable(p, ms, train_head=False) == lora.n_params(tiny_cfg) + bitfit.n_params(tiny_cfg)
    x, y = _toy_task(tiny_cfg)
    p, hist = mp.fit(p, (x, y), tiny_cfg, ms, train_head=False, steps=15, batch_size=48, lr=3e-2, progress=False)
    assert hist["loss"][-1] < hist["loss"][0]
    assert onp.abs(p["lora"]["blocks"][0]["q"]["B"]).max() > 0
    merged, remaining = merge_methods(p, ms, which=["lora"])
    assert remaining == [bitfit] and "lora" not in merged and "bitfit" in merged
    close(mp.forward(merged, x, tiny_cfg, remaining), mp.forward(p, x, tiny_cfg, ms), "float32")
    assert mp.count_trainable(merged, remaining, train_head=False) == bitfit.n_params(tiny_cfg)
    # BitFit keeps training on the merged backbone; then merges too
    merged, hist = mp.fit(merged, (x, y), tiny_cfg, remaining, train_head=False, steps=3, batch_size=48,
                          lr=1e-2, progress=False)
    final, rest = merge_methods(merged, remaining)
    assert rest == [] and set(final) == {"embed", "blocks", "ln_f", "head"}
    onp.testing.assert_array_equal(mp.forward(final, x, tiny_cfg), mp.forward(merged, x, tiny_cfg, remaining))
    with pytest.raises(ValueError, match="already merged"):
        merge_methods(final, remaining)


@given(data=st.data(), seed=st.integers(0, 1000), dtype=dtypes)
def test_any_merge_merge_methods_accepts_is_exact(data, seed, dtype):
    """Random stacks of 2–3 methods, in random order, merging a random subset: whenever
    merge_methods accepts, forward(merged, remaining) = forward(params, methods)."""
    kinds = data.draw(st.lists(st.sampled_from(["lora", "bitfit", "ia3", "ssf"]), min_size=2, max_size=3))
    ms = [data.draw(methods_for(TINY, k, name=f"m{i}")) for i, k in enumerate(kinds)]
    which = data.draw(st.none() | subsets(tuple(m.name for m in ms)))
    p = attached_random(TINY, ms, seed, dtype)
    x = images(TINY, 2, seed, dtype)
    try:
        merged, remaining = merge_methods(p, ms, which)
    except ValueError as e:
        assert "cannot merge exactly" in str(e)
        return
    assert [m.name for m in remaining] == [m.name for m in ms if which is not None and m.name not in which]
    close(mp.forward(merged, x, TINY, remaining), mp.forward(p, x, TINY, ms), dtype)


def test_merge_order_is_chosen_to_stay_exact(tiny_cfg):
    """IA3 (paper) listed before LoRA on W₂: merging IA3 first would change LoRA's input
    (l_ff ⊙ H → H), so LoRA merges first: W₂' = (W₂ + BA) diag(l_ff)."""
    ms = [IA3(variant="paper"), LoRA(targets=("mlp2",))]
    p = attached_random(tiny_cfg, ms, 0, "float64")
    merged, remaining = merge_methods(p, ms)
    assert remaining == []
    l_ff, ab = p["ia3"]["blocks"][0]["l_ff"], p["lora"]["blocks"][0]["mlp2"]
    want = (p["blocks"][0]["mlp"]["W_2"] + ab["B"] @ ab["A"]) @ onp.diag(l_ff)
    onp.testing.assert_allclose(merged["blocks"][0]["mlp"]["W_2"], want, rtol=1e-12)
    x = images(tiny_cfg, 2)
    close(mp.forward(merged, x, tiny_cfg), mp.forward(p, x, tiny_cfg, ms), "float64")


@pytest.mark.parametrize("ms,which,match", [
    ([SSF(placements=("q",)), LoRA(targets=("q",))], ["lora"], "'ssf' is listed before 'lora'"),
    ([IA3(variant="paper"), LoRA(targets=("mlp2",))], ["ia3"], "reads the input of W_2"),
    ([SSF(placements=("ln1",)), SSF(name="ssf2", placements=("ln1",))], ["ssf2"], "'ssf' is listed before 'ssf2'"),
    ([SSF(placements=("mlp2",)), LoRA(targets=("mlp2",))], ["lora"], "also acts on linear mlp2 of layer 0"),
])
def test_inexact_partial_merges_are_refused_and_would_indeed_differ(tiny_cfg, ms, which, match):
    p = attached_random(tiny_cfg, ms, 0, "float64")
    with pytest.raises(ValueError, match=match):
        merge_methods(p, ms, which)
    # the refused merge, done by hand, really changes the function
    m = next(m for m in ms if m.name in which)
    rest = [o for o in ms if o.name not in which]
    x = images(tiny_cfg, 2)
    assert not onp.allclose(mp.forward(m.merge(p), x, tiny_cfg, rest), mp.forward(p, x, tiny_cfg, ms))


def test_merge_methods_bad_input(tiny_cfg):
    p = attached_random(tiny_cfg, [LoRA()], 0, "float64")
    with pytest.raises(ValueError, match="which: unknown method name"):
        merge_methods(p, [LoRA()], which=["lorra"])
    with pytest.raises(ValueError, match="'linear_probe'.*cannot be merged"):
        merge_methods(p, [LoRA(), mp.LinearProbe()])
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_methods(p, [])


# --------------------------------------------------------------------- on disk
@pytest.mark.parametrize("m", [LoRA(r=2, targets=("k", "mlp1"), layers=(0,)), BitFit(biases=("b_v", "beta")),
                               IA3(variant="paper"), SSF(placements=("ln_f",)), SSF()], ids=lambda m: repr(m)[:50])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adapter_round_trip_bit_exact_then_merge(tmp_path, tiny_cfg, m, dtype):
    p = attached_random(tiny_cfg, [m], 3, dtype)
    if isinstance(m, BitFit):
        p = mp.attach(randomize(p, 4), [m], tiny_cfg)  # trained biases ≠ the backbone's
    f = tmp_path / "a.npz"
    save_adapter(f, p, [m], tiny_cfg, train_head=False, extra={"task": "toy"})
    base = mp.backend.cast(mp.init_params(tiny_cfg, 0, "float64"), dtype)
    with pytest.raises(ValueError, match="another backbone"):  # p's φ was randomized: not base
        load_adapter(f, base, tiny_cfg)
    with pytest.warns(UserWarning, match="another backbone"):
        q, methods, meta = load_adapter(f, base, tiny_cfg, other_backbone=True)
    assert methods == [m] and meta["task"] == "toy"
    theta_p, _ = mp.split(p, mp.trainable([m], train_head=False))
    theta_q, phi_q = mp.split(q, mp.trainable([m], train_head=False))
    assert skeleton(theta_q) == skeleton(theta_p) and skeleton(q) == skeleton(p)  # {} entries kept
    assert snapshot(theta_q) == snapshot(theta_p)
    assert snapshot(phi_q) == snapshot(mp.split(base, mp.trainable([m], train_head=False))[1])
    x = images(tiny_cfg, 2, dtype=dtype)
    close(mp.forward(m.merge(q), x, tiny_cfg), mp.forward(q, x, tiny_cfg, [m]), dtype)


# --------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,match", [
    (lambda: LoRA(r=0), "r must be a positive int"),
    (lambda: LoRA(r=-2), "r must be a positive int"),
    (lambda: LoRA(r=2.0), "r must be a positive int"),
    (lambda: LoRA(alpha=0.0), "alpha must be a positive number"),
    (lambda: LoRA(targets=("q", "x")), r"targets: unknown name\(s\) \['x'\]; allowed: \('q', 'k', 'v', 'o', 'mlp1', 'mlp2', 'gate'\)"),
    (lambda: LoRA(targets=()), "targets must not be empty"),
    (lambda: LoRA(targets="q"), "targets must be a tuple"),
    (lambda: LoRA(targets=("q", "q")), "targets: each name at most once"),
    (lambda: LoRA(layers=()), "layers must be None"),
    (lambda: LoRA(layers=(-1,)), "layers must be distinct non-negative ints"),
    (lambda: BitFit(biases=("gamma",)), r"biases: unknown name.*allowed: \('b_q'"),
    (lambda: BitFit(biases=()), "biases must not be empty"),
    (lambda: IA3(variant="both"), r"variant must be one of \('notes', 'paper'\)"),
    (lambda: SSF(placements=("attn",)), r"placements: unknown name.*allowed: \('q', 'k', 'v', 'o', 'mlp1', 'mlp2', 'ln1'"),
    (lambda: SSF(placements=()), "placements must not be empty"),
    (lambda: SSF(init_mode="zeros"), r"init_mode must be one of \('official', 'identity'\)"),
    (lambda: SSF(init_std=float("inf")), "init_std must be a finite non-negative number"),
    (lambda: SSF(init_std=-0.1), "init_std must be a finite non-negative number"),
    (lambda: IA3(variant=["notes"]), r"variant must be one of \('notes', 'paper'\)"),
])
def test_bad_options_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("m,match", [
    (LoRA(r=17), r"r must be ≤ min\(d, k\) = 16 for target 'q' \(W_q is 16×16\), got r = 17"),
    (LoRA(r=17, targets=("mlp1",)), r"min\(d, k\) = 16 for target 'mlp1' \(W_1 is 24×16\)"),
    (LoRA(layers=(0, 2)), r"layers must be block indices in 0\.\.1"),
])
def test_lora_options_checked_against_the_config(tiny_cfg, m, match):
    with pytest.raises(ValueError, match=match):
        mp.attach(mp.init_params(tiny_cfg, 0), [m], tiny_cfg)
    with pytest.raises(ValueError, match=match):
        m.n_params(tiny_cfg)


def test_lists_from_the_command_line_become_tuples():
    assert LoRA(targets=["q"], layers=[1, 0]).layers == (0, 1)  # stored sorted, as every layers option
    assert SSF(placements=["q"]).placements == ("q",)


def test_unmerge_with_a_zero_scale_is_refused(tiny_cfg):
    for m, key in ((IA3(), "l_k"), (SSF(placements=("k",), init_mode="identity"), "k")):
        p = mp.attach(mp.init_params(tiny_cfg, 0, "float64"), [m], tiny_cfg)
        th = tree.replace(p[m.name], ("blocks", 1, key) + (("gamma",) if isinstance(m, SSF) else ()),
                          onp.zeros(tiny_cfg.d))
        merged = m.merge({**p, m.name: th})
        with pytest.raises(ValueError, match="not invertible"):
            m.unmerge(merged, th)


# ------------------------------------------------------- the pretrained backbone (slow)
@pytest.mark.slow
@pytest.mark.parametrize("m", [LoRA(), BitFit(), IA3(), IA3(variant="paper"), SSF()], ids=lambda m: repr(m)[:30])
def test_trains_on_a_downstream_task_and_merges_exactly(m):
    from minipeft.pretrained import load_backbone

    params, _ = load_backbone()
    task = mp.load_task("digits")
    p = mp.attach(mp.new_head(params, task.n_classes, 0), [m], mp.Config(), 0)
    p, hist = mp.fit(p, task.train, mp.Config(), [m], epochs=2, lr=m.suggested_lr, progress=False)
    assert onp.mean(hist["loss"][-5:]) < 0.6 * onp.mean(hist["loss"][:5])
    assert mp.evaluate(p, task.test, mp.Config(), [m])["acc"] > 0.6
    X = task.test[0]
    close(mp.predict(m.merge(p), X, mp.Config()), mp.predict(p, X, mp.Config(), [m]), "float32")

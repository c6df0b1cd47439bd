"""Several methods active at once (design: "Several methods can be active at once (LoRA +
BitFit; prefix + parallel adapter)"), and merging one while another stays active.

An independent reference forward for prefix + AdaptFormer + serial adapters; identity at
init of the combination (= the other method alone); training moves every method's θ and
no other leaf; exact partial merges (merge.merge_methods) with an adapter still active;
the refusal to merge an adapter; counts with overlapping unfrozen leaves; save/load."""
import numpy as onp
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minipeft as mp
from conftest import images, randomize
from minipeft import tree
from minipeft.adapters import load_adapter, save_adapter
from minipeft.merge import merge_methods
from minipeft.methods.adapter import AdaptFormer, SerialAdapter
from minipeft.methods.bitfit import BitFit
from minipeft.methods.ia3 import IA3
from minipeft.methods.lora import LoRA
from minipeft.methods.prefix import PrefixTuning
from minipeft.methods.ssf import SSF
from minipeft.nn import reference as R
from test_adapters import TINY, TOL, ref_adapter
from test_nn import naive_attention
from test_train import toy_data

Y3 = onp.array([0, 1, 2])


def fresh(methods, seed=0, dtype="float64", scale=0.0):
    """Backbone (randomised, so LN γ ≠ 1 …) + every method's θ; ``scale`` > 0 also perturbs θ."""
    p = mp.attach(randomize(mp.init_params(TINY, seed, dtype), seed, 0.2), methods, TINY, seed)
    if scale:
        names = {m.name for m in methods}
        p = {k: (randomize(v, seed + 1, scale) if k in names else v) for k, v in p.items()}
    return p


def reference_forward(params, x, cfg, prefix=None, af=None, serial=None):
    """equations.md "Transformer" + "Prefix tuning" (K' = [P_k; K], V' = [P_v; V]) + "Adapters:
    AdaptFormer" + "Adapters: serial" in plain NumPy, per-head loops; every layer adapted.
    On the MLP branch the serial adapter acts on MLP(·) first, then AdaptFormer adds s·X̃."""
    B, P, g = x.shape[0], cfg.patch, cfg.image_size // cfg.patch
    patches = onp.stack([x[:, :, i * P:(i + 1) * P, j * P:(j + 1) * P].reshape(B, -1)
                         for i in range(g) for j in range(g)], 1)
    e = params["embed"]
    Z = onp.concatenate([onp.tile(e["cls"], (B, 1, 1)), patches @ e["W"].T + e["b"]], 1) + e["pos"]
    for ell, bp in enumerate(params["blocks"]):
        a, m = bp["attn"], bp["mlp"]
        h1 = R.layer_norm(Z, bp["ln1"]["gamma"], bp["ln1"]["beta"])
        K, V = h1 @ a["W_k"].T + a["b_k"], h1 @ a["W_v"].T + a["b_v"]
        if prefix is not None:
            th = params[prefix.name]
            K = onp.concatenate([onp.tile(th["P_k"][ell], (B, 1, 1)), K], 1)  # (B, p + T, d)
            V = onp.concatenate([onp.tile(th["P_v"][ell], (B, 1, 1)), V], 1)
        O = naive_attention(h1 @ a["W_q"].T + a["b_q"], K, V, cfg.h) @ a["W_o"].T + a["b_o"]
        if serial is not None and serial.placement == "houlsby":
            O = O + ref_adapter(params[serial.name]["blocks"][ell]["attn"], O)
        X1 = Z + O
        h2 = R.layer_norm(X1, bp["ln2"]["gamma"], bp["ln2"]["beta"])
        M = R.gelu(h2 @ m["W_1"].T + m["b_1"]) @ m["W_2"].T + m["b_2"]
        if serial is not None:
            M = M + ref_adapter(params[serial.name]["blocks"][ell]["mlp"], M)
        if af is not None:
            M = M + af.s * ref_adapter(params[af.name]["blocks"][ell], h2 if af.input == "normed" else X1)
        Z = X1 + M
    cls = R.layer_norm(Z, params["ln_f"]["gamma"], params["ln_f"]["beta"])[:, 0]
    return cls @ params["head"]["W"].T + params["head"]["b"]


# ------------------------------------------------------------ prefix + AdaptFormer
@given(p_len=st.integers(1, 4), d_hat=st.integers(1, 5), s=st.floats(-2, 2), dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 2**16))
def test_prefix_plus_adaptformer_at_init_is_the_prefix_alone(p_len, d_hat, s, dtype, seed):
    """W_up = 0: adding AdaptFormer to a prefix changes nothing, bit for bit."""
    pre, af = PrefixTuning(p=p_len), AdaptFormer(d_hat=d_hat, s=s)
    p = fresh([pre, af], seed, dtype)
    x = images(TINY, 2, seed, dtype)
    onp.testing.assert_array_equal(mp.forward(p, x, TINY, [pre, af]), mp.forward(p, x, TINY, [pre]))


@given(p_len=st.integers(1, 4), d_hat=st.integers(1, 5), s=st.floats(-2, 2), inp=st.sampled_from(["normed", "residual"]),
       seed=st.integers(0, 2**16))
def test_prefix_plus_adaptformer_matches_the_reference_in_either_order(p_len, d_hat, s, inp, seed):
    pre, af = PrefixTuning(p=p_len), AdaptFormer(d_hat=d_hat, s=s, input=inp)
    p = fresh([pre, af], seed, scale=0.3)
    x = images(TINY, 2, seed)
    got = mp.forward(p, x, TINY, [pre, af])
    onp.testing.assert_allclose(got, reference_forward(p, x, TINY, prefix=pre, af=af), **TOL["float64"])
    onp.testing.assert_array_equal(mp.forward(p, x, TINY, [af, pre]), got)  # different seams: order-free


@given(d_hat=st.integers(1, 5), placement=st.sampled_from(["houlsby", "pfeiffer"]), seed=st.integers(0, 2**16))
def test_serial_then_adaptformer_on_the_mlp_branch_matches_the_reference(d_hat, placement, seed):
    """Both on the MLP branch: M ← A(M) (the "after" seam), then M + s·X̃ (the "mlp" seam)."""
    se, af = SerialAdapter(d_hat=d_hat, placement=placement), AdaptFormer(d_hat=d_hat, s=0.5)
    p = fresh([se, af], seed, scale=0.3)
    x = images(TINY, 2, seed)
    onp.testing.assert_allclose(mp.forward(p, x, TINY, [se, af]), reference_forward(p, x, TINY, serial=se, af=af),
                                **TOL["float64"])


def test_prefix_plus_adaptformer_gradient_matches_finite_differences():
    pre, af = PrefixTuning(p=2), AdaptFormer(d_hat=3, s=0.7)
    p = fresh([pre, af], 3, scale=0.3)
    x = images(TINY, 3, 3)
    th, ph = mp.split(p, mp.trainable([pre, af], train_head=False))
    _, g = mp.value_and_grad(lambda t: mp.loss(t, ph, x, Y3, TINY, [pre, af]), th)
    r = onp.random.default_rng(0)
    for _ in range(4):
        u = tree.map_leaves(lambda q, a: r.standard_normal(a.shape), th)
        shift = lambda e: tree.map_leaves(lambda q, a: a + e * tree.get(u, q), th)  # noqa: E731
        L = lambda e: float(mp.loss(shift(e), ph, x, Y3, TINY, [pre, af]))  # noqa: E731
        fd = (L(1e-6) - L(-1e-6)) / 2e-6
        gu = sum(float(onp.sum(a * tree.get(u, q))) for q, a in tree.leaves_with_paths(g))
        assert abs(gu - fd) <= 1e-6 * abs(fd) + 1e-9, (gu, fd)
    assert {q[0] for q, a in tree.leaves_with_paths(g) if a.any()} == {"prefix", "adaptformer"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_prefix_plus_adaptformer_train_together_and_phi_stays_bit_identical(dtype):
    pre, af = PrefixTuning(p=2), AdaptFormer(d_hat=4, s=1.0)
    p = mp.attach(mp.init_params(TINY, 0, dtype), [pre, af], TINY)
    copies = {q: a.copy() for q, a in tree.leaves_with_paths(p)}
    data = toy_data(TINY)
    before = mp.evaluate(p, data, TINY, [pre, af])["loss"]
    p2, _ = mp.fit(p, data, TINY, [pre, af], train_head=False, steps=100, batch_size=16, lr=1e-2, progress=False)
    assert mp.evaluate(p2, data, TINY, [pre, af])["loss"] < 0.8 * before
    moved = {q[0] for q, a in tree.leaves_with_paths(p2) if not onp.array_equal(a, copies[q])}
    assert moved == {"prefix", "adaptformer"}
    for q, a in tree.leaves_with_paths(p2):
        if q[0] not in moved:
            assert a is tree.get(p, q) and a.tobytes() == copies[q].tobytes()


# ------------------------------------------------------------------- LoRA + BitFit
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lora_plus_bitfit_train_both_then_lora_merges_while_bitfit_stays(dtype):
    lora, bitfit = LoRA(r=2, targets=("q", "v", "mlp1")), BitFit()
    p = mp.attach(mp.init_params(TINY, 0, dtype), [lora, bitfit], TINY)
    assert mp.count_trainable(p, [lora, bitfit], train_head=False) == lora.n_params(TINY) + bitfit.n_params(TINY)
    copies = {q: a.copy() for q, a in tree.leaves_with_paths(p)}
    p2, _ = mp.fit(p, toy_data(TINY), TINY, [lora, bitfit], train_head=False, steps=15, batch_size=16, lr=1e-2,
                   progress=False)
    moved = {q for q, a in tree.leaves_with_paths(p2) if not onp.array_equal(a, copies[q])}
    assert {q for q in moved if q[0] == "lora"} == {q for q, _ in tree.leaves_with_paths(p2["lora"], ("lora",))}
    assert {q for q in moved if q[0] != "lora"} == {q for q, _ in tree.leaves_with_paths(p2) if bitfit.trains_backbone(q)}
    x = images(TINY, 4, dtype=dtype)
    want = mp.forward(p2, x, TINY, [lora, bitfit])
    merged, remaining = merge_methods(p2, [lora, bitfit], which=["lora"])
    assert remaining == [bitfit] and "lora" not in merged and "bitfit" in merged
    onp.testing.assert_allclose(mp.forward(merged, x, TINY, remaining), want, **TOL[dtype])
    onp.testing.assert_allclose(mp.forward(lora.merge(p2), x, TINY, [bitfit]), want, **TOL[dtype])
    # BitFit keeps training on the merged backbone; the merged W_q stays frozen
    p3, _ = mp.fit(merged, toy_data(TINY), TINY, remaining, train_head=False, steps=3, batch_size=16, lr=1e-2, progress=False)
    assert p3["blocks"][0]["attn"]["W_q"] is merged["blocks"][0]["attn"]["W_q"]
    assert not onp.array_equal(p3["blocks"][0]["attn"]["b_q"], merged["blocks"][0]["attn"]["b_q"])
    # unmerge puts W₀ back (up to rounding) and LoRA active again
    back = lora.unmerge(merged, p2["lora"])
    onp.testing.assert_allclose(back["blocks"][1]["attn"]["W_v"], p2["blocks"][1]["attn"]["W_v"], **TOL[dtype])
    onp.testing.assert_allclose(mp.forward(back, x, TINY, [lora, bitfit]), want, **TOL[dtype])


# ------------------------------------------- merging while an adapter stays active
ADAPTERS = [AdaptFormer(d_hat=3, s=0.5), SerialAdapter(d_hat=3), SerialAdapter(d_hat=3, placement="pfeiffer")]
MERGEABLE = [LoRA(r=2, targets=("q", "v", "o", "mlp1", "mlp2")), SSF(), IA3(variant="paper"), IA3(variant="notes")]


@pytest.mark.parametrize("adapter", ADAPTERS, ids=["adaptformer", "houlsby", "pfeiffer"])
@pytest.mark.parametrize("other", MERGEABLE, ids=["lora", "ssf", "ia3-paper", "ia3-notes"])
@pytest.mark.parametrize("adapter_first", [True, False])
def test_merge_a_reparameterisation_while_an_adapter_stays_active(adapter, other, adapter_first):
    """The adapter acts on points no reparameterisation folds into (after the attention and
    MLP outputs, or the "mlp" seam), so the merge is exact in either listing order."""
    methods = [adapter, other] if adapter_first else [other, adapter]
    p = fresh(methods, 5, scale=0.3)
    x = images(TINY, 3, 5)
    want = mp.forward(p, x, TINY, methods)
    merged, remaining = merge_methods(p, methods, which=[other.name])
    assert remaining == [adapter] and other.name not in merged
    onp.testing.assert_allclose(mp.forward(merged, x, TINY, remaining), want, **TOL["float64"])
    for q, a in tree.leaves_with_paths(p[adapter.name], (adapter.name,)):
        assert tree.get(merged, q) is a  # the adapter's θ untouched


@pytest.mark.parametrize("adapter", ADAPTERS[:2], ids=["adaptformer", "serial"])
def test_merging_an_adapter_is_refused_naming_it_and_why(adapter):
    lora = LoRA(r=2)
    p = fresh([lora, adapter])
    for which in (None, [adapter.name]):
        with pytest.raises(ValueError, match=rf"{adapter.name}.*cannot be merged.*ReLU.*nonlinear"):
            merge_methods(p, [lora, adapter], which=which)
    merged, remaining = merge_methods(p, [lora, adapter], which=["lora"])  # the other one still merges
    assert remaining == [adapter]


# ------------------------------------------------------------------------ counting
def test_counts_add_up_and_an_overlapping_leaf_counts_once():
    se, bf, lora = SerialAdapter(d_hat=2, train_layer_norm=True), BitFit(biases=("beta",)), LoRA(r=2)
    p = mp.attach(mp.init_params(TINY, 0), [se, bf, lora], TINY)
    overlap = TINY.N * 2 * TINY.d  # β of LN₁ and LN₂ in every block: trained by both
    total = se.n_params(TINY) + bf.n_params(TINY) + lora.n_params(TINY)
    assert mp.count_trainable(p, [se, bf, lora], train_head=False) == total - overlap
    assert mp.count_trainable(p, [se, lora], train_head=False) == se.n_params(TINY) + lora.n_params(TINY)


# ----------------------------------------------------------------------- on disk
@pytest.mark.parametrize("methods", [
    [PrefixTuning(p=2), AdaptFormer(d_hat=3, learnable_s=True)],
    [LoRA(r=2), BitFit(biases=("b_q", "b_1")), SerialAdapter(d_hat=2, placement="pfeiffer")],
], ids=["prefix+adaptformer", "lora+bitfit+serial"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_combination_round_trips_bit_exactly(tmp_path, methods, dtype):
    backbone = mp.init_params(TINY, 0, dtype)
    th, ph = mp.split(mp.attach(mp.new_head(backbone, 4), methods, TINY, 1), mp.trainable(methods))
    p = mp.combine(randomize(th, 2, 0.1), ph)
    save_adapter(tmp_path / "c.npz", p, methods, TINY)
    q, loaded, _ = load_adapter(tmp_path / "c.npz", backbone, TINY)
    assert loaded == methods
    la, lb = tree.leaves_with_paths(p), tree.leaves_with_paths(q)
    assert [k for k, _ in la] == [k for k, _ in lb]
    for (k, a), (_, b) in zip(la, lb):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), tree.path_str(k)
    x = images(TINY, 2, dtype=dtype)
    onp.testing.assert_array_equal(mp.forward(q, x, TINY, loaded), mp.forward(p, x, TINY, methods))


# ------------------------------------------------------------ real backbone (slow)
@pytest.mark.slow
def test_lora_plus_bitfit_on_digits_then_merge_lora_keeps_the_accuracy():
    from minipeft.pretrained import load_backbone

    backbone, _ = load_backbone()
    cfg, task = mp.Config(), mp.load_task("digits")
    ms = [LoRA(r=4), BitFit()]
    p = mp.attach(mp.new_head(backbone, task.n_classes, 0), ms, cfg, 0)
    p, _ = mp.fit(p, task.train, cfg, ms, epochs=2, lr=3e-3, progress=False)
    acc = mp.evaluate(p, task.test, cfg, ms)["acc"]
    merged, remaining = merge_methods(p, ms, which=["lora"])
    assert acc > 0.6 and mp.evaluate(merged, task.test, cfg, remaining)["acc"] == acc

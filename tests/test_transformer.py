"""The backbone: config checks, closed-form counts, determinism, an independent
reference forward, every seam, dtype preservation, gradient checks, bad input."""
import dataclasses

import autograd.numpy as anp
import numpy as onp
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minipeft as mp
import reference
from conftest import directional_check, images, randomize, theta_vec_fn
from minipeft import tree


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("kw,match", [
    ({"d": 30, "h": 4}, "divisible"), ({"d": 0}, "positive"), ({"N": -1}, "positive"), ({"h": 2.0}, "int"),
    ({"image_size": 10, "patch": 4}, "multiple of patch"), ({"front": "audio"}, "front"),
    ({"front": "text", "vocab": 0, "max_len": 4}, "vocab"), ({"eps": 0.0}, "eps"), ({"d_ff": True}, "int"),
])
def test_bad_config_names_the_field(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        mp.Config(**kw)


def test_config_round_trip_and_unknown_field():
    cfg = mp.Config(d=32, h=4)
    assert mp.Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown Config fields"):
        mp.Config.from_dict({**cfg.to_dict(), "dropout": 0.1})


@given(d_mult=st.integers(1, 4), h=st.integers(1, 3), N=st.integers(1, 3), d_ff=st.integers(1, 20),
       C=st.integers(1, 5), text=st.booleans(), patch=st.integers(1, 3), grid=st.integers(1, 3))
def test_closed_form_parameter_count(d_mult, h, N, d_ff, C, text, patch, grid):
    kw = dict(d=d_mult * h, h=h, N=N, d_ff=d_ff, n_classes=C)
    cfg = mp.Config(**kw, front="text", vocab=7, max_len=5) if text else mp.Config(**kw, patch=patch, image_size=patch * grid, channels=2)
    assert mp.count(mp.init_params(cfg, 0)) == cfg.n_params


def test_init_is_deterministic_and_float32_is_rounded_float64(tiny_cfg):
    a, b, c = mp.init_params(tiny_cfg, 3, "float64"), mp.init_params(tiny_cfg, 3, "float64"), mp.init_params(tiny_cfg, 4, "float64")
    f = mp.init_params(tiny_cfg, 3, "float32")
    for (p, x), (_, y), (_, z), (_, w) in zip(*(tree.leaves_with_paths(t) for t in (a, b, c, f))):
        assert x.tobytes() == y.tobytes()
        assert w.dtype == onp.float32 and onp.array_equal(w, x.astype(onp.float32))
    assert any(not onp.array_equal(x, z) for (_, x), (_, z) in zip(tree.leaves_with_paths(a), tree.leaves_with_paths(c)))


# ------------------------------------------------------------- independent reference
def test_forward_matches_independent_reference(tiny_cfg):
    p = randomize(mp.init_params(tiny_cfg, 0, "float64"))
    x = images(tiny_cfg, 3)
    onp.testing.assert_allclose(mp.forward(p, x, tiny_cfg), reference.forward(p, x, tiny_cfg), rtol=1e-10, atol=1e-12)


def test_text_forward_matches_independent_reference(text_cfg):
    p = randomize(mp.init_params(text_cfg, 0, "float64"))
    ids = onp.array([[1, 2, 3, 0, 7], [4, 5, 10, 10, 6]])
    onp.testing.assert_allclose(mp.forward(p, ids, text_cfg), reference.forward(p, ids, text_cfg), rtol=1e-10, atol=1e-12)


def test_text_front_shapes_and_cls_first(text_cfg):
    p = mp.init_params(text_cfg, 0, "float64")
    ids = onp.array([[1, 2, 3], [4, 5, 10]])
    tr = {}
    out = mp.forward(p, ids, text_cfg, trace=tr)
    assert out.shape == (2, 3)
    assert tr["hidden"][0].shape == (2, 4, 16) and len(tr["hidden"]) == 3 and tr["attn"][0].shape == (2, 4, 4, 4)
    # CLS first: row 0 of the embedding is cls + pos[0] for every example
    onp.testing.assert_allclose(tr["hidden"][0][:, 0], onp.tile(p["embed"]["cls"] + p["embed"]["pos"][0], (2, 1)))
    onp.testing.assert_allclose(tr["hidden"][0][1, 3], p["embed"]["W_tok"][10] + p["embed"]["pos"][3])


# ------------------------------------------------------------------------------ seams
@dataclasses.dataclass(frozen=True)
class Hook(mp.Method):
    """A test method with one hook given as a function (theta, value, **ctx) -> value."""
    name: str = "hook"
    seam: str = "on_tokens"
    fn: object = None

    def __getattribute__(self, attr):
        if attr.startswith("on_") and attr == object.__getattribute__(self, "seam"):
            return object.__getattribute__(self, "fn")
        return object.__getattribute__(self, attr)


def run(p, x, cfg, seam, fn, trace=None):
    """forward with one test hook (its θ is empty)."""
    return mp.forward({**p, "hook": {}}, x, cfg, [Hook(seam=seam, fn=fn)], trace=trace)


def edit(p, path, f):
    return tree.replace(p, path, f(tree.get(p, path)))


@pytest.fixture
def setup(tiny_cfg):
    return randomize(mp.init_params(tiny_cfg, 0, "float64")), images(tiny_cfg, 2), tiny_cfg


def test_methods_without_hooks_are_the_identity(setup):
    p, x, cfg = setup
    base = mp.forward(p, x, cfg)
    onp.testing.assert_array_equal(mp.forward(p, x, cfg, [mp.LinearProbe(), mp.FullFineTune()]), base)
    for seam in mp.methods.HOOKS:
        onp.testing.assert_array_equal(run(p, x, cfg, seam, lambda th, v, **c: v), base)


def test_seam_tokens_and_layer_in_equal_a_shifted_position_table(setup):
    p, x, cfg = setup
    c = onp.linspace(-1, 1, cfg.d)
    want = mp.forward(edit(p, ("embed", "pos"), lambda a: a + c), x, cfg)
    onp.testing.assert_allclose(run(p, x, cfg, "on_tokens", lambda th, X, **k: X + c), want, rtol=1e-12)
    got = run(p, x, cfg, "on_layer_in", lambda th, X, layer, **k: X + c if layer == 0 else X)
    onp.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("name,W,b", [("q", "W_q", "b_q"), ("k", "W_k", "b_k"), ("v", "W_v", "b_v"), ("o", "W_o", "b_o")])
def test_seam_linear_scaling_equals_scaled_weights(setup, name, W, b):
    p, x, cfg = setup
    q = edit(edit(p, ("blocks", 1, "attn", W), lambda a: 2 * a), ("blocks", 1, "attn", b), lambda a: 2 * a)
    hook = lambda th, y, x, layer, name, cfg, _n=name: 2 * y if (layer == 1 and name == _n) else y  # noqa: E731
    onp.testing.assert_allclose(run(p, x, cfg, "on_linear", hook), mp.forward(q, x, cfg), rtol=1e-10)


def test_seam_linear_receives_the_input_of_the_projection(setup):
    p, x, cfg = setup
    M = onp.random.default_rng(5).standard_normal((cfg.d_ff, cfg.d)) * 0.1
    hook = lambda th, y, x, layer, name, cfg: y + x @ M.T if (layer, name) == (0, "mlp1") else y  # noqa: E731
    q = edit(p, ("blocks", 0, "mlp", "W_1"), lambda a: a + M)
    onp.testing.assert_allclose(run(p, x, cfg, "on_linear", hook), mp.forward(q, x, cfg), rtol=1e-10)


def test_seam_kv_duplicated_keys_leave_attention_unchanged_and_prefix_changes_it(setup):
    p, x, cfg = setup
    base = mp.forward(p, x, cfg)
    dup = lambda th, kv, layer, cfg: (anp.concatenate([kv[0], kv[0]], 1), anp.concatenate([kv[1], kv[1]], 1))  # noqa: E731
    onp.testing.assert_allclose(run(p, x, cfg, "on_kv", dup), base, rtol=1e-10)
    tr = {}
    P = onp.ones((3, cfg.d))
    pre = lambda th, kv, layer, cfg: (mp.nn.prepend(P, kv[0]), mp.nn.prepend(P, kv[1]))  # noqa: E731
    run(p, x, cfg, "on_kv", pre, trace=tr)
    assert tr["attn"][0].shape == (2, cfg.h, 5, 8)
    assert not onp.allclose(run(p, x, cfg, "on_kv", pre), base)


def test_seam_ff_hidden_and_after_mlp_equal_scaled_W2(setup):
    p, x, cfg = setup
    q = edit(p, ("blocks", 0, "mlp", "W_2"), lambda a: 3 * a)
    hook = lambda th, H, layer, cfg: 3 * H if layer == 0 else H  # noqa: E731
    onp.testing.assert_allclose(run(p, x, cfg, "on_ff_hidden", hook), mp.forward(q, x, cfg), rtol=1e-10)
    q = edit(q, ("blocks", 0, "mlp", "b_2"), lambda a: 3 * a)
    hook = lambda th, y, layer, name, cfg: 3 * y if (layer, name) == (0, "mlp") else y  # noqa: E731
    onp.testing.assert_allclose(run(p, x, cfg, "on_after", hook), mp.forward(q, x, cfg), rtol=1e-10)


def test_seam_mlp_gets_normed_and_residual_inputs(setup):
    p, x, cfg = setup
    q = edit(edit(p, ("blocks", 1, "mlp", "W_2"), lambda a: 0 * a), ("blocks", 1, "mlp", "b_2"), lambda a: 0 * a)
    kill = lambda th, M, x_norm, x_resid, layer, cfg: 0 * M if layer == 1 else M  # noqa: E731
    onp.testing.assert_allclose(run(p, x, cfg, "on_mlp", kill), mp.forward(q, x, cfg), rtol=1e-10)
    seen = {}

    def spy(th, M, x_norm, x_resid, layer, cfg):
        seen[layer] = (x_norm, x_resid)
        return M
    run(p, x, cfg, "on_mlp", spy)
    normed = mp.nn.layer_norm(seen[0][1], p["blocks"][0]["ln2"]["gamma"], p["blocks"][0]["ln2"]["beta"])
    onp.testing.assert_allclose(seen[0][0], normed, rtol=1e-12)


@pytest.mark.parametrize("where,path", [("ln1", ("blocks", 0, "ln1")), ("ln2", ("blocks", 1, "ln2")), ("ln_f", ("ln_f",))])
def test_seam_after_layer_norm_equals_scaled_gamma_beta(setup, where, path):
    p, x, cfg = setup
    layer = None if where == "ln_f" else path[1]
    q = edit(edit(p, path + ("gamma",), lambda a: 2 * a), path + ("beta",), lambda a: 2 * a)
    hook = lambda th, y, layer, name, cfg, _w=where, _l=layer: 2 * y if (name, layer) == (_w, _l) else y  # noqa: E731
    onp.testing.assert_allclose(run(p, x, cfg, "on_after", hook), mp.forward(q, x, cfg), rtol=1e-10)


def test_seam_after_attn_zero_equals_zero_output_projection(setup):
    p, x, cfg = setup
    q = edit(edit(p, ("blocks", 0, "attn", "W_o"), lambda a: 0 * a), ("blocks", 0, "attn", "b_o"), lambda a: 0 * a)
    hook = lambda th, y, layer, name, cfg: 0 * y if (layer, name) == (0, "attn") else y  # noqa: E731
    onp.testing.assert_allclose(run(p, x, cfg, "on_after", hook), mp.forward(q, x, cfg), rtol=1e-10)


def test_hook_reads_its_theta_and_missing_theta_is_a_clear_error(setup):
    p, x, cfg = setup
    m = Hook(seam="on_tokens", fn=lambda th, X, cfg: X + th["c"])
    with pytest.raises(ValueError, match="attach"):
        mp.forward(p, x, cfg, [m])
    q = {**p, "hook": {"c": onp.ones(cfg.d)}}
    onp.testing.assert_allclose(mp.forward(q, x, cfg, [m]), mp.forward(edit(p, ("embed", "pos"), lambda a: a + 1), x, cfg), rtol=1e-12)
    with pytest.raises(ValueError, match="own name"):
        mp.forward(q, x, cfg, [m, m])


# -------------------------------------------------------------- dtype and gradients
def test_float32_every_intermediate_and_gradient(tiny_cfg):
    p = mp.init_params(tiny_cfg, 0, "float32")
    x = images(tiny_cfg, 2, dtype="float32")
    tr = {}
    assert mp.forward(p, x, tiny_cfg, trace=tr).dtype == onp.float32
    assert all(h.dtype == onp.float32 for h in tr["hidden"]) and all(a.dtype == onp.float32 for a in tr["attn"])
    th, ph = mp.split(p, lambda path, leaf: True)
    v, g = mp.value_and_grad(lambda t: mp.loss(t, ph, x, onp.array([0, 2]), tiny_cfg), th)
    assert v.dtype == onp.float32
    assert all(leaf.dtype == onp.float32 for _, leaf in tree.leaves_with_paths(g))


def test_float64_images_are_cast_to_the_model_dtype(tiny_cfg):
    p = mp.init_params(tiny_cfg, 0, "float32")
    assert mp.forward(p, images(tiny_cfg, 2, dtype="float64"), tiny_cfg).dtype == onp.float32


def test_whole_forward_gradient_matches_finite_differences(tiny_cfg):
    p = randomize(mp.init_params(tiny_cfg, 0, "float64"), scale=0.2)
    x, y = images(tiny_cfg, 3), onp.array([0, 1, 2])
    vec, f, gv = theta_vec_fn(p, [mp.FullFineTune()], x, y, tiny_cfg)  # every leaf of φ
    directional_check(f, vec, gv, 5, rel_tol=1e-5, abs_tol=1e-8)


# -------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad,err,match", [
    (onp.zeros((2, 1, 8, 9)), ValueError, "shape"), (onp.zeros((2, 3, 8, 8)), ValueError, "shape"),
    (onp.zeros((0, 1, 8, 8)), ValueError, "B >= 1"), (onp.zeros((2, 8)), ValueError, "shape"),
    (onp.zeros((2, 1, 8, 8), dtype=bool), TypeError, "real numbers"),
    (onp.array([["a"]]), TypeError, "real numbers"),
])
def test_bad_image_batch(tiny_cfg, bad, err, match):
    p = mp.init_params(tiny_cfg, 0)
    with pytest.raises(err, match=match):
        mp.forward(p, bad, tiny_cfg)


def test_three_dim_images_accepted_for_one_channel(tiny_cfg):
    p = mp.init_params(tiny_cfg, 0, "float64")
    x = images(tiny_cfg, 2)
    onp.testing.assert_array_equal(mp.forward(p, x[:, 0], tiny_cfg), mp.forward(p, x, tiny_cfg))


@pytest.mark.parametrize("bad,err,match", [
    (onp.array([[0, 11]]), ValueError, "vocab"), (onp.array([[-1, 2]]), ValueError, "vocab"),
    (onp.zeros((1, 7), dtype=int), ValueError, "max_len"), (onp.zeros((1, 3)), TypeError, "integer"),
])
def test_bad_token_batch(text_cfg, bad, err, match):
    p = mp.init_params(text_cfg, 0)
    with pytest.raises(err, match=match):
        mp.forward(p, bad, text_cfg)


def test_params_of_another_config_are_a_clear_error(tiny_cfg):
    p = mp.init_params(tiny_cfg, 0)
    for other in (dataclasses.replace(tiny_cfg, N=3), dataclasses.replace(tiny_cfg, d=8, h=2)):
        with pytest.raises(ValueError, match=r"params: the backbone has N=2 blocks .* but cfg says"):
            mp.forward(p, images(tiny_cfg, 1), other)


def test_new_head_shape_and_bad_classes(tiny_cfg):
    p = mp.new_head(mp.init_params(tiny_cfg, 0), 7)
    assert p["head"]["W"].shape == (7, tiny_cfg.d) and p["head"]["W"].dtype == onp.float32
    with pytest.raises(ValueError, match="n_classes"):
        mp.new_head(p, 0)

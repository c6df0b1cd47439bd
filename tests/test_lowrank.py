"""LoRA's fused node (nn/lowrank.py), h = y + s (x Aᵀ) Bᵀ: bit for bit its composed twin
``y + s · linear(linear(x, A), B)`` in value and every VJP (both dtypes, scales that are and
are not powers of two, every subset of differentiated arguments), close to the readable
``nn/reference.py`` form, right by finite differences; one array of y's size made by its
forward; whole LoRA steps (ViT, bias-free Llama, 4-bit base, the device stand-in) with the
same loss and gradients as with the composed hook; bad input.
"""
import gc
import itertools
import tracemalloc

import numpy as onp
import pytest
from autograd import make_vjp
from autograd.test_util import check_grads

import minipeft as mp
from minipeft import backend, tree
from minipeft.methods import lora as lora_module
from minipeft.methods.lora import LoRA
from minipeft.nn import lowrank as LR
from minipeft.nn import reference as R
from fake_device import fake_xp

SCALES = [1.0, 2.0, 0.25, 2.5, 1 / 3]  # powers of two (s on the rank-r side) and not (s at full size)


def _case(dtype, seed=0, lead=(3, 7), d=24, k=16, r=4):
    g = onp.random.default_rng(seed)
    y, x, G = (g.standard_normal(lead + (n,)).astype(dtype) for n in (d, k, d))
    A, B = g.standard_normal((r, k)).astype(dtype), g.standard_normal((d, r)).astype(dtype)
    return y, x, A, B, G


def _value_vjp(fn, args, argnums, G):
    vjp, h = make_vjp(lambda *a: fn(*a), argnums)(*args)
    return h, vjp(G)


def _bytes(a):
    return onp.asarray(a).tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("s", SCALES)
def test_fused_node_is_its_composed_twin_bit_for_bit(dtype, s):
    y, x, A, B, G = _case(dtype)
    for n in range(1, 5):
        for argnums in itertools.combinations(range(4), n):
            fast = _value_vjp(lambda y, x, A, B: LR.low_rank_add(y, x, A, B, s), (y, x, A, B), argnums, G)
            twin = _value_vjp(lambda y, x, A, B: LR.low_rank_add_composed(y, x, A, B, s), (y, x, A, B), argnums, G)
            assert fast[0].dtype == onp.dtype(dtype) and _bytes(fast[0]) == _bytes(twin[0]), (argnums, "value")
            gf, gt = (v if isinstance(v, tuple) else (v,) for v in (fast[1], twin[1]))
            for i, a, b in zip(argnums, gf, gt):
                assert a.dtype == onp.dtype(dtype) and a.shape == b.shape and _bytes(a) == _bytes(b), (argnums, i)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_node_is_close_to_the_readable_form(dtype):
    """Against y + s·((x Aᵀ) Bᵀ) written with np.dot (nn/reference.py): values and VJPs."""
    y, x, A, B, G = _case(dtype, seed=1, lead=(2, 33), d=40, k=24, r=3)
    tol = {"float32": 2e-5, "float64": 1e-12}[dtype]
    fast = _value_vjp(lambda *a: LR.low_rank_add(*a, 2.5), (y, x, A, B), (0, 1, 2, 3), G)
    read = _value_vjp(lambda *a: R.low_rank_add(*a, 2.5), (y, x, A, B), (0, 1, 2, 3), G)
    for a, b in zip((fast[0],) + fast[1], (read[0],) + read[1]):
        err = float(onp.abs(a.astype(onp.float64) - b).max()) / max(float(onp.abs(b).max()), 1.0)
        assert err <= tol, err


@pytest.mark.parametrize("s", [1.0, 0.75])
def test_fused_node_gradients_by_finite_differences(s):
    y, x, A, B, _ = _case("float64", seed=2, lead=(2, 3), d=6, k=5, r=2)
    check_grads(lambda y, x, A, B: LR.low_rank_add(y, x, A, B, s), modes=["rev"], order=1)(y, x, A, B)


def test_vjp_recomputes_u_when_the_forward_did_not_hand_it_over():
    y, x, A, B, G = _case("float32", seed=3)
    h = LR.low_rank_add(y, x, A, B, 0.5)
    LR.low_rank_add(y, x, A, B, 0.5)  # a second call: the stash now holds another output
    got = LR._low_rank_add_vjp((0, 1, 2, 3), h, (y, x, A, B, 0.5), {})(G)
    want = _value_vjp(lambda *a: LR.low_rank_add_composed(*a, 0.5), (y, x, A, B), (0, 1, 2, 3), G)[1]
    assert all(_bytes(a) == _bytes(b) for a, b in zip(got, want))


def test_forward_makes_one_array_of_ys_size():
    """The composed form makes three arrays of y's size; the node one (its output), beside the
    rank-r u it keeps. Measured with tracemalloc, the twin as the detector."""
    y, x, A, B, _ = _case("float32", seed=4, lead=(64, 65), d=64, k=64, r=4)
    u_bytes = y.nbytes * A.shape[0] // y.shape[-1]

    def peak(fn, s):
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            out = fn(y, x, A, B, s)
            return tracemalloc.get_traced_memory()[1] - base, out
        finally:
            tracemalloc.stop()

    for s in (1.0, 2.5):
        fused, _ = peak(LR.low_rank_add, s)
        composed, _ = peak(LR.low_rank_add_composed, s)
        assert fused <= y.nbytes + u_bytes + 4096, (s, fused, y.nbytes)
        assert composed >= 2 * y.nbytes, (s, composed)  # its temporaries: the detector works


def test_bad_input_is_a_clear_error():
    y, x, A, B, _ = _case("float64")
    with pytest.raises(ValueError, match="s must be a finite nonzero"):
        LR.low_rank_add(y, x, A, B, "2")
    with pytest.raises(ValueError, match="s must be a finite nonzero"):
        LR.low_rank_add(y, x, A, B, float("nan"))
    with pytest.raises(ValueError, match=r"expected y \(\.\.\., d\), x \(\.\.\., k\)"):
        LR.low_rank_add(y, x, A.T, B, 1.0)
    with pytest.raises(ValueError, match="expected y"):
        LR.low_rank_add(y[..., :-1], x, A, B, 1.0)


# ------------------------------------------------------------------ whole LoRA steps
def _lora_grads(params, x, yl, cfg, m, composed, monkeypatch, loss=None):
    """(loss, ∂L/∂θ) of LoRA's step, with the fused hook or with the composed one."""
    with monkeypatch.context() as mpc:
        if composed:
            mpc.setattr(lora_module, "low_rank_add", LR.low_rank_add_composed)
        theta, phi = mp.split(params, mp.trainable([m], train_head=True))
        f = loss or (lambda th: mp.loss(th, phi, x, yl, cfg, [m]))
        return mp.value_and_grad(f, theta)


def _assert_same_step(a, b):
    assert _bytes(a[0]) == _bytes(b[0])
    for path, g in tree.leaves_with_paths(a[1]):
        assert _bytes(g) == _bytes(tree.get(b[1], path)), path


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_lora_step_is_the_composed_hooks_step_bit_for_bit(tiny_cfg, dtype, monkeypatch):
    """ViT, LoRA on every projection with α/r = 1.5 (s at full size) and on q, v with α = r."""
    from conftest import images
    x, yl = images(tiny_cfg, 6, seed=1, dtype=dtype), onp.arange(6) % tiny_cfg.n_classes
    for m in (LoRA(r=2, alpha=3.0, targets=("q", "k", "v", "o", "mlp1", "mlp2")), LoRA(r=2, layers=(1,))):
        p = mp.attach(mp.init_params(tiny_cfg, 0, dtype), [m], tiny_cfg, seed=1)
        p[m.name] = tree.map_leaves(lambda path, a: a + onp.asarray(0.1, a.dtype), p[m.name])  # B ≠ 0
        _assert_same_step(*(_lora_grads(p, x, yl, tiny_cfg, m, c, monkeypatch) for c in (False, True)))


def test_a_lora_step_on_the_device_stand_in_is_the_hosts(tiny_cfg):
    """The node on device arrays (tests/fake_device.py): the host's loss and gradients exactly."""
    from conftest import images
    x, yl = images(tiny_cfg, 4, seed=2, dtype="float32"), onp.arange(4) % tiny_cfg.n_classes
    m = LoRA(r=2, alpha=1.0)
    p = mp.attach(mp.init_params(tiny_cfg, 0, "float32"), [m], tiny_cfg, seed=1)
    p[m.name] = tree.map_leaves(lambda path, a: a + onp.asarray(0.1, a.dtype), p[m.name])

    def step(params, xb):
        theta, phi = mp.split(params, mp.trainable([m]))
        return mp.value_and_grad(lambda th: mp.loss(th, phi, xb, yl, tiny_cfg, [m]), theta)

    host = step(p, x)
    prev = backend.xp()
    backend.use_backend(fake_xp)
    try:
        dev = step(tree.map_leaves(lambda path, a: fake_xp.asarray(a), p), fake_xp.asarray(x))
    finally:
        backend.use_backend("numpy" if prev is onp else prev)
    assert float(host[0]) == float(backend.to_host(dev[0]))
    for path, g in tree.leaves_with_paths(host[1]):
        assert _bytes(g) == _bytes(backend.to_host(tree.get(dev[1], path))), path

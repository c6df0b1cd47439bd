"""The device backend, tested without a GPU (and on one, when CuPy can run).

Every test runs on tests/fake_device.py's stand-in, whose arrays refuse what CuPy
refuses (implicit conversion to NumPy, host arrays as operands): a path that fell back
to host NumPy would raise here. Where CuPy is usable, the same tests also run on it.
They check, against NumPy runs of the same code:
- the stand-in refuses what CuPy refuses, and each autograd patch is needed (autograd's
  stock code fails on a device array) and gives NumPy's gradients and dtypes;
- the backbone: forward, value_and_grad, adam_step, fit, predict, evaluate, save/load;
- every method in methods.REGISTRY: attach (θ on the device), forward, backward, one
  optimizer step and, for mergeable methods, merge — same numbers as NumPy;
- the switch: clear BackendError when CuPy cannot run (no CuPy, no driver, no device,
  no kernel), nothing half-switched, the environment variable, and mixed NumPy/device
  trees moved (batches, adapter files) or refused (params) at the boundary.
On the stand-in "same numbers" means bit-identical (it computes with NumPy); on CuPy,
agreement to 1e-9 relative in float64.
"""
import importlib.metadata
import os
import subprocess
import sys
import types

import autograd
import autograd.numpy as anp
import numpy as onp
import pytest

import minipeft as mp
from conftest import TINY, images, randomize, toy_data
from fake_device import DeviceArray, HostArrayError, fake_xp
from minipeft import backend, cupy_patches, tree
from minipeft import io as mio
from minipeft.adapters import load_adapter, save_adapter
from minipeft.methods import REGISTRY, method_class


def _usable_cupy():
    try:
        return backend._load_cupy()
    except backend.BackendError:
        return None


_CUPY = _usable_cupy()
DEVICES = [pytest.param(fake_xp, id="fake")] + ([pytest.param(_CUPY, id="cupy")] if _CUPY is not None else [])


def _select(mod):
    backend.use_backend("numpy" if mod is onp else mod)


@pytest.fixture(params=DEVICES)
def device(request):
    """The backend switched to a device module for the test; the previous one afterwards
    (NumPy, or CuPy under MINIPEFT_BACKEND=cupy)."""
    prev = backend.xp()
    _select(request.param)
    yield request.param
    _select(prev)


@pytest.fixture
def numpy_backend():
    """A test that switches backends itself starts on NumPy and ends on the previous backend."""
    prev = backend.xp()
    _select(onp)
    yield
    _select(prev)


def on(mod, fn, *args, **kw):
    """``fn(*args, **kw)`` run with ``mod`` as the backend (restored afterwards)."""
    prev = backend.xp()
    _select(mod)
    try:
        return fn(*args, **kw)
    finally:
        _select(prev)


def assert_same(dev, host, mod, what="value"):
    """Every array of ``dev`` lives on ``mod`` and equals ``host`` (bit for bit on the stand-in)."""
    dev_leaves, host_leaves = tree.leaves_with_paths(dev), tree.leaves_with_paths(host)
    assert [p for p, _ in dev_leaves] == [p for p, _ in host_leaves], what
    for (p, d), (_, h) in zip(dev_leaves, host_leaves):
        where = f"{what} at {tree.path_str(p)}"
        assert backend.module_of(d) is mod, f"{where}: a {type(d).__name__}, not on the device"
        d = backend.to_host(d)
        assert onp.asarray(d).dtype == onp.asarray(h).dtype, where
        if mod is fake_xp:
            onp.testing.assert_array_equal(d, h, err_msg=where)
        else:
            onp.testing.assert_allclose(d, h, rtol=1e-9, atol=1e-12, err_msg=where)


# ============================================================ the stand-in itself
def test_stand_in_refuses_what_cupy_refuses():
    d = fake_xp.asarray(onp.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError, match="implicit conversion"):
        onp.asarray(d)
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        d + onp.ones(3)
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        onp.concatenate([d, onp.ones((1, 3))])
    with pytest.raises(TypeError):  # CuPy's __array_ufunc__ declines ufunc.at with an index tuple
        onp.add.at(d, (slice(None), 0), fake_xp.ones(2))
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        d[0] = onp.ones(3)
    assert isinstance(d.sum(), DeviceArray) and d.sum().shape == ()  # 0-d arrays, never NumPy scalars
    assert isinstance(onp.exp(d), DeviceArray) and isinstance(d @ d.T, DeviceArray)
    onp.testing.assert_array_equal(d[onp.array([1, 0])].get(), onp.arange(6.0).reshape(2, 3)[[1, 0]])  # index upload
    d[0, 1] = 7.0
    d += 1.0
    assert d.get()[0, 1] == 8.0 and float(d.sum()) == 27.0


def test_autograd_without_patches_fails_on_device_arrays(device):
    """Each replaced piece of autograd, as shipped, breaks on a device array."""
    from autograd.numpy.numpy_vspaces import ArrayVSpace

    a = device.asarray(onp.ones((2, 3)))
    S = cupy_patches.STOCK
    failing = {
        "ArrayVSpace": lambda: ArrayVSpace(a),
        "repeat_to_match_shape": lambda: S["repeat_to_match_shape"](a[0], (2, 3), onp.dtype("float64"), 0, False),
        "concatenate_args": lambda: S["concatenate_args"].fun(0, a, a),
        "dot_adjoint_0": lambda: S["dot_adjoint_0"].fun(a, a[:, :2], anp.metadata(a), anp.metadata(a.T)),
        "_array_from_scalar_or_array": lambda: S["_array_from_scalar_or_array"].fun((), {}, a),
        "untake": lambda: S["untake"].fun(a[:, 0], (slice(None), 0), mp.autodiff.vspace(a)).mut_add(a * 0),
        "where_vjp": lambda: list(S["where_vjp"]((1,), a, (a > 0, a, a), {})(a)),
        "einsum_vjp": lambda: list(S["einsum_vjp"]((1,), a.sum(), ("ij,ij->", a, a), {})(a.sum())),
    }
    for name, call in failing.items():
        with pytest.raises((TypeError, ValueError)):
            call()
            pytest.fail(f"stock {name} did not fail on a device array")


# ===================================================== gradients of every patch
def _cases():
    """(name, f(a, b) -> scalar, shape of a, shape of b): each reaches a patched piece."""
    return [
        ("sum", lambda a, b: anp.sum(anp.sum(a * b, axis=0) ** 2), (3, 4), (3, 4)),
        ("mean", lambda a, b: anp.sum(anp.mean(a, axis=1) * anp.mean(b)), (3, 4), (2, 4)),
        ("var", lambda a, b: anp.sum(anp.var(a, axis=(0, 1)) ** 2) + anp.std(b), (2, 3, 2), (4,)),
        ("max", lambda a, b: anp.sum(anp.max(a * b, axis=-1)) + anp.min(b), (3, 4), (3, 4)),
        ("where", lambda a, b: anp.sum(anp.where(a > 0, a * b, b ** 2)), (3, 4), (3, 4)),
        ("concatenate", lambda a, b: anp.sum(anp.concatenate([a, 2.0 * b], axis=0) ** 2), (2, 4), (3, 4)),
        ("stack", lambda a, b: anp.sum(anp.stack([a, b, a * b], axis=1) ** 3), (3, 4), (3, 4)),
        ("array", lambda a, b: anp.sum(anp.array([a[0, 0], b[1, 1], a[2, 3] * b[0, 0]]) ** 2), (3, 4), (3, 4)),
        ("dot 2x2", lambda a, b: anp.sum(anp.dot(a, b) ** 2), (3, 4), (4, 2)),
        ("dot 2x1", lambda a, b: anp.sum(anp.dot(a, b) ** 2), (3, 4), (4,)),
        ("dot 1x2", lambda a, b: anp.sum(anp.dot(a, b) ** 2), (4,), (4, 3)),
        ("dot 1x1", lambda a, b: anp.dot(a, b) ** 2, (4,), (4,)),
        ("dot 3x2", lambda a, b: anp.sum(anp.dot(a, b) ** 2), (2, 3, 4), (4, 2)),
        ("dot 2x3", lambda a, b: anp.sum(anp.dot(a, b) ** 2), (3, 4), (2, 4, 5)),
        ("dot 0x2", lambda a, b: anp.sum(anp.dot(a[0, 0], b) ** 2), (2, 2), (3, 4)),
        ("einsum", lambda a, b: anp.sum(anp.einsum("bij,jk->bik", a, b) ** 2), (2, 3, 4), (4, 5)),
        ("einsum summed-out", lambda a, b: anp.sum(anp.einsum("ij,kl->i", a, b) ** 2), (3, 4), (2, 5)),
        ("getitem", lambda a, b: anp.sum(a[:, 0] * b[1]) + anp.sum(a[onp.array([0, 2, 2])] ** 2), (3, 4), (2, 3)),
        ("matmul+transpose", lambda a, b: anp.sum(anp.matmul(a, anp.transpose(b, (0, 2, 1))) ** 2),
         (2, 3, 4), (2, 5, 4)),
    ]


@pytest.mark.parametrize("name,f,sa,sb", _cases(), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_patched_gradients_match_numpy(device, name, f, sa, sb, dtype):
    rng = onp.random.default_rng(0)
    a, b = rng.standard_normal(sa).astype(dtype), rng.standard_normal(sb).astype(dtype)
    want = [autograd.grad(f, i)(a, b) for i in (0, 1)]
    da, db = device.asarray(a), device.asarray(b)
    got = [autograd.grad(f, i)(da, db) for i in (0, 1)]
    assert_same(got, want, device, name)


def test_device_vspace(device):
    vs = mp.autodiff.vspace(device.asarray(onp.ones((2, 3), "float32")))
    assert isinstance(vs, cupy_patches.DeviceVSpace) and vs.size == 6 and vs.ndim == 2
    for v, w in ((vs.zeros(), onp.zeros((2, 3), "float32")), (vs.ones(), onp.ones((2, 3), "float32"))):
        assert_same(v, w, device)
    basis = list(vs.standard_basis())
    assert len(basis) == 6 and float(sum(b.sum() for b in basis)) == 6.0


# ============================================================ the backbone
def _backbone_run(host_params, cfg, x, y, methods=()):
    """forward, value_and_grad, adam_step on the backend in use, from ``host_params``."""
    p = backend.to_device(host_params)
    logits = mp.forward(p, x, cfg, methods)
    theta, phi = mp.split(p, mp.trainable(methods or [mp.FullFineTune()]))
    value, grads = mp.value_and_grad(lambda th: mp.loss(th, phi, x, y, cfg, methods), theta)
    theta2, state = mp.adam_step(theta, grads, mp.adam_init(theta), lr=1e-2)
    return {"logits": logits, "loss": value, "grads": grads, "theta": theta2, "m": state["m"], "v": state["v"]}


def test_backbone_forward_backward_step_match_numpy(device):
    x, y = images(TINY, 5), onp.array([0, 1, 2, 1, 0])
    host = on(onp, lambda: randomize(mp.init_params(TINY, 0, "float64")))
    want = on(onp, _backbone_run, host, TINY, x, y)
    got = _backbone_run(host, TINY, x, y)  # x, y are host arrays: moved at the boundary
    assert_same(got, want, device)


def test_init_and_new_head_are_made_on_the_device(device):
    p = mp.init_params(TINY, 3, "float32")
    assert_same(p, on(onp, mp.init_params, TINY, 3, "float32"), device, "init_params")
    h = mp.new_head(p, 7, seed=1)
    assert_same(h["head"], on(onp, mp.new_head, on(onp, mp.init_params, TINY, 3, "float32"), 7, 1)["head"], device)


def test_fit_predict_evaluate_match_numpy(device):
    data = toy_data(TINY, n=20)

    def run():
        p = mp.init_params(TINY, 0, "float64")
        p2, hist = mp.fit(p, data, TINY, [mp.FullFineTune()], steps=4, batch_size=8, lr=1e-2, seed=1, progress=False)
        return p, p2, hist, mp.predict(p2, data[0], TINY, batch_size=7), mp.evaluate(p2, data, TINY, batch_size=7)

    p_h, p2_h, hist_h, logits_h, ev_h = on(onp, run)
    p, p2, hist, logits, ev = run()
    assert_same(p2, p2_h, device, "fit")
    assert_same(logits, logits_h, device, "predict")
    if device is fake_xp:
        assert hist == hist_h and ev == ev_h
    else:
        onp.testing.assert_allclose(hist["loss"], hist_h["loss"], rtol=1e-9)
        assert ev["acc"] == ev_h["acc"] and abs(ev["loss"] - ev_h["loss"]) < 1e-9


def test_frozen_leaves_stay_the_same_device_objects(device):
    p = mp.init_params(TINY, 0, "float32")
    p2, _ = mp.fit(p, toy_data(TINY, n=16), TINY, [mp.LinearProbe()], steps=2, batch_size=8, progress=False)
    for q, a in tree.leaves_with_paths(p2):
        assert backend.module_of(a) is device
        if q[0] != "head":
            assert a is tree.get(p, q)


def test_save_and_load_from_the_device(device, tmp_path):
    p = mp.init_params(TINY, 0, "float32")
    mio.save_tree(tmp_path / "p.npz", p, {"kind": "test"})
    loaded, _ = mio.load_tree(tmp_path / "p.npz")  # files hold host arrays
    assert_same(backend.to_device(loaded), on(onp, mp.init_params, TINY, 0, "float32"), device)


def test_numpy_adapter_file_loads_onto_the_device_model(device, tmp_path):
    """A file written by a NumPy run, loaded into a device backbone: θ is moved to the device."""
    lp = mp.LinearProbe()

    def trained():
        p = mp.init_params(TINY, 0, "float32")
        return mp.fit(p, toy_data(TINY, n=16), TINY, [lp], steps=2, batch_size=8, progress=False)[0]

    host = on(onp, trained)
    on(onp, save_adapter, tmp_path / "a.npz", host, [lp], TINY)
    params, methods, _ = load_adapter(tmp_path / "a.npz", mp.init_params(TINY, 0, "float32"), TINY)
    assert_same(params, host, device, "load_adapter")
    assert_same(mp.predict(params, toy_data(TINY, n=4)[0], TINY, methods),
                on(onp, mp.predict, host, toy_data(TINY, n=4)[0], TINY, methods), device)


# ============================================================ every method
def _method(name):
    try:
        return method_class(name)()
    except (ImportError, AttributeError) as e:  # being written: its module is not there yet
        pytest.skip(f"method {name!r} ({REGISTRY[name]}) does not import yet: {type(e).__name__}: {e}")


def _method_run(m, x, y, host_params):
    """attach on the backend in use, then forward/backward/step/merge from ``host_params``."""
    fresh = mp.attach(mp.init_params(TINY, 0, "float64"), [m], TINY, seed=0)
    p = backend.to_device(host_params)
    theta, phi = mp.split(p, mp.trainable([m]))
    value, grads = mp.value_and_grad(lambda th: mp.loss(th, phi, x, y, TINY, [m]), theta)
    theta2, _ = mp.adam_step(theta, grads, mp.adam_init(theta), lr=1e-2)
    out = {"attach": fresh, "logits": mp.forward(p, x, TINY, [m]), "loss": value, "grads": grads, "theta": theta2}
    if m.mergeable:
        merged = m.merge(mp.combine(theta2, phi))
        out["merged"], out["merged_logits"] = merged, mp.forward(merged, x, TINY)
    return out


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_method_matches_numpy_on_the_device(device, name):
    m = _method(name)
    x, y = images(TINY, 4, seed=1), onp.array([2, 0, 1, 1])
    start = on(onp, lambda: randomize(mp.attach(mp.init_params(TINY, 0, "float64"), [m], TINY, 0), seed=2, scale=0.2))
    want = on(onp, _method_run, m, x, y, start)
    got = _method_run(m, x, y, start)
    assert set(got) == set(want)
    assert_same(got, want, device, name)


# ============================================================ the switch
def _fake_cupy(count=None, count_error=None, kernel_error=None):
    """A module that looks like CuPy to use_backend, failing where told."""
    def get_count():
        if count_error:
            raise RuntimeError(count_error)
        return count

    def arange(*a, **k):
        raise RuntimeError(kernel_error)

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_count))
    cupy.arange = arange
    return cupy


@pytest.mark.parametrize("fake,match", [
    (None, "CuPy is not installed.*minipeft\\[gpu\\]"),
    (_fake_cupy(count_error="cudaErrorInsufficientDriver: CUDA driver version is insufficient"), "no NVIDIA driver"),
    (_fake_cupy(count_error="cudaErrorNoDevice: no CUDA-capable device is detected"), "no CUDA device"),
    (_fake_cupy(count=0), "0 devices"),
    (_fake_cupy(count=1, kernel_error="nvrtc: compilation failed"), "test kernel failed.*nvrtc"),
])
def test_asking_for_cupy_where_it_cannot_run_says_why(monkeypatch, numpy_backend, fake, match):
    monkeypatch.setitem(sys.modules, "cupy", fake)  # None: `import cupy` raises ImportError
    before = (backend.xp(), backend.backend_name())
    with pytest.raises(backend.BackendError, match=match):
        backend.use_backend("cupy")
    assert (backend.xp(), backend.backend_name()) == before  # nothing half-switched


def test_use_backend_bad_input_and_numpy(numpy_backend):
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.use_backend("tpu")
    with pytest.raises(TypeError, match="backend must be one of"):
        backend.use_backend(onp.float32)
    assert backend.use_backend(fake_xp) is fake_xp and backend.backend_name() == "fake_xp"
    assert backend.use_backend("numpy") is onp and backend.xp() is onp


@pytest.mark.parametrize("env,code,match", [
    ("tpu", "", "MINIPEFT_BACKEND must be one of"),
    ("cupy", "import sys; sys.modules['cupy'] = None; ", "BackendError: backend 'cupy': CuPy is not installed"),
])
def test_environment_variable(env, code, match):
    if env == "cupy" and _CUPY is not None:
        pytest.skip("CuPy is usable here")
    r = subprocess.run([sys.executable, "-c", code + "import minipeft"], capture_output=True, text=True,
                       env={**os.environ, "MINIPEFT_BACKEND": env}, timeout=120)
    assert r.returncode != 0 and match in r.stderr, r.stderr[-2000:]


def test_to_device_and_back_keep_structure_and_dtype(device):
    t = {"a": [onp.ones(2, "float32"), (onp.zeros(3, "int64"), 5)], "b": None}
    d = backend.to_device(t)
    assert isinstance(d["a"][1], tuple) and d["a"][1][1] == 5 and d["b"] is None
    assert backend.module_of(d["a"][0]) is device and d["a"][1][0].dtype == onp.int64
    assert backend.to_device(d)["a"][0] is d["a"][0]  # already there: the same object
    h = backend.to_host(d)
    assert type(h["a"][0]) is onp.ndarray and h["a"][0].dtype == onp.float32


# ============================================================ mixing, at the boundary
def test_host_params_under_a_device_backend_are_refused(device):
    host = on(onp, mp.init_params, TINY, 0, "float32")
    with pytest.raises(ValueError, match="embed.W is a numpy array but the backend is"):
        mp.fit(host, toy_data(TINY, n=8), TINY, [mp.LinearProbe()], steps=1, progress=False)
    mixed = {**mp.init_params(TINY, 0, "float32"), "head": host["head"]}
    with pytest.raises(ValueError, match="head.W is a numpy array"):
        mp.predict(mixed, toy_data(TINY, n=4)[0], TINY)
    dev = mp.init_params(TINY, 0, "float32")
    backend.use_backend("numpy")
    with pytest.raises(ValueError, match="backend is 'numpy'"):
        mp.fit(dev, toy_data(TINY, n=8), TINY, [mp.LinearProbe()], steps=1, progress=False)


def test_host_batches_are_moved_to_the_model(device):
    p = mp.init_params(TINY, 0, "float32")
    x = images(TINY, 3, dtype="float32")
    out = mp.forward(p, x, TINY)  # a NumPy batch into a device model
    assert backend.module_of(out) is device
    assert_same(out, on(onp, mp.forward, on(onp, mp.init_params, TINY, 0, "float32"), x, TINY), device)
    assert_same(mp.forward(p, backend.to_device(x), TINY), backend.to_host(out), device)


def test_patches_are_pinned_to_autograd_1_9(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.10.0")
    with pytest.raises(RuntimeError, match="autograd 1.9.x"):
        cupy_patches.install(DeviceArray, fake_xp)

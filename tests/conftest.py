import math
import os

import numpy as onp
import pytest
from hypothesis import HealthCheck, settings

# Numeric code on a slow shared 2-core machine has no fair deadline.
settings.register_profile("minipeft", deadline=None, print_blob=True, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minipeft"))

import minipeft as mp  # noqa: E402
from minipeft.models import gguf_read  # noqa: E402
import reference  # noqa: E402

#: The tests' tiny models (their numbers are in reference.py): a 2-layer ViT on 8×8 images
#: with patch 4 (T = 1 + 4 tokens), and a 2-layer text model.
TINY = mp.Config(**reference.TINY)
TINY_TEXT = mp.Config(**reference.TINY_TEXT)
#: assert_allclose tolerances of one forward against another, by dtype
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-6)}


@pytest.fixture
def tiny_cfg():
    """A 2-layer ViT on 8×8 images, patch 4: T = 1 + 4 tokens."""
    return TINY


@pytest.fixture
def text_cfg():
    return TINY_TEXT


def images(cfg, B, seed=0, dtype="float64"):
    """A reproducible batch of random images for ``cfg``: (B, C, H, W) in [0, 1]."""
    rng = onp.random.default_rng(seed)
    return rng.random((B, cfg.channels, cfg.image_size, cfg.image_size)).astype(dtype)


def toy_data(cfg, n=48, seed=0):
    """Images whose class is which quarter of the image is brightest: learnable quickly."""
    rng = onp.random.default_rng(seed)
    y = rng.integers(0, cfg.n_classes, n)
    x = 0.1 * rng.random((n, 1, cfg.image_size, cfg.image_size))
    half = cfg.image_size // 2
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, 0, r * half:(r + 1) * half, col * half:(col + 1) * half] += 1.0
    return x, y


def alive_after_forward(monkeypatch, module, name, cfg, method, pick=lambda out: out):
    """One step's gradient of ``method`` on ``cfg`` (randomized params, 3 images) with
    ``module.name`` spied: for each call whose ``pick(output)`` is traced, in call order,
    whether that traced array was still alive once the forward was done (before the backward
    pass). ``pick``: the output to watch (e.g. Z of an (Z, A) pair)."""
    import gc
    import weakref

    from minipeft.autodiff import value_and_grad

    params = mp.attach(randomize(mp.init_params(cfg, 0), seed=6), [method], cfg, 0)
    theta, phi = mp.tree.split(params, mp.trainable([method]))
    x, y = images(cfg, 3), onp.arange(3) % cfg.n_classes
    real, refs, alive = getattr(module, name), [], []

    def spy(*a, **k):
        out = real(*a, **k)
        watched = pick(out)
        if hasattr(watched, "_value"):
            refs.append(weakref.ref(watched._value))
        return out

    def f(th):
        out = mp.loss(th, phi, x, y, cfg, [method])
        gc.collect()
        alive.append([r() is not None for r in refs])
        return out

    with monkeypatch.context() as m:
        m.setattr(module, name, spy)
        value_and_grad(f, theta)
    return alive[0]


def randomize(params, seed=0, scale=0.3):
    """A copy of ``params`` with every leaf perturbed (so LN γ ≠ 1, biases ≠ 0, …)."""
    rng = onp.random.default_rng(seed)
    noise = lambda a: mp.backend.like(scale * rng.standard_normal(a.shape), a)  # noqa: E731  (on a's device)
    return mp.tree.map_leaves(lambda p, a: (a + noise(a)).astype(a.dtype), params)


def assert_bit_identical(p, q):
    """Trees p and q hold the same paths in the same order, each leaf of the same dtype and bits."""
    la, lb = mp.tree.leaves_with_paths(p), mp.tree.leaves_with_paths(q)
    assert [k for k, _ in la] == [k for k, _ in lb]
    for (k, a), (_, b) in zip(la, lb):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), mp.tree.path_str(k)


def finite_diff_check(f, x, eps=1e-6, n=6, seed=0, rtol=1e-5, atol=1e-7):
    """Compare autograd's gradient of scalar f at x (float64) with central differences
    along ``n`` random directions: g·u ≈ (f(x+εu) − f(x−εu)) / 2ε."""
    from autograd import grad

    g = grad(f)(x)
    rng = onp.random.default_rng(seed)
    for _ in range(n):
        u = rng.standard_normal(x.shape)
        fd = (f(x + eps * u) - f(x - eps * u)) / (2 * eps)
        assert onp.allclose(onp.sum(g * u), fd, rtol=rtol, atol=atol), (onp.sum(g * u), fd)


def directional_check(f, vec, g, n, rel_tol, abs_tol, seed=0, eps=1e-6):
    """A gradient g of scalar f at vec against central differences along n random
    directions u (drawn from default_rng(seed)): g·u ≈ (f(vec+εu) − f(vec−εu)) / 2ε."""
    rng = onp.random.default_rng(seed)
    for _ in range(n):
        u = rng.standard_normal(vec.shape)
        fd = (f(vec + eps * u) - f(vec - eps * u)) / (2 * eps)
        assert math.isclose(g @ u, fd, rel_tol=rel_tol, abs_tol=abs_tol), (g @ u, fd)


def theta_vec_fn(params, methods, x, y, cfg, train_head=True):
    """(θ as one vector, L(vector), autograd's gradient as one vector)."""
    th, ph = mp.split(params, mp.trainable(methods, train_head))
    paths = [(q, a.shape) for q, a in mp.tree.leaves_with_paths(th)]
    vec = onp.concatenate([a.ravel() for _, a in mp.tree.leaves_with_paths(th)])

    def unvec(v):
        out, i = th, 0
        for q, s in paths:
            n = int(onp.prod(s))
            out = mp.tree.replace(out, q, v[i:i + n].reshape(s))
            i += n
        return out
    f = lambda v: float(mp.loss(unvec(v), ph, x, y, cfg, methods))  # noqa: E731
    _, g = mp.value_and_grad(lambda t: mp.loss(t, ph, x, y, cfg, methods), th)
    return vec, f, onp.concatenate([a.ravel() for _, a in mp.tree.leaves_with_paths(g)])


def adapter_insertions(params, m, N):
    """An AdaptFormer's or serial adapter's θ (params[m.name]) as ``reference.forward``'s
    per-block insertions: a list of N dicts, {} for a block without an adapter."""
    from minipeft.methods.adapter import SerialAdapter

    out = [{} for _ in range(N)]
    for ell in range(N) if m.layers is None else m.layers:
        th = params[m.name]["blocks"][ell]
        if isinstance(m, SerialAdapter):
            out[ell]["serial"] = {site: th[site] for site in ("attn", "mlp") if site in th}
        else:
            out[ell]["parallel"] = (th, th["s"][0] if m.learnable_s else m.s, m.input)
    return out


def prefix_insertions(P_k, P_v):
    """A prefix table P_k, P_v (N, p, d) each as per-block insertions: block ℓ gets P_k[ℓ], P_v[ℓ]."""
    return [{"P_k": k, "P_v": v} for k, v in zip(P_k, P_v)]


def joined(*per_block):
    """Several methods' per-block insertion lists as one: block ℓ gets the union of their dicts."""
    return [{k: v for ins in at_block for k, v in ins.items()} for at_block in zip(*per_block)]


_MINILM = {}


@pytest.fixture(scope="session")
def minilm():
    """``minilm(dtype)`` -> (params, cfg, tokenizer) of all-MiniLM-L6-v2 with pool="pooler"
    (so φ has the pooler too; use ``dataclasses.replace(cfg, pool=...)`` for the others),
    a 3-class head; loaded once per dtype per session (a few seconds each)."""
    from minipeft.models import minilm as M

    def get(dtype="float64"):
        if dtype not in _MINILM:
            _MINILM[dtype] = M.load(n_classes=3, pool="pooler", dtype=dtype)
        return _MINILM[dtype]

    return get


def _have_smollm2() -> bool:
    try:
        gguf_read.model_path()
        return True
    except ImportError:
        return False


#: mark for the tests of the real SmolLM2 file: skipped when its package is missing
needs_smollm2 = pytest.mark.skipif(not _have_smollm2(), reason=f"the model package is missing: {gguf_read.INSTALL}")
_SMOLLM2 = {}


@pytest.fixture(scope="session")
def smollm2():
    """``smollm2(dtype, quantized=False)`` -> (params, hp, tokenizer) of SmolLM2-135M-Instruct
    (models.smollm2.load of the installed GGUF), loaded once per (dtype, quantized) per session,
    lazily: the 98 MB file is parsed once and each variant built once. Shared: never modify it."""
    from minipeft.models import smollm2 as S

    def get(dtype="float32", quantized=False):
        key = (dtype, quantized)
        if key not in _SMOLLM2:
            _SMOLLM2[key] = S.load(dtype=dtype, quantized=quantized)
        return _SMOLLM2[key]

    return get


@pytest.fixture(scope="session")
def smollm2_ref():
    """{name: array} of tests/fixtures/smollm2_reference.npz, transformers' numbers for the real
    SmolLM2 file (tests/fixtures/make_smollm2_fixture.py)."""
    path = os.path.join(os.path.dirname(__file__), "fixtures", "smollm2_reference.npz")
    with onp.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


#: a one-block backbone that pretrains in about a second (the backbone-cache tests)
TINY_BACKBONE = mp.Config(d=8, h=2, N=1, d_ff=8)


@pytest.fixture
def tiny_recipe(monkeypatch, tmp_path):
    """$MINIPEFT_CACHE in ``tmp_path`` and a one-epoch pretraining recipe; returns the cache folder."""
    from minipeft import pretrained

    monkeypatch.setenv("MINIPEFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(pretrained.RECIPE, "epochs", 1)
    return tmp_path / "cache"

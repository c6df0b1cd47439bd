"""float32 end to end: every intermediate of a float32 forward pass and every cotangent
of its backward pass stays float32 — for the backbone and for every registered method.

How "every" is seen. With θ = every leaf (backbone and the method's own θ), each value
the forward computes depends on θ, so autograd boxes it: wrapping
``autograd.tracer.new_box`` records the dtype of every intermediate (the outputs of all
autograd.numpy ops and of minipeft's fused primitives, inside the methods' hooks too).
Wrapping ``add_outgrads`` in ``minipeft.autodiff`` records every cotangent the backward
pass hands from a node to its parents, and the gradient leaves are checked at the end.
A NumPy float64 scalar joining the graph, or an upcasting VJP, would show up as a float64.

Also here: the fused attention primitives against their composed version, and the
primitives' recompute path (when the forward's intermediates are not handed over).
"""
import dataclasses

import autograd
import autograd.numpy as anp
import autograd.tracer
import numpy as onp
import pytest
from autograd import grad

import minipeft as mp
from conftest import images, randomize
from minipeft import autodiff, tree
from minipeft.methods import REGISTRY, method_class
import importlib
from minipeft.nn import primitives as prim

att = importlib.import_module("minipeft.nn.attention")  # the module (minipeft.nn.attention is also a function name)

NAMES = [None] + sorted(REGISTRY)


def _method(name):
    if name is None:
        return None
    try:
        return method_class(name)()
    except (ImportError, AttributeError) as e:  # a method being written: its module is not there yet
        pytest.skip(f"method {name!r} ({REGISTRY[name]}) does not import yet: {type(e).__name__}: {e}")


def _float_dtypes(value):
    """dtypes of the floating arrays in a value (an array, or a tuple/list/dict of them)."""
    if isinstance(value, (tuple, list)):
        return [dt for v in value for dt in _float_dtypes(v)]
    if isinstance(value, dict):
        return [dt for v in value.values() for dt in _float_dtypes(v)]
    dt = getattr(value, "dtype", None)
    if dt is None:
        return ["python float"] if isinstance(value, float) else []
    return [onp.dtype(dt)] if onp.dtype(dt).kind in "fc" else []


@pytest.fixture
def record(monkeypatch):
    """{"forward": [dtype of every boxed intermediate], "backward": [dtype of every cotangent]}."""
    seen = {"forward": [], "backward": []}
    new_box, add_outgrads = autograd.tracer.new_box, autodiff.add_outgrads

    def spy_box(value, trace, node):
        seen["forward"].extend(_float_dtypes(value))
        return new_box(value, trace, node)

    def spy_add(prev, g):
        seen["backward"].extend(_float_dtypes(g))
        return add_outgrads(prev, g)

    monkeypatch.setattr(autograd.tracer, "new_box", spy_box)
    monkeypatch.setattr(autodiff, "add_outgrads", spy_add)
    return seen


def _not32(dtypes):
    return sorted({str(d) for d in dtypes if d != onp.dtype("float32")})


@pytest.mark.parametrize("name", NAMES, ids=lambda n: n or "backbone")
def test_float32_forward_and_backward_stay_float32(tiny_cfg, record, name):
    m = _method(name)
    methods = [] if m is None else [m]
    p = mp.attach(mp.init_params(tiny_cfg, 0, "float32"), methods, tiny_cfg, seed=0)
    p = randomize(p, seed=1, scale=0.2)  # non-trivial θ: LoRA's B ≠ 0, scales ≠ 1, …
    x, y = images(tiny_cfg, 3, dtype="float32"), onp.array([0, 2, 1])
    theta, phi = mp.split(p, lambda path, leaf: True)  # θ = everything: every intermediate is traced
    traces = []

    def loss(th):
        tr = {}
        logits = mp.forward(mp.combine(th, phi), x, tiny_cfg, methods, trace=tr)
        traces.append((logits, tr))
        return mp.nn.cross_entropy(logits, y)

    value, g = mp.value_and_grad(loss, theta)
    logits, tr = traces[0]
    assert value.dtype == onp.float32
    assert _float_dtypes(logits) == [onp.float32]
    assert tr["hidden"] and tr["attn"]
    assert not _not32(_float_dtypes(tr["hidden"]) + _float_dtypes(tr["attn"]))
    assert len(record["forward"]) > 20 and not _not32(record["forward"]), _not32(record["forward"])
    assert len(record["backward"]) > 20 and not _not32(record["backward"]), _not32(record["backward"])
    leaves = tree.leaves_with_paths(g)
    assert len(leaves) == len(tree.leaves_with_paths(theta))
    bad = [tree.path_str(q) for q, a in leaves if a.dtype != onp.float32]
    assert not bad, bad
    # the gradients are not trivially zero: the check saw a real backward pass
    assert sum(float(onp.abs(a).sum()) for _, a in leaves) > 0
    # and an untraced float32 forward (inference) gives float32 logits too, merged or not
    assert mp.forward(p, x, tiny_cfg, methods).dtype == onp.float32
    if m is not None and m.mergeable:
        merged = m.merge(p)
        assert not [tree.path_str(q) for q, a in tree.leaves_with_paths(merged) if a.dtype != onp.float32]
        assert mp.forward(merged, x, tiny_cfg).dtype == onp.float32


@dataclasses.dataclass(frozen=True)
class Upcast(mp.Method):
    """A deliberately careless method: a NumPy float64 scalar in its forward ("scalar") or
    autograd's own mean, whose VJP returns float64 ("mean")."""
    name: str = "upcast"
    how: str = "scalar"

    def on_tokens(self, theta, X, cfg):
        if self.how == "scalar":
            return X * onp.float64(1.5)
        return X - anp.mean(X, axis=-1, keepdims=True)

    def n_params(self, cfg):
        return 0


@pytest.mark.parametrize("how,where", [("scalar", "forward"), ("mean", "backward")])
def test_the_recorder_catches_an_upcast(tiny_cfg, record, how, where):
    """The check above has teeth: a float64 that joins the graph is seen where it happens."""
    m = Upcast(how=how)
    p = {**mp.init_params(tiny_cfg, 0, "float32"), "upcast": {}}
    theta, phi = mp.split(p, lambda path, leaf: True)
    x, y = images(tiny_cfg, 2, dtype="float32"), onp.array([0, 1])
    mp.value_and_grad(lambda th: mp.loss(th, phi, x, y, tiny_cfg, [m]), theta)
    assert "float64" in _not32(record[where])


# ------------------------------------------------- fused attention vs the composed one
def _weighted(f):
    """A scalar of f's outputs (Z, A), weighting every element differently."""
    def s(*args):
        Z, A = f(*args)
        wz = onp.cos(onp.arange(Z.size)).reshape(Z.shape).astype(Z.dtype)
        wa = onp.sin(onp.arange(A.size)).reshape(A.shape).astype(A.dtype)
        return anp.sum(Z * wz) + anp.sum(A * wa)
    return s


@pytest.mark.parametrize("prefix", [False, True])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_fused_attention_equals_composed_in_value_and_gradient(prefix, dtype, rtol):
    r = onp.random.default_rng(3)
    B, T, S, d, h, p = 2, 3, 4, 8, 2, 2
    Q, K, V = (r.standard_normal((B, n, d)).astype(dtype) for n in (T, S, S))
    pre = tuple(r.standard_normal((p, d)).astype(dtype) for _ in range(2)) if prefix else None
    fused = lambda q, k, v: att.attention(q, k, v, h, prefix=pre, return_weights=True)  # noqa: E731
    comp = lambda q, k, v: att.attention_composed(q, k, v, h, prefix=pre, return_weights=True)  # noqa: E731
    for a, b in zip(fused(Q, K, V), comp(Q, K, V)):
        assert a.dtype == onp.dtype(dtype)
        onp.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
    for i in range(3):
        ga, gb = grad(_weighted(fused), i)(Q, K, V), grad(_weighted(comp), i)(Q, K, V)
        assert ga.dtype == onp.dtype(dtype)
        onp.testing.assert_allclose(ga, gb, rtol=rtol * 10, atol=rtol)


def test_attention_weights_gradient_flows_through_the_returned_weights():
    """A loss of the weights alone (no Z) still reaches Q and K: A is a real graph node."""
    r = onp.random.default_rng(4)
    Q, K, V = (r.standard_normal((1, 3, 4)) for _ in range(3))
    f = lambda q: anp.sum(att.attention(q, K, V, 2, return_weights=True)[1] ** 2)  # noqa: E731
    g = grad(f)(Q)
    eps, u = 1e-6, r.standard_normal(Q.shape)
    fd = (f(Q + eps * u) - f(Q - eps * u)) / (2 * eps)
    assert onp.isclose(onp.sum(g * u), fd, rtol=1e-6, atol=1e-10)


# ----------------------------------------------- the primitives' recompute path
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_vjps_recompute_when_the_forward_did_not_hand_over(dtype):
    """The VJP makers use what the forward stashed for its own output; for any other
    array they recompute. Both paths give the same gradient."""
    r = onp.random.default_rng(5)
    x = r.standard_normal((2, 3, 8)).astype(dtype)
    gam, bet = (1 + 0.1 * r.standard_normal(8)).astype(dtype), (0.1 * r.standard_normal(8)).astype(dtype)
    g = r.standard_normal(x.shape).astype(dtype)
    y = prim._layer_norm_node(x, gam, bet)  # stashes x̂, 1/σ for y (the traced node; untraced calls keep nothing)
    stashed = prim._ln_vjp((0, 1, 2), y, (x, gam, bet), {})(g)
    recomputed = prim._ln_vjp((0, 1, 2), y.copy(), (x, gam, bet), {})(g)  # another array: recompute
    for a, b in zip(stashed, recomputed):
        assert a.dtype == onp.dtype(dtype)
        onp.testing.assert_array_equal(a, b)
    y = prim.gelu(x)
    onp.testing.assert_array_equal(prim._gelu_vjp(y, x)(g), prim._gelu_vjp(y.copy(), x)(g))
    assert prim._GELU.take(y) is None  # the slot was emptied by the first maker

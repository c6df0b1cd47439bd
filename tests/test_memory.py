"""Memory of a training step: what the backward pass keeps alive, and that keeping less changes no bit.

PEFT's memory saving (notes, "Why PEFT"): a frozen W needs no dW = gᵀ x, so the input x of
a frozen linear need not outlive the forward pass — dX = g W reads W only. These tests
watch the actual arrays with weak references while the graph is alive.
"""
import gc
import importlib
import tracemalloc
import weakref

import autograd.numpy.numpy_vjps as av
import numpy as onp
import pytest
from autograd.core import vspace
from autograd.extend import defvjp, defvjp_argnums
from autograd.numpy.numpy_boxes import ArrayBox
from autograd.util import func

import minipeft as mp
from minipeft import tree
from minipeft.autodiff import value_and_grad

from conftest import alive_after_forward, assert_bit_identical, images, randomize

P = importlib.import_module("minipeft.nn.primitives")
A = importlib.import_module("minipeft.nn.attention")
V = importlib.import_module("minipeft.nn.autograd_vjps")
FF = importlib.import_module("minipeft.nn.ff")
LR = importlib.import_module("minipeft.nn.lowrank")
FWD = importlib.import_module("minipeft.transformer.forward")
rng = onp.random.default_rng(0)


def _retained_after_forward(fn, n_in=1):
    """Run value_and_grad of a scalar function built from ``fn`` on traced inputs; ``fn`` gets the
    boxed inputs and returns (its output, [raw arrays to watch]). Returns, for each watched array,
    whether it was still alive after the forward pass (before the backward pass ran)."""
    alive = {}

    def f(th):
        out, watch = fn(th)
        refs = [weakref.ref(a) for a in watch]
        del watch
        gc.collect()
        alive["now"] = [r() is not None for r in refs]
        return (out * out).sum()

    value_and_grad(f, {f"u{i}": rng.standard_normal((4, 3, 8)) for i in range(n_in)})
    return alive["now"]


def test_a_frozen_linears_input_is_not_kept_after_the_forward():
    """x = 2u is traced (u trains), W is frozen: dX = g W must not hold x."""
    W = rng.standard_normal((5, 8))

    def fn(th):
        x = th["u0"] * 2.0  # a new traced array; multiply by a constant keeps nothing
        return P.linear(x, W), [x._value]

    assert _retained_after_forward(fn) == [False]


def test_layer_norms_input_is_not_kept_after_the_forward():
    """x = 2u is traced, γ and β frozen: ∂x needs x̂ and 1/σ (kept by the forward), not x, so
    the residual stream that feeds each LayerNorm is not held until the backward pass."""
    gamma, beta = rng.standard_normal(8), rng.standard_normal(8)

    def fn(th):
        x = th["u0"] * 2.0
        return P.layer_norm(x, gamma, beta), [x._value]

    assert _retained_after_forward(fn) == [False]


def test_a_trainable_linears_input_is_kept_for_its_dw():
    """The detector works: with W traced too, dW = gᵀ x needs x, so x stays alive."""
    def fn(th):
        x = th["u0"] * 2.0
        W = th["u1"][0, :5]  # (5, 8), traced
        return P.linear(x, W), [x._value]

    assert _retained_after_forward(fn, n_in=2) == [True]


def test_attention_keeps_only_what_a_computed_gradient_reads():
    """Only Q traced (K, V frozen data): ∂Q reads K, ∂V is not computed, so Q is not kept;
    with K traced as well, Q is kept (∂K reads Q)."""
    K = rng.standard_normal((4, 3, 8))

    def q_only(th):
        Q = th["u0"] * 2.0
        return A.attend(A.attention_weights(Q, K, 2), K), [Q._value]

    def q_and_k(th):
        Q, Kt = th["u0"] * 2.0, th["u1"] * 2.0
        return A.attend(A.attention_weights(Q, Kt, 2), K), [Q._value]

    assert _retained_after_forward(q_only) == [False]
    assert _retained_after_forward(q_and_k, n_in=2) == [True]


def _gelu_derivative_formula(x, t):
    """GELU'(x) from t = tanh(·) over the whole array, the same operations in the same order as
    the blocked code: ((1 − t²)·x)·u + t + 1, ·½, u = 3·0.044715·√(2/π) x² + √(2/π)."""
    s = 1.0 - t * t
    s *= x
    u = x * x
    u *= 3 * P._GELU_A * P._GELU_C
    u += P._GELU_C
    s *= u
    s += t
    s += 1.0
    s *= 0.5
    return s


def test_gelu_derivative_in_blocks_has_the_bits_of_one_whole_array_pass():
    """The blocked derivative against the whole-array formula, bit for bit, on a size that is
    not a multiple of the block."""
    x = rng.standard_normal(3 * P._BLOCK + 123).astype("float32")
    t = P._gelu_tanh(x)
    whole = t * t
    whole = 0.5 * (1.0 + t + (1.0 - whole) * x * (x * x * (3 * P._GELU_A * P._GELU_C) + P._GELU_C))
    s = _gelu_derivative_formula(x, t)
    got = P._gelu_derivative(x, t.copy())
    assert got.dtype == onp.float32
    assert onp.array_equal(got.view(onp.uint32), s.view(onp.uint32))
    onp.testing.assert_allclose(got, whole, rtol=1e-6, atol=1e-7)  # and it is GELU'


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("block", [None, 64, 1000], ids=["default-blocks", "tiny-blocks", "ragged-blocks"])
def test_gelu_blocks_have_the_bits_of_gelu_and_of_its_vjp(monkeypatch, block, dtype):
    """``ff._gelu_blocks`` (one chain a block, u² formed once, scratch rows) against the readable
    path, bit for bit: GELU(U) over U with GELU'(U) into D against ``gelu``'s value and the
    derivative of ``_gelu_tanh`` + ``_gelu_derivative``; and U -> GELU'(U) in place (frozen_mlp's
    backward) against the same; on a size that is not a multiple of the block, with ±0, large
    and tiny entries."""
    if block is not None:
        monkeypatch.setattr(FF, "_FF_BLOCK", block)
        monkeypatch.setattr(P, "_BLOCK", block)
    U = (3.0 * rng.standard_normal((7, 1234))).astype(dtype)
    U.flat[:6] = [0.0, -0.0, 30.0, -30.0, 1e-30, -1e-30]
    want_y = P.gelu(U)
    want_d = P._gelu_derivative(U, P._gelu_tanh(U))
    H, D = U.copy(), onp.empty_like(U)
    FF._gelu_in_place(H, D)
    assert H.tobytes() == want_y.tobytes() and D.tobytes() == want_d.tobytes()
    D2 = U.copy()
    assert FF._gelu_blocks(D2) is D2 and D2.tobytes() == want_d.tobytes()
    assert want_d.tobytes() == _gelu_derivative_formula(U, P._gelu_tanh(U)).tobytes()  # the readable formula
    # frozen_mlp's backward: U = x W₁ᵀ without b₁, then + b₁, GELU'(U) and G ⊙ GELU'(U) in each block
    b = (0.5 * rng.standard_normal(U.shape[-1])).astype(dtype)
    G = rng.standard_normal(U.shape).astype(dtype)
    Ub = U + b  # linear's own  y += b, over the whole array
    want_d, want_g = P._gelu_derivative(Ub, P._gelu_tanh(Ub)), G * P._gelu_derivative(Ub, P._gelu_tanh(Ub))
    for g_in in (G.copy(), onp.asfortranarray(G)):  # C-contiguous: per block; strided: one pass at the end
        D3 = U.copy()
        assert FF._gelu_blocks(D3, b=b, G=g_in) is D3
        assert D3.tobytes() == want_d.tobytes() and onp.ascontiguousarray(g_in).tobytes() == want_g.tobytes()


@pytest.mark.parametrize("block", [64, 1000], ids=["tiny-blocks", "ragged-blocks"])
def test_frozen_mlp_is_the_three_nodes_bit_for_bit_in_small_blocks(monkeypatch, block):
    """As ``test_frozen_mlp_is_the_three_nodes_bit_for_bit`` (float32), with the element-wise
    blocks of ``ff`` small and ragged: the bias, GELU' and ∂L/∂H ⊙ GELU' of the backward pass
    join per block of whole rows."""
    monkeypatch.setattr(FF, "_FF_BLOCK", block)
    x, W1, b1, W2, b2, G = _mlp_case("float32")
    fused = value_and_grad(lambda t: (FF.frozen_mlp(t["x"], W1, b1, W2, b2) * G).sum(), {"x": x})
    ref = value_and_grad(lambda t: (P.linear(P.gelu(P.linear(t["x"], W1, b1)), W2, b2) * G).sum(), {"x": x})
    assert onp.asarray(fused[0]).tobytes() == onp.asarray(ref[0]).tobytes()
    assert fused[1]["x"].tobytes() == ref[1]["x"].tobytes()


def _holding_x_maker(ans, x, W, b=None):
    """The dX VJP as it was before the memory fix: the closure refers to x (for its shape)."""
    return lambda g: (g.reshape(-1, g.shape[-1]) @ W).reshape(x.shape)


def _stock_getitem_maker(ans, A, idx):
    """autograd's own VJP of A[idx]: the closure refers to A."""
    return lambda g: av.untake(g, idx, vspace(A))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_memory_fix_changes_no_bit_of_the_losses(tiny_cfg, dtype):
    """A few LoRA, prompt-tuning and full fine-tuning steps with the closures that held more (dX
    holding x, indexing holding its input, W₁, GELU and W₂ as three nodes) and with the current
    ones: the same losses and the same gradients of the first batch, bit for bit."""
    LoRA, Prompt = mp.method_class("lora"), mp.method_class("prompt")

    cfg = tiny_cfg
    params = randomize(mp.init_params(cfg, 0, dtype), seed=1)
    x, y = images(cfg, 64, dtype=dtype), onp.arange(64) % cfg.n_classes
    runs = {}
    for variant in ("current", "holding x"):
        if variant == "holding x":  # stock autograd's indexing VJP (it held its input), GELU and W₁ as two nodes
            defvjp(P.linear, _holding_x_maker, P._linear_vjp_W, P._linear_vjp_b)
            defvjp(func(ArrayBox.__getitem__), _stock_getitem_maker)
            FWD._fuse_mlp1, fuse = (lambda *a: False), FWD._fuse_mlp1  # gelu(linear(·)) as two nodes
            FWD._fuse_mlp, fuse_all = (lambda *a: False), FWD._fuse_mlp  # and W₂ its own node
        try:
            for kind, methods in (("lora", [LoRA()]), ("prompt", [Prompt()]), ("full", [])):
                p = mp.attach(params, methods, cfg, 0) if methods else params
                pred = mp.trainable(methods) if methods else (lambda path, leaf: True)
                _, h = mp.fit(p, (x, y), cfg, methods, trainable=pred, steps=4, batch_size=32, progress=False)
                theta, phi = tree.split(p, pred)
                grads = value_and_grad(lambda th: mp.loss(th, phi, x[:32], y[:32], cfg, methods), theta)[1]
                runs[variant, kind] = onp.array(h["loss"]), grads
        finally:
            defvjp(P.linear, P._linear_vjp_x, P._linear_vjp_W, P._linear_vjp_b)
            defvjp(func(ArrayBox.__getitem__), V._getitem_vjp)
            if variant == "holding x":
                FWD._fuse_mlp1, FWD._fuse_mlp = fuse, fuse_all
    for kind in ("lora", "prompt", "full"):
        (a, ga), (b, gb) = runs["current", kind], runs["holding x", kind]
        assert a.tobytes() == b.tobytes(), (kind, a, b)
        assert_bit_identical(ga, gb)


def _peak(step):
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        step()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_lora_step_peaks_well_below_a_full_step():
    """Traced peak memory of one step (loss + gradients), d = 32, T = 17, batch 64: LoRA (r = 4
    on q, v, head trainable) at most 0.85 of full fine-tuning."""
    LoRA = mp.method_class("lora")

    cfg = mp.Config(d=32, h=4, N=2, d_ff=64, n_classes=10, image_size=16, patch=4)
    params = mp.init_params(cfg, 0, "float32")
    x, y = images(cfg, 64, dtype="float32"), onp.arange(64) % 10
    lora = LoRA()
    pl = mp.attach(params, [lora], cfg, 0)
    th_l, phi_l = tree.split(pl, mp.trainable([lora]))
    th_f, phi_f = tree.split(params, lambda path, leaf: True)
    lora_peak = _peak(lambda: value_and_grad(lambda th: mp.loss(th, phi_l, x, y, cfg, [lora]), th_l))
    full_peak = _peak(lambda: value_and_grad(lambda th: mp.loss(th, phi_f, x, y, cfg), th_f))
    assert lora_peak <= 0.85 * full_peak, (lora_peak, full_peak)


def test_no_backward_work_below_the_lowest_trainable_parameter(tiny_cfg):
    """LoRA on the last block only (head frozen): no VJP is built, and none runs, for anything
    below that block — autograd traces only what depends on θ. Counted by spying on the VJP
    makers of linear (dX), layer norm and attention."""
    cfg = tiny_cfg  # N = 2
    lora = mp.method_class("lora")(layers=(cfg.N - 1,))
    params = mp.attach(randomize(mp.init_params(cfg, 0), seed=2), [lora], cfg, 0)
    theta, phi = tree.split(params, mp.trainable([lora], train_head=False))
    made = {"dX": 0, "ln": 0, "attn": 0}

    def count(key, maker):
        def spy(*a, **k):
            made[key] += 1
            return maker(*a, **k)
        return spy

    defvjp(P.linear, count("dX", P._linear_vjp_x), P._linear_vjp_W, P._linear_vjp_b)
    defvjp_argnums(P._layer_norm_node, count("ln", P._ln_vjp))
    defvjp_argnums(A.attention_weights, count("attn", A._attention_weights_vjp))
    defvjp_argnums(A._attention_node, count("attn", A._attention_vjp))  # attend ∘ attention_weights as one node

    def fused(argnums, *rest):  # W₁'s dX inside the fused GELU(x W₁ᵀ + b₁) node
        made["dX"] += 0 in argnums
        return FF._linear_gelu_vjp(argnums, *rest)

    defvjp_argnums(FF.linear_gelu, fused)

    def fused_all(argnums, *rest):  # W₂'s and W₁'s dX inside the one frozen-MLP node
        made["dX"] += 2 * (0 in argnums)
        return FF._frozen_mlp_vjp(argnums, *rest)

    defvjp_argnums(FF.frozen_mlp, fused_all)

    def fused_lora(argnums, *rest):  # the B-branch's dX, ∂u = s·g B, inside LoRA's one node (nn/lowrank.py)
        made["dX"] += 1 in argnums or 2 in argnums
        return LR._low_rank_add_vjp(argnums, *rest)

    defvjp_argnums(LR.low_rank_add, fused_lora)
    try:
        x, y = images(cfg, 3), onp.arange(3) % cfg.n_classes
        _, g = value_and_grad(lambda th: mp.loss(th, phi, x, y, cfg, [lora]), theta)
    finally:
        defvjp(P.linear, P._linear_vjp_x, P._linear_vjp_W, P._linear_vjp_b)
        defvjp_argnums(P._layer_norm_node, P._ln_vjp)
        defvjp_argnums(A.attention_weights, A._attention_weights_vjp)
        defvjp_argnums(A._attention_node, A._attention_vjp)
        defvjp_argnums(FF.linear_gelu, FF._linear_gelu_vjp)
        defvjp_argnums(FF.frozen_mlp, FF._frozen_mlp_vjp)
        defvjp_argnums(LR.low_rank_add, LR._low_rank_add_vjp)
    # the last block: dX of W_o, W_1, W_2, of LoRA's B-branches on q and v (their input x Aᵀ is
    # traced), and of the head; LN₂ and LN_f (LN₁ reads the untraced X_{N-1}); one attention
    assert made == {"dX": 6, "ln": 2, "attn": 1}, made
    gB = [leaf for path, leaf in tree.leaves_with_paths(g["lora"]) if path[-1] == "B"]  # B = 0 at init, so dA = 0
    assert gB and all(float(abs(leaf).max()) > 0 for leaf in gB)


def test_indexing_and_reshape_keep_only_the_shape_of_their_input():
    """pool's X[:, 0] (the CLS row) and a reshape of a traced array: their VJPs need X's shape,
    not X (autograd's own closures held X itself: LN_f's whole (B, T, d) output until the
    backward pass). The gradients are unchanged: g scattered into zeros of X's shape."""
    import autograd.numpy as anp

    def row(th):
        X = th["u0"] * 2.0
        return X[:, 0] * 2.0, [X._value]  # (a product: the view X[:, 0] itself would hold X's buffer)

    def flat(th):
        X = th["u0"] * 2.0
        return anp.reshape(X, (4, 24)) * 2.0, [X._value]

    assert _retained_after_forward(row) == [False]
    assert _retained_after_forward(flat) == [False]
    u = rng.standard_normal((4, 3, 8))
    _, g = value_and_grad(lambda th: (th["u"][:, 0] ** 2).sum(), {"u": u})
    want = onp.zeros_like(u)
    want[:, 0] = 2 * u[:, 0]
    assert onp.array_equal(g["u"], want)


def test_the_backward_pass_drops_a_nodes_cotangents_before_the_next_vjp():
    """a = w(u) feeds two nodes, so its cotangent is a sum of two pieces; when a's VJP runs, the
    piece the last node returned is dead (value_and_grad once kept it through the next VJP)."""
    from autograd.extend import primitive

    seen = {}

    @primitive
    def spy(a):
        return a * 3.0

    @primitive
    def w(u):
        return u * 2.0

    def spy_vjp(ans, a):
        def vjp(g):
            piece = g * 3.0
            seen["piece"] = weakref.ref(piece)
            return piece
        return vjp

    def w_vjp(ans, u):
        def vjp(g):
            gc.collect()
            seen["alive"] = seen["piece"]() is not None
            return g * 2.0
        return vjp

    defvjp(spy, spy_vjp)
    defvjp(w, w_vjp)
    u = rng.standard_normal((5, 7))

    def f(th):
        a = w(th["u"])
        return (spy(a) + a).sum()  # ∂/∂a = 3 + 1

    _, g = value_and_grad(f, {"u": u})
    assert seen["alive"] is False
    assert onp.array_equal(g["u"], onp.full_like(u, 8.0))


def _ff_case(dtype):
    r = onp.random.default_rng(3)
    x = r.standard_normal((4, 150, 32)).astype(dtype)  # 600 rows × 96 > several blocks of H
    W = (0.2 * r.standard_normal((96, 32))).astype(dtype)
    b = (0.1 * r.standard_normal(96)).astype(dtype)
    G = r.standard_normal((4, 150, 96)).astype(dtype)
    return x, W, b, G


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_gelu_is_gelu_of_linear_bit_for_bit(dtype):
    """The fused first half of the MLP against the two nodes gelu(linear(x, W, b)): value and
    ∂/∂x, ∂/∂W, ∂/∂b identical to the bit (the same operations, blocked)."""
    x, W, b, G = _ff_case(dtype)
    th = {"x": x, "W": W, "b": b}
    fused = value_and_grad(lambda t: (FF.linear_gelu(t["x"], t["W"], t["b"]) * G).sum(), th)
    two = value_and_grad(lambda t: (P.gelu(P.linear(t["x"], t["W"], t["b"])) * G).sum(), th)
    assert onp.asarray(fused[0]).tobytes() == onp.asarray(two[0]).tobytes()
    for k in th:
        assert fused[1][k].dtype == onp.dtype(dtype)
        assert fused[1][k].tobytes() == two[1][k].tobytes(), k


@pytest.mark.parametrize("exact", [True, False], ids=["erf", "tanh"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("block", [None, 64], ids=["default-blocks", "tiny-blocks"])
def test_untraced_linear_gelu_is_gelu_of_linear_bit_for_bit(monkeypatch, block, dtype, exact):
    """A forward pass alone: GELU(x Wᵀ + b) with b added block by block in U's own buffer (erf)
    against the two calls gelu_erf(linear(x, W, b)) / gelu(linear(x, W, b)), byte for byte,
    with the kernels' blocks and with ragged blocks of 64 numbers (a few rows of 96 each)."""
    if block is not None:
        monkeypatch.setattr(P, "_BLOCK", block)
        monkeypatch.setattr(FF, "_FF_BLOCK", block)
    x, W, b, _ = _ff_case(dtype)
    act = P.gelu_erf if exact else P.gelu
    got = FF.linear_gelu_values(x, W, b, exact=exact)
    want = act(P.linear(x, W, b))
    assert got.dtype == onp.dtype(dtype) and got.shape == want.shape
    assert got.tobytes() == want.tobytes()
    assert P._GELU_ERF.take(got) is None  # nothing stashed: no GELU' was formed


def test_untraced_linear_gelu_allocates_one_buffer_of_the_hidden_size():
    """A forward pass alone: ``linear_gelu_values`` (erf) allocates H (its U, overwritten) and
    nothing else of that size (its block temporaries are reused: warmed up first); the two
    calls gelu_erf(linear(·)) hold U and H at once (the detector works)."""
    x, W, b, _ = _ff_case("float32")
    x = onp.tile(x, (16, 1, 1))  # H of 9600 × 96
    H_bytes = x.shape[0] * x.shape[1] * W.shape[0] * 4
    peaks = {}
    for name, fn in (("fused", lambda: FF.linear_gelu_values(x, W, b, exact=True)),
                     ("two", lambda: P.gelu_erf(P.linear(x, W, b)))):
        fn()  # warm-up: the per-thread block scratch
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            out = fn()
            peaks[name] = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        del out
    assert peaks["fused"] <= 1.1 * H_bytes, (peaks, H_bytes)
    assert peaks["two"] >= 1.9 * H_bytes, (peaks, H_bytes)


@pytest.mark.parametrize("act", ["gelu_tanh", "gelu_erf"])
def test_a_bias_free_gelu_model_runs_the_plain_mlp(act):
    """bias=False (no b₁ in the params): neither fused path applies, the forward and its
    gradient run through linear then the GELU (no lookup of the missing b₁)."""
    import dataclasses

    from test_bert_forks import TINY, batch
    cfg = dataclasses.replace(TINY, bias=False, act=act)
    params = mp.init_params(cfg, 0, "float32")
    assert "b_1" not in params["blocks"][0]["mlp"]
    assert mp.forward(params, batch(), cfg).shape == (3, cfg.n_classes)
    value_and_grad(lambda t: mp.forward(t, batch(), cfg).sum(), params)


def test_untraced_forward_takes_the_fused_mlp_hidden_layer():
    """An untraced BERT forward (erf GELU) takes ``linear_gelu_values`` in every block, with the
    same bits as the unfused linear then gelu_erf; a traced one does not (it needs GELU')."""
    from test_bert_forks import TINY, batch
    cfg = TINY
    params = randomize(mp.init_params(cfg, 0, "float32"), seed=2)
    x = batch()
    calls = []
    real = FWD.linear_gelu_values

    def spy(*a, **k):
        calls.append(k.get("exact"))
        return real(*a, **k)

    FWD.linear_gelu_values = spy
    try:
        fused = mp.forward(params, x, cfg)
        value_and_grad(lambda t: mp.forward(t, x, cfg).sum(), params)
    finally:
        FWD.linear_gelu_values = real
    assert calls == [True] * cfg.N
    plain, FWD._plain_mlp1 = FWD._plain_mlp1, (lambda *a: False)
    try:
        unfused = mp.forward(params, x, cfg)
    finally:
        FWD._plain_mlp1 = plain
    assert onp.asarray(fused).tobytes() == onp.asarray(unfused).tobytes()


def _traced_forward_bytes(fn, x):
    """(peak, kept) bytes that NumPy allocated while the traced forward ``fn(x * 1.0)`` ran: the
    most held at once, and what was still held when it returned (what the backward will find)."""
    got = {}

    def f(th):
        xt = th["x"] * 1.0
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            out = fn(xt)
            kept, peak = tracemalloc.get_traced_memory()
            got["bytes"] = (peak - base, kept - base)
        finally:
            tracemalloc.stop()
        return (out * 1.0).sum()

    value_and_grad(f, {"x": x})
    return got["bytes"]


def test_linear_gelu_forward_ends_with_two_buffers_of_the_hidden_size():
    """Traced, W frozen: the fused node's forward allocates H and GELU'(U) (plus block-sized
    temporaries); the two nodes allocate U, tanh(·) and H (the detector works)."""
    x, W, b, _ = _ff_case("float32")
    x = onp.tile(x, (16, 1, 1))  # H of 9600 × 96: many blocks, so block-sized temporaries are small beside it
    H_bytes = x.shape[0] * x.shape[1] * W.shape[0] * 4
    peaks = {name: _traced_forward_bytes(fn, x)[0] for name, fn in
             (("fused", lambda xt: FF.linear_gelu(xt, W, b)), ("two", lambda xt: P.gelu(P.linear(xt, W, b))))}
    assert peaks["fused"] <= 2.25 * H_bytes, (peaks, H_bytes)
    assert peaks["two"] >= 2.9 * H_bytes, (peaks, H_bytes)


def _mlp_case(dtype):
    x, W1, b1, _ = _ff_case(dtype)  # x (4, 150, 32): 600 rows; W1 (96, 32)
    r = onp.random.default_rng(5)
    W2 = (0.1 * r.standard_normal((32, 96))).astype(dtype)
    b2 = (0.1 * r.standard_normal(32)).astype(dtype)
    G = r.standard_normal((4, 150, 32)).astype(dtype)
    return x, W1, b1, W2, b2, G


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_frozen_mlp_is_the_three_nodes_bit_for_bit(dtype):
    """The whole MLP as one node against linear(gelu(linear(x, W₁, b₁)), W₂, b₂) and against
    linear(linear_gelu(x, W₁, b₁), W₂, b₂): value and ∂/∂x identical to the bit, in the input's
    dtype (600 rows × 96 hidden: several element-wise blocks)."""
    x, W1, b1, W2, b2, G = _mlp_case(dtype)
    fused = value_and_grad(lambda t: (FF.frozen_mlp(t["x"], W1, b1, W2, b2) * G).sum(), {"x": x})
    for inner in (lambda u: P.gelu(P.linear(u, W1, b1)), lambda u: FF.linear_gelu(u, W1, b1)):
        ref = value_and_grad(lambda t: (P.linear(inner(t["x"]), W2, b2) * G).sum(), {"x": x})
        assert onp.asarray(fused[0]).tobytes() == onp.asarray(ref[0]).tobytes()
        assert fused[1]["x"].dtype == onp.dtype(dtype)
        assert fused[1]["x"].tobytes() == ref[1]["x"].tobytes()


def test_frozen_mlp_keeps_its_input_not_gelus_derivative():
    """Traced, W₁, W₂ frozen: the forward makes one buffer of the hidden layer's size (U, then
    H in place) beside its output, and afterwards keeps only the output (its VJP holds x,
    allocated before); linear(linear_gelu(·), W₂) keeps GELU'(U) (the detector works). The
    backward pass makes two hidden-size buffers (GELU'(U) in U's, and ∂L/∂H) and ∂L/∂x."""
    x, W1, b1, W2, b2, _ = _mlp_case("float32")
    x = onp.tile(x, (16, 1, 1))  # 9600 rows × 96 hidden: the temporaries of the blocks are small beside H
    H_bytes, out_bytes = x.shape[0] * x.shape[1] * W1.shape[0] * 4, x.nbytes
    got = {}
    for name, fn in (("fused", lambda xt: FF.frozen_mlp(xt, W1, b1, W2, b2)),
                     ("nodes", lambda xt: P.linear(FF.linear_gelu(xt, W1, b1), W2, b2))):
        got[name, "peak"], got[name, "kept"] = _traced_forward_bytes(fn, x)
    assert got["fused", "peak"] <= out_bytes + 1.25 * H_bytes, got
    assert got["fused", "kept"] <= 1.05 * out_bytes, got
    assert got["nodes", "kept"] >= out_bytes + 0.95 * H_bytes, got

    vjp = FF._frozen_mlp_vjp((0,), None, (x, W1, b1, W2, b2), {})
    g = onp.ones_like(x)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        (dx,) = vjp(g)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert dx.shape == x.shape
    assert peak <= dx.nbytes + 2.25 * H_bytes, (peak, dx.nbytes, H_bytes)


def test_frozen_mlp_refuses_a_traced_weight():
    """Its VJP is for x only: a traced W or b (which the forward never hands it) is a clear error."""
    x, W1, b1, W2, b2, _ = _mlp_case("float64")
    with pytest.raises(ValueError, match="only x is differentiable"):
        value_and_grad(lambda t: FF.frozen_mlp(x, W1, b1, t["W2"], b2).sum(), {"W2": W2})


def test_in_a_lora_step_the_attention_output_is_not_kept_after_the_forward(tiny_cfg, monkeypatch):
    """Model level, LoRA on q, v: Z = concat_heads(A V), the input of the frozen W_o, is dead once
    the forward is done (dX = g W_o reads W_o only); with dX's closure holding its input, as it
    once did, Z stays alive (the detector works)."""
    lora = mp.method_class("lora")()

    def alive():  # Z of (Z, A), or Z alone (the one-node attention)
        return alive_after_forward(monkeypatch, FWD, "attention", tiny_cfg, lora,
                                   pick=lambda out: out[0] if isinstance(out, tuple) else out)

    assert alive() == [False] * tiny_cfg.N
    defvjp(P.linear, _holding_x_maker, P._linear_vjp_W, P._linear_vjp_b)
    try:
        held = alive()
    finally:
        defvjp(P.linear, P._linear_vjp_x, P._linear_vjp_W, P._linear_vjp_b)
    assert held == [True] * tiny_cfg.N


@pytest.mark.parametrize("recompute", ["none", "mlp"])
def test_the_forward_fuses_the_mlp_only_where_no_method_touches_it(tiny_cfg, recompute, monkeypatch):
    """Which node computes each block's MLP in a traced forward (counted by spies): LoRA on q, v,
    prompt tuning or (IA)³ of the notes (W₁, W₂ frozen, nothing inside the MLP): under
    MINIPEFT_RECOMPUTE=mlp the whole MLP as one node, by default GELU(x W₁ᵀ + b₁) as one node
    (GELU' kept, no recompute); LoRA on mlp2, the paper's (IA)³ (l_ff at "ff_hidden") or full
    fine-tuning (W₁, W₂ trained): GELU(x W₁ᵀ + b₁) as one node, W₂ a linear (LoRA on mlp2: not in
    block 1, whose MLP input is untraced); LoRA on mlp1: neither; an untraced forward: neither."""
    monkeypatch.setenv("MINIPEFT_RECOMPUTE", recompute)
    calls = {"frozen_mlp": 0, "linear_gelu": 0}
    real = {k: getattr(FWD, k) for k in calls}

    def spy(name):
        def f(*a):
            calls[name] += 1
            return real[name](*a)
        return f

    cfg = tiny_cfg
    params = randomize(mp.init_params(cfg, 0), seed=4)
    x, y = images(cfg, 3), onp.arange(3) % cfg.n_classes
    LoRA = mp.method_class("lora")
    for k in calls:
        setattr(FWD, k, spy(k))
    try:
        counts = {}
        cases = {"q v": [LoRA()], "prompt": [mp.method_class("prompt")()], "mlp2": [LoRA(targets=("mlp2",))],
                 "ia3": [mp.method_class("ia3")()], "ia3 paper": [mp.method_class("ia3")(variant="paper")],
                 "mlp1": [LoRA(targets=("mlp1",))], "full": []}
        for label, methods in cases.items():
            p = mp.attach(params, methods, cfg, 0) if methods else params
            theta, phi = tree.split(p, mp.trainable(methods) if methods else (lambda path, leaf: True))
            calls.update(frozen_mlp=0, linear_gelu=0)
            value_and_grad(lambda th: mp.loss(th, phi, x, y, cfg, methods), theta)
            counts[label] = dict(calls)
        calls.update(frozen_mlp=0, linear_gelu=0)
        mp.forward(params, x, cfg)
        counts["untraced"] = dict(calls)
    finally:
        for k, f in real.items():
            setattr(FWD, k, f)
    N = cfg.N
    w1 = {"frozen_mlp": 0, "linear_gelu": N}
    both = {"frozen_mlp": N, "linear_gelu": 0} if recompute == "mlp" else w1
    none = {"frozen_mlp": 0, "linear_gelu": 0}
    assert counts == {"q v": both, "prompt": both, "ia3": both, "mlp2": {"frozen_mlp": 0, "linear_gelu": N - 1},
                      "ia3 paper": w1, "mlp1": none, "full": w1, "untraced": none}, counts


def test_the_backward_pass_hands_a_cotangent_over_to_its_vjp():
    """A VJP that is done with its cotangent g can free it (the fused MLP node does, before its
    products): value_and_grad keeps no reference of its own while the VJP runs."""
    from autograd.extend import primitive

    seen = {}

    @primitive
    def double(u):
        return u * 2.0

    def maker(argnums, ans, args, kwargs):
        def vjp(g):
            ref = weakref.ref(g)
            out = g * 2.0
            del g
            gc.collect()
            seen["alive"] = ref() is not None
            return (out,)
        return vjp

    defvjp_argnums(double, maker)
    u = rng.standard_normal((5, 7))
    _, g = value_and_grad(lambda th: (double(th["u"] * 3.0) * 1.5).sum(), {"u": u})
    assert seen["alive"] is False
    assert onp.array_equal(g["u"], onp.full_like(u, 9.0))

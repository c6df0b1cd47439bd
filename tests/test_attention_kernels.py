"""softmax's and attention's fused kernels (nn/primitives.py softmax section, nn/attention.py)
beyond test_kernels.py's twins: the BLAS row subtraction is NumPy's subtraction bit for bit, the
blocks cover every row once, a NaN row stays NaN, the per-query (causal) mask path equals the
composed equation, and the grouped backward of ``attention_weights`` does not depend on the
group size.
"""
import importlib

import numpy as onp
import pytest

from minipeft.nn import primitives as P
from minipeft.nn.attention import _attention_weights_vjp, attention, attention_composed, attention_weights
from test_kernels import _close, _vjp_pair, _x, blocks  # noqa: F401  (blocks: a fixture)


@pytest.mark.parametrize("n", [P._GER_ROW + 13, 5])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_row_subtraction_is_numpys_bit_for_bit(dtype, n):
    """x − m per row as one BLAS rank-one update (float32, float64; rows of at least ``_GER_ROW``)
    = NumPy's x − m, inf and NaN included."""
    x = _x((37, n), dtype, 0, scale=50.0)
    x[3, 4], x[5, :], x[6, 2] = -onp.inf, -onp.inf, onp.nan
    m = onp.fmax.reduce(x, axis=-1, keepdims=True)
    with onp.errstate(invalid="ignore"):  # −∞ − (−∞) = NaN, on both sides
        want = x - m
        got = x.copy()
        assert P._sub_rows(got, m) is got
        strided = x.T.copy().T  # not C-contiguous: NumPy's subtraction, in place
        onp.testing.assert_array_equal(P._sub_rows(strided, m), want)
        into = onp.empty_like(x)  # into another buffer, x untouched
        assert P._sub_rows(x, m, out=into) is into
        onp.testing.assert_array_equal(P._sub_rows(x.T.copy().T, m, out=onp.empty_like(x)), want)
    onp.testing.assert_array_equal(got, want)
    onp.testing.assert_array_equal(into, want)


@pytest.mark.parametrize("shape", [(3, 41, 29), (8, 12, 32, 32), (2, 3, 5, 7), (5,), (4, 600), (2, 1, 300, 3)])
@pytest.mark.parametrize("size", [64, 1000, 1 << 18])
def test_blocks_cover_every_row_once(shape, size):
    seen = onp.zeros(shape, int)
    for ix in P._lead_blocks(shape, size):
        seen[ix] += 1
        assert seen[ix].shape[-1] == shape[-1]  # whole rows
        assert seen[ix].size <= max(size, shape[-1]) or len(shape) < 2
    assert (seen == 1).all()


@pytest.mark.parametrize("n", [7, 29, 100])
def test_a_row_holding_a_nan_gives_nan(n):
    """fmax ignores a NaN where max keeps it, but the row's sum is NaN either way."""
    z = _x((4, n), "float32", 1)
    z[1, 3] = onp.nan
    y = P.softmax(z)
    assert onp.isnan(y[1]).all() and onp.isfinite(y[[0, 2, 3]]).all()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_per_query_mask_equals_the_composed_attention(blocks, dtype):
    """A causal (per-query) mask, added inside softmax's blocks = the composed equation."""
    B, T, d, h = 3, 7, 16, 4
    Q, K, V = _x((B, T, d), dtype, 2), _x((B, T, d), dtype, 3), _x((B, T, d), dtype, 4)
    mask = onp.tril(onp.ones((T, T), bool))[None]  # (1, T, S)
    fast = lambda q, k, v: attention(q, k, v, h, return_weights=True, mask=mask)[1]  # noqa: E731
    twin = lambda q, k, v: attention_composed(q, k, v, h, return_weights=True, mask=mask)[1]  # noqa: E731
    (Af, gf, _), (Ar, gr, _) = _vjp_pair(fast, twin, (Q, K, V), (0, 1), dtype)
    assert (Af[:, :, ~mask[0]] == 0).all()
    _close(Af, Ar, dtype, "causal attention weights")
    for name, a, b in zip("QK", gf, gr):
        _close(a, b, dtype, f"∂L/∂{name} through the causal weights")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_attention_weights_backward_does_not_depend_on_the_group_size(monkeypatch, dtype):
    """∂L/∂S is formed a group of heads at a time; every head's products are the same calls
    whatever the groups, so ∂Q and ∂K are the same bits with groups of one head."""
    B, T, S, d, h = 3, 9, 11, 24, 4
    Q, K = _x((B, T, d), dtype, 5), _x((B, S, d), dtype, 6)
    mask = onp.arange(S)[None] < onp.array([[11], [5], [8]])
    A = attention_weights(Q, K, h, mask)
    G = _x(A.shape, dtype, 7)
    args = (Q, K, h, mask)
    want = _attention_weights_vjp((0, 1), A, args, {})(G)
    monkeypatch.setattr(P, "_BLOCK", 8)  # groups of one head, ragged row blocks inside
    got = _attention_weights_vjp((0, 1), A, args, {})(G)
    for a, b in zip(got, want):
        onp.testing.assert_array_equal(a, b)
    (dK,) = _attention_weights_vjp((1,), A, args, {})(G)  # one gradient alone
    onp.testing.assert_array_equal(dK, want[1])


# tiny blocks: whole heads; rows of a head split; S ≥ _NN_MIN_KEYS: Kᵀ and Vᵀ copied to C order (_transposed)
@pytest.mark.parametrize("T,S", [(9, 11), (20, 23), (9, 40)])
@pytest.mark.parametrize("argnums", [(0, 1, 2), (0,), (1,), (2,), (0, 2)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_node_attention_has_the_bits_of_its_two_nodes(blocks, dtype, argnums, T, S):
    """``attention`` traced without its weights is one node (``_attention_node``): its forward
    and its backward walk blocks of heads once; its value and every requested gradient are the
    bits of ``attend(attention_weights(·))``, two nodes, and close to the composed equation."""
    from autograd.extend import defvjp_argnums

    from minipeft.nn.attention import _attention_node, _attention_vjp, attend
    B, d, h = 3, 24, 4
    Q, K, V = _x((B, T, d), dtype, 11), _x((B, S, d), dtype, 12), _x((B, S, d), dtype, 13)
    made = []

    def maker(nums, *rest):  # counts the one node's VJPs
        made.append(nums)
        return _attention_vjp(nums, *rest)

    for mask in (None, onp.arange(S)[None] < onp.array([[S], [5], [8]])):
        one = lambda q, k, v: attention(q, k, v, h, mask=mask)  # noqa: E731
        two = lambda q, k, v: attend(attention_weights(q, k, h, mask), v)  # noqa: E731
        defvjp_argnums(_attention_node, maker)
        try:
            (Zf, gf, _), (Zt, gt, _) = _vjp_pair(one, two, (Q, K, V), argnums, dtype)
        finally:
            defvjp_argnums(_attention_node, _attention_vjp)
        onp.testing.assert_array_equal(Zf, Zt)
        for a, b in zip(gf, gt):
            assert a.dtype == onp.dtype(dtype)
            onp.testing.assert_array_equal(a, b)
        (_, gc, _), (_, gr, _) = _vjp_pair(one, lambda q, k, v: attention_composed(q, k, v, h, mask=mask),
                                           (Q, K, V), argnums, dtype)
        for a, b in zip(gc, gr):
            _close(a, b, dtype, "∂L through the one-node attention")
    assert made == [argnums, argnums]  # the traced call was the one node


def test_one_node_attention_with_a_cotangent_of_another_dtype_has_the_bits_of_its_two_nodes():
    """A float64 cotangent on float32 attention: the one node falls back to the two nodes' VJPs."""
    from autograd import make_vjp

    from minipeft.nn.attention import attend
    B, T, S, d, h = 2, 5, 6, 8, 2
    Q, K, V = _x((B, T, d), "float32", 14), _x((B, S, d), "float32", 15), _x((B, S, d), "float32", 16)
    G = _x((B, T, d), "float64", 17)
    got = make_vjp(lambda q, k, v: attention(q, k, v, h), (0, 1, 2))(Q, K, V)[0](G)
    want = make_vjp(lambda q, k, v: attend(attention_weights(q, k, h), v), (0, 1, 2))(Q, K, V)[0](G)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        onp.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("B,T,S,d,h,prefix", [(1, 3, 7, 4, 1, 0), (2, 5, 9, 12, 3, 0), (3, 9, 4, 8, 2, 0),
                                              (2, 4, 4, 8, 2, 3), (0, 5, 6, 8, 2, 0), (0, 5, 6, 8, 2, 2),
                                              (2, 5, 35, 8, 2, 0), (2, 4, 31, 8, 2, 3), (2, 3, 40, 80, 2, 0)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_node_attention_on_odd_shapes_equals_the_composed_attention(dtype, B, T, S, d, h, prefix):
    """The traced one-node attention (T ≠ S, h = 1, batch 1, prefix keys, an empty batch; padded
    texts, each with a visible key) = ``attention_composed``, in value and every gradient; the
    cotangent G, which autograd may hand to other nodes too, is not written."""
    Q, K, V = _x((B, T, d), dtype, 21), _x((B, S, d), dtype, 22), _x((B, S, d), dtype, 23)
    mask = onp.arange(S)[None] < (1 + onp.arange(B) % S)[:, None]  # (B, S): 1, 2, … visible keys
    args, nums = (Q, K, V), (0, 1, 2)
    if prefix:
        args, nums = args + (_x((prefix, d), dtype, 24), _x((prefix, d), dtype, 25)), (0, 1, 2, 3, 4)

    def run(f):
        return lambda q, k, v, *p: f(q, k, v, h, prefix=tuple(p) or None, mask=mask)

    (Zf, gf, G), (Zr, gr, _) = _vjp_pair(run(attention), run(attention_composed), args, nums, dtype)
    onp.testing.assert_array_equal(G, onp.random.default_rng(0).standard_normal(G.shape).astype(dtype))  # G unwritten
    for a, b, x, what in [(Zf, Zr, Q, "Z")] + [(a, b, x, "∂L") for a, b, x in zip(gf, gr, args)]:
        assert a.shape == x.shape and a.dtype == onp.dtype(dtype), what
        if a.size:  # (an empty batch: empty Z, ∂Q, ∂K, ∂V; the prefix's gradients are zeros)
            _close(a, b, dtype, f"{what} of the one-node attention")


def test_one_node_attention_vjp_keeps_only_the_inputs_its_gradients_read():
    """∂L/∂V = concat_heads(Aᵀ G) reads A and G only: a VJP built for V alone must not keep Q,
    K or V alive (the activation memory a frozen projection saves, as linear's dX closure)."""
    import gc
    import weakref

    from minipeft.nn.attention import _attention_node, _attention_vjp
    rng = onp.random.default_rng(0)
    Q, K, V = (rng.standard_normal((2, 5, 8)) for _ in range(3))
    Z = _attention_node.fun(Q, K, V, 2, None)
    vjp = _attention_vjp((2,), Z, (Q, K, V, 2, None), {})
    refs = [weakref.ref(a) for a in (Q, K, V)]
    del Q, K, V
    gc.collect()
    assert [r() is None for r in refs] == [True, True, True]
    (dV,) = vjp(onp.ones_like(Z))
    assert dV.shape == (2, 5, 8) and onp.isfinite(dV).all()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_transposed_operand_is_copied_exactly_where_the_rule_says(dtype):
    """``_transposed``: a C-contiguous copy of each head's Kᵀ (or Vᵀ) when d_h ≤ _NN_MAX_DH and
    S ≥ _NN_MIN_KEYS (OpenBLAS's plain kernel then pays for the copy), the transposed view
    otherwise; the same numbers either way, and the products agree with the view's."""
    At = importlib.import_module("minipeft.nn.attention")  # (minipeft.nn.attention is also a function's name)
    for S, d_h, copied in [(At._NN_MIN_KEYS, At._NN_MAX_DH, True), (At._NN_MIN_KEYS - 1, 8, False),
                           (64, At._NN_MAX_DH + 1, False), (100, 4, True)]:
        X = _x((2, 3, S, d_h), dtype, 30)
        Xt = At._transposed(X)
        assert Xt.shape == (2, 3, d_h, S) and Xt.flags.c_contiguous == copied and (Xt.base is None) == copied
        onp.testing.assert_array_equal(Xt, X.swapaxes(-1, -2))
        Q = _x((2, 3, 7, d_h), dtype, 31)
        _close(onp.matmul(Q, Xt), onp.matmul(Q, X.swapaxes(-1, -2)), dtype, "Q Kᵀ with the copied Kᵀ")

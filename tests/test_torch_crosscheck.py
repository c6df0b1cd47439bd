"""Forward and gradients against PyTorch on the same weights (skips without torch:
install it with `python -m pip install -e ".[crosscheck]"`)."""
import numpy as onp
import pytest

import minipeft as mp
from conftest import images, randomize
from minipeft import tree

torch = pytest.importorskip("torch")


def torch_forward(P, x, cfg):
    """The same ViT written with torch ops; P: dict path -> leaf tensor."""
    F = torch.nn.functional
    B = x.shape[0]
    g, p = cfg.image_size // cfg.patch, cfg.patch
    patches = x.reshape(B, cfg.channels, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, -1)
    e = lambda k: P[("embed", k)]  # noqa: E731
    Z = torch.cat([e("cls").expand(B, 1, -1), patches @ e("W").T + e("b")], 1) + e("pos")
    for i in range(cfg.N):
        q = lambda *k: P[("blocks", i) + k]  # noqa: E731
        h1 = F.layer_norm(Z, (cfg.d,), q("ln1", "gamma"), q("ln1", "beta"), cfg.eps)
        heads = lambda t: t.reshape(B, -1, cfg.h, cfg.d_h).transpose(1, 2)  # noqa: E731
        Q, K, V = (heads(F.linear(h1, q("attn", "W_" + n), q("attn", "b_" + n))) for n in "qkv")
        A = torch.softmax(Q @ K.transpose(-1, -2) / cfg.d_h ** 0.5, -1)
        Zc = (A @ V).transpose(1, 2).reshape(B, -1, cfg.d)
        Z = Z + F.linear(Zc, q("attn", "W_o"), q("attn", "b_o"))
        h2 = F.layer_norm(Z, (cfg.d,), q("ln2", "gamma"), q("ln2", "beta"), cfg.eps)
        M = F.gelu(F.linear(h2, q("mlp", "W_1"), q("mlp", "b_1")), approximate="tanh")
        Z = Z + F.linear(M, q("mlp", "W_2"), q("mlp", "b_2"))
    cls = F.layer_norm(Z, (cfg.d,), P[("ln_f", "gamma")], P[("ln_f", "beta")], cfg.eps)[:, 0]
    return F.linear(cls, P[("head", "W")], P[("head", "b")])


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_forward_loss_and_every_gradient_agree_with_torch(tiny_cfg, dtype, rtol):
    p = randomize(mp.init_params(tiny_cfg, 0, dtype), scale=0.2)
    x, y = images(tiny_cfg, 4, dtype=dtype), onp.array([0, 1, 2, 1])
    th, ph = mp.split(p, lambda path, leaf: True)
    loss, g = mp.value_and_grad(lambda t: mp.loss(t, ph, x, y, tiny_cfg), th)
    P = {q: torch.tensor(a, requires_grad=True) for q, a in tree.leaves_with_paths(p)}
    logits = torch_forward(P, torch.tensor(x), tiny_cfg)
    onp.testing.assert_allclose(mp.forward(p, x, tiny_cfg), logits.detach().numpy(), rtol=rtol, atol=rtol)
    tl = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    tl.backward()
    onp.testing.assert_allclose(loss, tl.item(), rtol=rtol)
    for q, a in tree.leaves_with_paths(g):
        assert a.dtype == onp.dtype(dtype)
        onp.testing.assert_allclose(a, P[q].grad.numpy(), rtol=rtol * 10, atol=rtol, err_msg=tree.path_str(q))

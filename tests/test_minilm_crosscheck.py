"""all-MiniLM-L6-v2 live against transformers' BertModel (the crosscheck extra; skipped
without torch/transformers): outputs on the same local weights, and the gradient of a loss
w.r.t. LoRA's A and B against torch autograd through a LoRA written into BertModel."""
import dataclasses

import numpy as onp
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import minipeft as mp  # noqa: E402
from minipeft.methods import method_class  # noqa: E402
from minipeft.models import minilm as M  # noqa: E402

#: importing transformers and building BertModel takes ~20 s here: run with -m slow
pytestmark = pytest.mark.slow

SENTENCES = ["A short one.", "Parameter-efficient fine-tuning adapts large pretrained models cheaply.",
             "Why?", "Prefix tuning prepends keys and values at every layer."]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def bert():
    model = transformers.BertModel.from_pretrained(str(M.model_dir()), attn_implementation="eager")
    return model.double().eval()


def _inputs(tok):
    e = tok.encode(SENTENCES)
    return e, {"input_ids": torch.tensor(e.ids), "token_type_ids": torch.tensor(e.type_ids),
               "attention_mask": torch.tensor(e.mask)}


def test_live_outputs_match_bert_model(minilm, bert):
    params, cfg, tok = minilm("float64")
    e, inputs = _inputs(tok)
    assert (e.mask == 0).any()
    with torch.no_grad():
        r = bert(**inputs)
    trace = {}
    pooled = mp.features(params, onp.asarray(e), cfg, trace=trace)
    real = e.mask.astype(bool)
    assert onp.abs(trace["hidden"][-1] - r.last_hidden_state.numpy())[real].max() <= 1e-10
    assert onp.abs(pooled - r.pooler_output.numpy()).max() <= 1e-10


class _TorchLoRA(torch.nn.Module):
    """h = x W₀ᵀ + b + (α/r)(x Aᵀ)Bᵀ around a frozen nn.Linear: LoRA written independently in torch."""

    def __init__(self, base, A, B, scale):
        super().__init__()
        self.base, self.scale = base, scale
        self.A = torch.nn.Parameter(torch.tensor(A))
        self.B = torch.nn.Parameter(torch.tensor(B))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T


def test_lora_gradients_match_torch_autograd(minilm, bert):
    """L = Σ_b c_b · mean-pool(X_N)_b with LoRA (r = 4, α = 8) on W_q and W_v of every
    block, B ≠ 0 so both ∂L/∂A and ∂L/∂B are non-trivial: every gradient to 1e-9 relative."""
    params, cfg, tok = minilm("float64")
    cfg = dataclasses.replace(cfg, pool="mean")
    params = {k: v for k, v in params.items() if k != "pooler"}
    lora = method_class("lora")(r=4, alpha=8.0, targets=("q", "v"))
    p = mp.attach(params, [lora], cfg, seed=0)
    rng = onp.random.default_rng(0)
    for blk in p["lora"]["blocks"]:
        for t in blk.values():
            t["B"] = 0.05 * rng.standard_normal(t["B"].shape)
    e, inputs = _inputs(tok)
    c = rng.standard_normal((len(SENTENCES), cfg.d))

    theta, phi = mp.split(p, mp.trainable([lora], train_head=False))
    value, grads = mp.value_and_grad(
        lambda th: onp.sum(mp.features(mp.combine(th, phi), onp.asarray(e), cfg, [lora]) * c), theta)

    import copy
    model = copy.deepcopy(bert)
    for q in model.parameters():
        q.requires_grad_(False)
    mods = {}
    for ell, layer in enumerate(model.encoder.layer):
        sa = layer.attention.self
        for t, attr in (("q", "query"), ("v", "value")):
            th = p["lora"]["blocks"][ell][t]
            mods[(ell, t)] = _TorchLoRA(getattr(sa, attr), th["A"], th["B"], lora.scaling)
            setattr(sa, attr, mods[(ell, t)])
    h = model(**inputs).last_hidden_state
    m = inputs["attention_mask"].double()[..., None]
    loss = ((h * m).sum(1) / m.sum(1) * torch.tensor(c)).sum()
    loss.backward()
    assert abs(float(value) - loss.item()) <= 1e-10 * (1 + abs(loss.item()))
    for (ell, t), mod in mods.items():
        for k in ("A", "B"):
            want = getattr(mod, k).grad.numpy()
            got = grads["lora"]["blocks"][ell][t][k]
            assert onp.abs(got - want).max() <= 1e-9 * (1 + onp.abs(want).max()), (ell, t, k)

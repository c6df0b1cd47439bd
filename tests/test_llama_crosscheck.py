"""minipeft's Llama configuration against transformers' ``LlamaForCausalLM`` (the crosscheck
extra; skipped without torch/transformers): a small random model with grouped-query
attention, RoPE base 100,000 and a tied head, its weights copied into minipeft's layout
(``models.llama.from_state_dict``), logits on every position compared — float32 within 1e-5,
float64 within 1e-10 — also with right padding, and the KV cache's logits against the
model's ``past_key_values`` path.

transformers computes RMSNorm and the rotary angles in float32 whatever the model's dtype
(``LlamaRMSNorm.forward`` casts to float32; the rotary embedding calls ``.float()``). For the
float64 comparison the test replaces those two forwards by the same formulas in the input's
dtype (written here in torch, independently of minipeft); float32 uses transformers as is.
"""
import numpy as onp
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import minipeft as mp  # noqa: E402
from minipeft.models import llama  # noqa: E402

pytestmark = pytest.mark.slow

SIZES = dict(d=48, h=6, n_kv=2, N=3, d_ff=80, vocab=97, max_len=64, eps=1e-5, rope_base=100000.0)


def _hf_model(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hc = LlamaConfig(vocab_size=SIZES["vocab"], hidden_size=SIZES["d"], intermediate_size=SIZES["d_ff"],
                     num_hidden_layers=SIZES["N"], num_attention_heads=SIZES["h"],
                     num_key_value_heads=SIZES["n_kv"], max_position_embeddings=SIZES["max_len"],
                     rms_norm_eps=SIZES["eps"], rope_theta=SIZES["rope_base"], tie_word_embeddings=True,
                     attention_bias=False, mlp_bias=False, hidden_act="silu", attn_implementation="sdpa")
    model = LlamaForCausalLM(hc)
    with torch.no_grad():  # norms at their init (ones) would hide a misplaced gain
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.mul_(5.0)  # std 0.1: far from a near-linear model
    return model.to(dtype).eval()


@pytest.fixture
def float64_norms(monkeypatch):
    """RMSNorm and RoPE angles of transformers' Llama in the input's dtype (module docstring)."""
    from transformers.models.llama import modeling_llama as ML

    def rms_forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))

    def rope_forward(self, x, position_ids):
        d_h = SIZES["d"] // SIZES["h"]
        inv = 1.0 / (SIZES["rope_base"] ** (torch.arange(0, d_h, 2, dtype=torch.float64) / d_h))
        ang = position_ids[..., None].to(torch.float64) * inv  # (B, T, d_h/2)
        emb = torch.cat([ang, ang], dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    monkeypatch.setattr(ML.LlamaRMSNorm, "forward", rms_forward)
    monkeypatch.setattr(ML.LlamaRotaryEmbedding, "forward", rope_forward)


def _ours(model, dtype):
    cfg = llama.config(**SIZES)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return llama.from_state_dict(state, cfg, dtype), cfg


IDS = onp.random.default_rng(1).integers(0, SIZES["vocab"], size=(2, 11))


def _compare(dtype, tol):
    tdt = {"float64": torch.float64, "float32": torch.float32}[dtype]
    model = _hf_model(tdt)
    params, cfg = _ours(model, dtype)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(IDS)).logits.numpy()  # (B, n, vocab)
    X, _ = mp.transformer.hidden(params, IDS, cfg)
    ours = mp.transformer.lm_head(params, X)
    assert ours.dtype == onp.dtype(dtype)
    assert onp.abs(ours - ref).max() <= tol
    assert onp.abs(mp.forward(params, IDS, cfg) - ref[:, -1]).max() <= tol  # the last position
    return model, params, cfg


def test_float64_logits_match_llama_for_causal_lm(float64_norms):
    _compare("float64", 1e-10)


def test_float32_logits_match_llama_for_causal_lm():
    _compare("float32", 1e-5)


def test_right_padding_and_kv_cache_match_transformers(float64_norms):
    model, params, cfg = _compare("float64", 1e-10)
    mask = onp.ones_like(IDS)
    mask[1, 7:] = 0  # row 1: 7 real tokens, then padding
    x = onp.stack([IDS, onp.zeros_like(IDS), mask], axis=1)  # (B, 3, n)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(mask)).logits.numpy()
    X, _ = mp.transformer.hidden(params, x, cfg)
    real = mask.astype(bool)
    assert onp.abs(mp.transformer.lm_head(params, X) - ref)[real].max() <= 1e-10
    # the cache: 6 tokens, then 3 and 2 more, against transformers' past_key_values
    cache = mp.transformer.KVCache()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(IDS[:, :6]), use_cache=True)
        past = out.past_key_values
        for a, b in ((0, 6), (6, 9), (9, 11)):
            if a:
                out = model(input_ids=torch.tensor(IDS[:, a:b]), past_key_values=past, use_cache=True)
                past = out.past_key_values
            X, _ = mp.transformer.hidden(params, IDS[:, a:b], cfg, cache=cache)
            assert onp.abs(mp.transformer.lm_head(params, X) - out.logits.numpy()).max() <= 1e-10

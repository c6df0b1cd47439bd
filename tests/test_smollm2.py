"""SmolLM2-135M-Instruct read from its GGUF (models/smollm2.py): the sizes, φ's names and shapes,
W_q/W_k/W_v rows in Hugging Face's layout and the token table against the stored fixture of
transformers' GGUF loader, the Q4_1-block base against the float one, and the tokenizer and
chat template against the fixture's ids (tests/fixtures/make_smollm2_fixture.py) and the
file's own Jinja template. The 98 MB file is read once per test session (conftest.smollm2)."""
import numpy as onp
import pytest

from minipeft.nn import quant as Q

from conftest import needs_smollm2
from digit_pieces import space_before_number

pytestmark = needs_smollm2


@pytest.fixture(scope="module")
def model(smollm2):
    """(float32 φ, hp, tokenizer, Q4_1-block φ) of the real file (conftest's session-wide load)."""
    params, hp, tok = smollm2("float32")
    qparams, _, _ = smollm2("float32", quantized=True)
    return params, hp, tok, qparams


@pytest.fixture(scope="module")
def ref(smollm2_ref):
    return smollm2_ref


def test_sizes_from_the_metadata(model):
    _, hp, _, _ = model
    assert {k: hp[k] for k in ("d", "N", "h", "n_kv", "d_h", "d_ff", "vocab", "max_len")} == \
        {"d": 576, "N": 30, "h": 9, "n_kv": 3, "d_h": 64, "d_ff": 1536, "vocab": 49152, "max_len": 8192}
    assert hp["eps"] == float(onp.float32(1e-5)) and hp["rope_base"] == 100000.0
    assert (hp["bos_id"], hp["eos_id"], hp["pad_id"]) == (1, 2, 2) and hp["license"] == "apache-2.0"


def test_phi_has_the_agreed_names_and_shapes(model):
    params, hp, _, _ = model
    d, kv, dff = 576, 3 * 64, 1536
    assert sorted(params) == ["blocks", "embed", "ln_f"] and len(params["blocks"]) == 30
    assert params["embed"]["W_tok"].shape == (49152, d) and params["ln_f"]["gamma"].shape == (d,)
    for b in params["blocks"]:
        assert {k: v.shape for k, v in b["attn"].items()} == {"W_q": (d, d), "W_k": (kv, d), "W_v": (kv, d),
                                                              "W_o": (d, d)}
        assert {k: v.shape for k, v in b["mlp"].items()} == {"W_g": (dff, d), "W_1": (dff, d), "W_2": (d, dff)}
        assert list(b["ln1"]) == ["gamma"] and list(b["ln2"]) == ["gamma"]
    assert all(leaf.dtype == onp.float32 for leaf in _leaves(params))
    assert sum(leaf.size for leaf in _leaves(params)) == 134_515_008  # 135M, tied head counted once


def _leaves(params):
    from minipeft.tree import leaves_with_paths
    return [leaf for _, leaf in leaves_with_paths(params)]


def test_rows_match_transformers_gguf_loader(model, ref):
    """Block 0's W_q, W_k (un-permuted to rotate_half's layout), W_v, and the token table, as
    transformers laid them out from the same file (the fixture), float32."""
    params, _, _, _ = model
    a = params["blocks"][0]["attn"]
    for name, key in (("W_q", "w0_q"), ("W_k", "w0_k"), ("W_v", "w0_v")):
        assert onp.abs(a[name][:, :8] - ref[key]).max() <= 1e-7 * onp.abs(ref[key]).max(), name
    assert onp.abs(params["embed"]["W_tok"][:4] - ref["w_tok_rows"]).max() <= 1e-7 * onp.abs(ref["w_tok_rows"]).max()


def test_the_block_base_holds_the_same_numbers_in_fewer_bytes(model):
    params, _, _, qp = model
    blocks = [(ell, part, n) for ell in (0, 17, 29) for part, names in
              (("attn", ("W_q", "W_k", "W_v", "W_o")), ("mlp", ("W_g", "W_1", "W_2"))) for n in names]
    for ell, part, n in blocks:
        W = qp["blocks"][ell][part][n]
        assert isinstance(W, Q.Q4_1Blocks)
        assert onp.array_equal(W.dequantize(), params["blocks"][ell][part][n]), (ell, part, n)
        assert W.nbytes * 6 < params["blocks"][ell][part][n].nbytes  # 5 bits vs 32
    E = qp["embed"]["W_tok"]
    assert isinstance(E, Q.Q8_0Blocks)
    ids = onp.array([0, 1, 2, 1000, 49151])
    assert onp.array_equal(Q.embedding_rows(E, ids), params["embed"]["W_tok"][ids])
    x = onp.random.default_rng(0).standard_normal((3, 576)).astype(onp.float32)
    W_q = params["blocks"][5]["attn"]["W_q"]
    assert onp.abs(Q.qlinear(x, qp["blocks"][5]["attn"]["W_q"]) - x @ W_q.T).max() <= 1e-5 * onp.abs(x @ W_q.T).max()


# ------------------------------------------------------------------------------ tokenizer
def test_ids_match_the_fixture(model, ref):
    """Every text: ours = transformers' tokenizer after llama.cpp's digit isolation; and = transformers'
    GGUF tokenizer as it is, except on texts where whitespace comes right before a numeric character
    (it lacks the isolation)."""
    _, _, tok, _ = model
    texts = [str(t) for t in ref["texts"]]
    assert len(texts) >= 10
    differ = []
    for k, text in enumerate(texts):
        ids = tok.encode(text)
        assert ids == ref[f"tok_ref_{k}"].tolist(), text
        if ids != ref[f"tok_hf_{k}"].tolist():
            differ.append(text)
        assert tok.decode(ids) == text
    assert differ and all(space_before_number(t) for t in differ)


def test_batch_encode_equals_one_at_a_time(model, ref):
    _, _, tok, _ = model
    texts = [str(t) for t in ref["texts"]]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_chat_template_matches_the_fixture_and_the_files_jinja(model, ref):
    _, _, tok, _ = model
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert tok.chat_text(chat) == str(ref["chat_text"])
    assert tok.chat_ids(chat) == ref["chat_ids"].tolist()
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(tok.chat_template)
    conversations = [
        chat,
        [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Hello"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Tell me a joke about 2 cats."}],
        [{"role": "assistant", "content": ""}],
    ]
    for msgs in conversations:
        for gen in (True, False):
            assert tok.chat_text(msgs, add_generation_prompt=gen) == \
                template.render(messages=msgs, add_generation_prompt=gen), (msgs, gen)
    ids = tok.chat_ids(chat)
    assert ids[0] == tok.bos_id and ids[-4:] == tok.encode("<|im_start|>assistant\n")
    assert tok.id_to_token(tok.eos_id) == "<|im_end|>" and tok.eos_id in ids


def test_tokenizer_bad_input(model):
    _, _, tok, _ = model
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(["a list"])
    with pytest.raises(TypeError, match="texts must be a list of str"):
        tok.encode_batch("a bare string")
    with pytest.raises(ValueError, match="messages must be a non-empty list"):
        tok.chat_text([])
    with pytest.raises(ValueError, match=r"messages\[1\] must be a dict with role one of"):
        tok.chat_text([{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}])
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        tok.chat_text([{"role": "user", "content": 3}])
    with pytest.raises(ValueError, match="outside the vocabulary 0..49151"):
        tok.decode([5, 49152])

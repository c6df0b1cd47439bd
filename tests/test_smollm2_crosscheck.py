"""SmolLM2-135M-Instruct live against transformers' GGUF loader and tokenizer (the crosscheck
extra; skipped without torch/transformers/the model package): every weight of φ equal, bit
for bit, to the dense model transformers builds from the same file (W_q, W_k un-permuted to
its rotate_half layout), and the tokenizer's ids on real texts with accents, digits,
whitespace runs, emoji, other scripts, code."""
import numpy as onp
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from minipeft.models import gguf_read as G  # noqa: E402
from minipeft.models import smollm2 as S  # noqa: E402

from digit_pieces import digit_pieces, space_before_number  # noqa: E402

#: importing transformers and building its tokenizer and model from the GGUF takes a minute here
pytestmark = pytest.mark.slow

TEXTS = [
    "Hello, world! How are you doing today?",
    "Déjà vu: the naïve café owner in Montréal served crème brûlée; señor Muñoz said «ça va».",
    "Größe, Straße, Ærø, Øresund, Łódź, Dvořák, İstanbul, Þingvellir",
    "Version 3.10.12 was released on 2023-06-06 at 14:30; pi ≈ 3.14159265358979, e = 2.718.",
    "1 12 123 1234 12345 123456 1,000,000 0.5 -42 +7 1e-9 ½ ¾ ² ³ Ⅻ ٣ ७",
    "Whitespace:  two,   three,    four;\ttab\t\ttabs\n\nblank line\r\nCRLF   \n  trailing   ",
    "  12 apples and   7   pears",
    "Emoji 😀😃😄 👍🏽👍🏿 👨‍👩‍👧‍👦 🇯🇵🇺🇸 ❤️ ✨🎉 and text after.",
    "中文测试：你好，世界！ 日本語のテキスト。 한국어 텍스트. Ελληνικά. Русский текст. עברית. العربية.",
    "for i in range(10):\n    print(f\"{i:>3d} -> {i**2}\")  # squares\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
    "It's, we're, they've, I'm, you'll, he'd -- DON'T SHOUT; o'clock.",
    "",
    " ",
    "a" * 300,
]


@pytest.fixture(scope="module")
def ours(smollm2):
    return smollm2("float32")


@pytest.fixture(scope="module")
def hf_tokenizer():
    path = G.model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_tokenizer_ids_match_transformers(ours, hf_tokenizer):
    """Ours = transformers' tokenizer applied after the digit isolation, on every text; = transformers'
    GGUF tokenizer as it is on every text where no whitespace comes right before a numeric
    character (it skips that isolation; there the two may differ, and on some texts here do)."""
    _, _, tok = ours
    differ = []
    for text in TEXTS:
        ids = tok.encode(text)
        ref = [i for p in digit_pieces(text) for i in hf_tokenizer.encode(p, add_special_tokens=False)]
        assert ids == ref, text
        if ids != hf_tokenizer.encode(text, add_special_tokens=False):
            differ.append(text)
        assert tok.decode(ids) == text
    assert differ and all(space_before_number(t) for t in differ)
    msgs = [{"role": "user", "content": "Name 3 colours."}, {"role": "assistant", "content": "Red, green, blue."},
            {"role": "user", "content": "And 2 more?"}]
    for gen in (True, False):
        text = hf_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        assert tok.chat_text(msgs, add_generation_prompt=gen) == text
        assert tok.chat_ids(msgs, add_generation_prompt=gen) == hf_tokenizer.encode(text, add_special_tokens=False)


def test_every_weight_equals_transformers_dense_model(ours):
    params, hp, _ = ours
    path = G.model_path()
    torch.set_num_threads(1)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert model.config.tie_word_embeddings and model.config.rms_norm_eps == hp["eps"]
    names = {("attn", "W_q"): "self_attn.q_proj", ("attn", "W_k"): "self_attn.k_proj",
             ("attn", "W_v"): "self_attn.v_proj", ("attn", "W_o"): "self_attn.o_proj",
             ("mlp", "W_g"): "mlp.gate_proj", ("mlp", "W_1"): "mlp.up_proj", ("mlp", "W_2"): "mlp.down_proj",
             ("ln1", "gamma"): "input_layernorm", ("ln2", "gamma"): "post_attention_layernorm"}
    for ell, b in enumerate(params["blocks"]):
        for (part, leaf), hf in names.items():
            assert onp.array_equal(b[part][leaf], sd[f"model.layers.{ell}.{hf}.weight"]), (ell, part, leaf)
    assert onp.array_equal(params["embed"]["W_tok"], sd["model.embed_tokens.weight"])
    assert onp.array_equal(params["ln_f"]["gamma"], sd["model.norm.weight"])

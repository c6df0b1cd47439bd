"""text/bpe.py: the byte-level BPE against a plain-Python BPE written from its definition (the
bytes as GPT-2's 256 printable characters, llama.cpp's "smollm" pre-tokenizer, the merge with
the lowest rank first, until none applies) on SmolLM2's real vocabulary and merges; and the
constructor's checks of every field."""
import pytest

from minipeft.models import gguf_read as G
from minipeft.text.bpe import BPETokenizer

from digit_pieces import digit_pieces

regex = pytest.importorskip("regex")

GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def byte_alphabet():
    """GPT-2's map byte -> printable character: the printable Latin-1 bytes stand for
    themselves, the other 68 take the characters from U+0100 on, in byte order."""
    keep = [b for b in range(256) if ord("!") <= b <= ord("~") or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def naive_bpe(text, vocab, ranks):
    """ids of text: digits isolated, GPT-2's split, then per piece the lowest-rank merge repeatedly."""
    alphabet = byte_alphabet()
    ids = []
    for piece in digit_pieces(text):
        for word in GPT2_SPLIT.findall(piece):
            parts = [alphabet[b] for b in word.encode("utf-8")]
            while len(parts) > 1:
                pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
                rank, i = min(pairs)
                if rank == float("inf"):
                    break
                parts[i:i + 2] = [parts[i] + parts[i + 1]]
            ids += [vocab[p] for p in parts]
    return ids


@pytest.fixture(scope="module")
def real():
    try:
        f = G.read_gguf(G.model_path())
    except ImportError:
        pytest.skip(f"the model package is missing: {G.INSTALL}")
    tokens, merges = f.meta["tokenizer.ggml.tokens"], f.meta["tokenizer.ggml.merges"]
    tok = BPETokenizer(tokens, merges, f.meta["tokenizer.ggml.token_type"], 1, 2, 2, pre="smollm",
                       chat_template=f.meta["tokenizer.chat_template"], max_len=8192)
    vocab = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
    return tok, vocab, ranks


TEXTS = [
    "Parameter-efficient fine-tuning adapts large pretrained models cheaply.",
    "Naïve café déjà vu — Œuvre, ÆSIR, smørrebrød, Łódź; 東京は晴れ。",
    "In 1969, 600 million people watched; 3.5% of 7,000,000 is 245000.",
    "Whitespace   runs\t\tand\n\n\nnewlines  , then  42 and   7",
    "Emoji 🤖🧠✨ 👩🏾‍💻 🏳️‍🌈 end",
    "I'm sure they'll say it's fine -- don't you think? We've SEEN IT'S",
    "x = [i ** 2 for i in range(10)]  # list comprehension",
]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_a_plain_python_bpe(real, text):
    tok, vocab, ranks = real
    assert tok.encode(text) == naive_bpe(text, vocab, ranks)


def test_special_tokens_stay_whole(real):
    tok, vocab, ranks = real
    ids = tok.encode("Hi<|im_end|>\nok")
    assert ids == naive_bpe("Hi", vocab, ranks) + [2] + naive_bpe("\nok", vocab, ranks)


def tiny(**kw):
    args = dict(tokens=["<s>", "a", "b", "ab", "Ġ"], merges=["a b"], token_types=[3, 1, 1, 1, 1], bos_id=0,
                eos_id=0, pre="gpt2", chat_template=None, max_len=16)
    args.update(kw)
    return BPETokenizer(**args)


def test_tiny_tokenizer_merges_and_refuses_a_chat_without_a_template():
    tok = tiny()
    assert tok.encode("ab a b<s>") == [3, 4, 1, 4, 2, 0]  # Ġ is a separate token here: no "Ġ a" merge
    assert tok.decode([3, 4, 1]) == "ab a"
    with pytest.raises(ValueError, match="no chat template"):
        tok.chat_text([{"role": "user", "content": "a"}])


@pytest.mark.parametrize("kw, match", [
    ({"tokens": ["a", "a"], "merges": [], "token_types": None}, "duplicates"),
    ({"tokens": "ab"}, "tokens must be a list of str"),
    ({"merges": ["a  b"]}, r"merges\[0\] is 'a  b'"),
    ({"merges": ["ab"]}, r"merges\[0\] is 'ab'"),
    ({"merges": [1]}, "merges must be a list of str"),
    ({"token_types": [1, 1]}, "token_types has 2 entries, expected 5"),
    ({"eos_id": 5}, "eos_id"),
    ({"bos_id": -1}, "bos_id"),
    ({"pre": "llama3"}, r"pre-tokenizer \(tokenizer.ggml.pre\) 'llama3' is not one of"),
    ({"chat_template": "{{ messages }}"}, "not a ChatML template"),
    ({"max_len": 0}, "max_len"),
])
def test_constructor_checks_every_field(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)

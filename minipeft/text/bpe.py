"""GPT-2-style byte-level BPE (a decoder LLM's tokenizer), built with the ``tokenizers`` package
from the vocabulary and merges a GGUF file's metadata carries, and the ChatML chat template.

    tok = BPETokenizer(tokens, merges, token_types, bos_id, eos_id, pad_id, pre, chat_template, max_len)
    tok.encode("Hello, world!")                      [19556, 28, 905, 17]   (no BOS is added)
    tok.decode(ids)                                  the text back
    tok.chat_ids([{"role": "user", "content": "Hi"}])   ids of the templated conversation

Byte-level BPE: the text's UTF-8 bytes are written as 256 printable characters (a space is
"Ġ"), cut into pre-tokens by a regular expression, and each pre-token is merged pair by
pair in the order of the merge list (the earlier merge first) until no listed pair is left;
each piece is a token of the vocabulary. Which pre-tokenizer: the file's
``tokenizer.ggml.pre``; "smollm" (llama.cpp's name for SmolLM's) first isolates every digit
(\\p{N}), then applies GPT-2's expression — what SmolLM2's own tokenizer.json does
(``Digits(individual_digits=True)`` then ``ByteLevel``); "gpt2" applies GPT-2's alone.

Tokens of type CONTROL (3; <|endoftext|>, <|im_start|>, <|im_end|>, …) are special: found
whole in any text, never merged into others; USER_DEFINED (4) ones are found whole too.
A control token written in a message's content therefore acts as one, as in transformers'
``apply_chat_template`` (we encode the templated string, as it does).

The chat template (ChatML, SmolLM2's ``tokenizer.chat_template``) applied by hand: for each
message ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; when the first message is not a
system message, the template's default system message comes first; with
add_generation_prompt, ``<|im_start|>assistant\\n`` ends the text (the model writes the
reply and stops at <|im_end|>, the eos id). tests/test_smollm2.py renders the file's Jinja
template and compares.
"""
from __future__ import annotations

import re

from ..validate import int_at_least

#: GGUF token types (llama.cpp's llama_token_type): the two that become added tokens
CONTROL, USER_DEFINED = 3, 4
ROLES = ("system", "user", "assistant")
PRE_TOKENIZERS = ("smollm", "gpt2")
_DEFAULT_SYSTEM = re.compile(r"'<\|im_start\|>system\n(.*?)<\|im_end\|>\n'", re.S)


def _check_list(name: str, value, item_type, n: int | None = None) -> list:
    if not isinstance(value, list) or any(not isinstance(v, item_type) or isinstance(v, bool) for v in value):
        raise ValueError(f"tokenizer: {name} must be a list of {item_type.__name__}")
    if n is not None and len(value) != n:
        raise ValueError(f"tokenizer: {name} has {len(value):,} entries, expected {n:,} (one per token)")
    return value


def _merge_pairs(merges: list) -> list:
    """'a b' -> ("a", "b"); a byte-level token never holds a space, so each merge splits in two."""
    pairs = [tuple(m.split(" ")) for m in merges]
    bad = next((i for i, p in enumerate(pairs) if len(p) != 2 or not all(p)), None)
    if bad is not None:
        raise ValueError(f"tokenizer: merges[{bad}] is {merges[bad]!r}; expected two tokens joined by one space")
    return pairs


class BPETokenizer:
    """Byte-level BPE from a vocabulary and merge list (see the module docstring).

    tokens: the vocabulary, id = position; merges: ["a b", …], highest priority first;
    token_types: one GGUF type per token (or None: none special); bos_id, eos_id, pad_id:
    token ids; pre: "smollm" or "gpt2"; chat_template: the file's Jinja text (or None: no
    chat); max_len: the model's context length. ValueError naming the field on bad input.
    """

    def __init__(self, tokens, merges, token_types=None, bos_id: int = 0, eos_id: int = 0, pad_id: int | None = None,
                 pre: str = "gpt2", chat_template: str | None = None, max_len: int = 2048):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        tokens = _check_list("tokens", tokens, str)
        pairs = _merge_pairs(_check_list("merges", merges, str))
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ValueError(f"tokenizer: tokens has {len(tokens) - len(vocab)} duplicates; each token needs one id")
        types = [1] * len(tokens) if token_types is None else _check_list("token_types", token_types, int, len(tokens))
        ids = {}
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", eos_id if pad_id is None else pad_id)):
            ids[name] = int_at_least(name, value, 0, maximum=len(tokens) - 1)
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"tokenizer: pre-tokenizer (tokenizer.ggml.pre) {pre!r} is not one of {PRE_TOKENIZERS}")
        if chat_template is not None and (not isinstance(chat_template, str) or "<|im_start|>" not in chat_template):
            raise ValueError("tokenizer: chat_template (tokenizer.chat_template) is not a ChatML template "
                             "(<|im_start|>role ... <|im_end|>), the only one minipeft applies")

        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.pre_tokenizer = byte_level if pre == "gpt2" else \
            pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types) if k == CONTROL])
        tok.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, k in zip(tokens, types) if k == USER_DEFINED])
        if tok.get_vocab_size() != len(tokens):
            raise ValueError(f"tokenizer: built {tok.get_vocab_size():,} tokens from {len(tokens):,}")
        self._tok, self.vocab, self.max_len = tok, len(tokens), int_at_least("max_len", max_len, 1)
        self.bos_id, self.eos_id, self.pad_id = ids["bos_id"], ids["eos_id"], ids["pad_id"]
        self.pre, self.chat_template = pre, chat_template
        found = None if chat_template is None else _DEFAULT_SYSTEM.search(chat_template)
        self.default_system = found.group(1) if found else None

    def encode(self, text: str) -> list:
        """The ids of one text (no BOS/EOS added: SmolLM2's add_bos_token is false)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts) -> list:
        """[encode(t) for t in texts], in parallel in the tokenizers package."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of str (a bare str would be cut into characters)")
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special: bool = False) -> str:
        """The text of ``ids`` (bytes joined, then read as UTF-8); special tokens kept unless skip_special."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab]
        if bad:
            raise ValueError(f"decode: ids {bad[:5]} are outside the vocabulary 0..{self.vocab - 1}")
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def token_to_id(self, token: str):
        """The id of a token string (None if it is not in the vocabulary)."""
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        """The token string of id i (the inverse of token_to_id)."""
        return self._tok.id_to_token(int(i))

    def chat_text(self, messages, add_generation_prompt: bool = True) -> str:
        """The ChatML text of a conversation (the module docstring's rule).

        messages: a non-empty list of {"role": one of ROLES, "content": str}.
        """
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template (the file has no tokenizer.chat_template)")
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        parts = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
                raise ValueError(f"messages[{i}] must be a dict with role one of {ROLES} and content a str, "
                                 f"got {msg!r}")
            if i == 0 and msg["role"] != "system" and self.default_system is not None:
                parts.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
            parts.append(f"<|im_start|>{msg['role']}\n{msg['content']}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def chat_ids(self, messages, add_generation_prompt: bool = True) -> list:
        """encode(chat_text(messages, add_generation_prompt))."""
        return self.encode(self.chat_text(messages, add_generation_prompt))

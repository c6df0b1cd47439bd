"""The Rosetta table: every option of minipeft's exportable methods ↔ peft 0.21's config field.

``ROSETTA[method][option] = (peft field, note)``; a peft field of None means peft has no
counterpart (the note says what happens on export). The README's table and the CLI's
aliases (``minipeft train --lora-alpha …``: ``ALIASES``) are both read from here.
"""
from __future__ import annotations

from .bert_names import MODULE

ROSETTA = {
    "lora": {
        "r": ("r", "same meaning; default minipeft 4, peft 8"),
        "alpha": ("lora_alpha", "scale α/r in both; minipeft's default α = r (scale 1), peft's lora_alpha = 8"),
        "targets": ("target_modules", "q k v o mlp1 mlp2 ↔ query key value attention.output.dense "
                                      "intermediate.dense encoder.layer.ℓ.output.dense (peft matches by suffix: "
                                      "'output.dense' alone also catches attention.output.dense); default "
                                      "minipeft q v, peft (BERT) query value"),
        "layers": ("layers_to_transform", "block indices from 0 in both; None = every block"),
        "name": (None, "the key of θ in params; peft's adapter name is 'default'"),
    },
    "ia3": {
        "variant": ("target_modules, feedforward_modules", "notes ↔ query key value, no feedforward; paper ↔ "
                    "key value + encoder.layer.ℓ.output.dense as a feedforward module (peft scales its input = "
                    "l_ff ⊙ GELU(x W₁ᵀ + b₁)); peft's BERT default (key value output.dense) also scales "
                    "attention.output.dense's input: not importable"),
        "name": (None, "the key of θ in params"),
    },
    "prompt": {
        "p": ("num_virtual_tokens", "same meaning; default minipeft 8, peft none (required)"),
        "init_from": ("prompt_tuning_init", "uniform ↔ RANDOM, text ↔ TEXT (peft tokenizes "
                      "prompt_tuning_init_text; minipeft takes init_tokens ids); vocab (random vocabulary rows) has "
                      "no peft counterpart; only the trained P_e is exported"),
        "scale": (None, "init only (U[−scale, scale])"),
        "init_tokens": ("prompt_tuning_init_text", "ids in minipeft, text in peft; init only"),
        "placement": (None, "'peft' is peft's convention (before [CLS], positions 0..p−1, through LN_emb); "
                      "export needs it; default 'minipeft' (after [CLS], no position, after LN_emb)"),
        "name": (None, "the key of θ in params"),
    },
    "prefix": {
        "p": ("num_virtual_tokens", "same meaning"),
        "reparam": ("prefix_projection", "both an MLP tanh(P' W₁ᵀ + b₁) W₂ᵀ + b₂; export needs reparam=False "
                    "(eject first); import of prefix_projection=true reads the table peft saved"),
        "hidden": ("encoder_hidden_size", "the MLP's hidden width; default minipeft 64, peft token_dim"),
        "d_prime": (None, "width of P'; peft's P' has width token_dim = d"),
        "encoder": (None, "'shared' is peft's one MLP for every layer; 'per-layer' (one MLP per layer) has no "
                    "peft field: eject to the table before export"),
        "init_std": (None, "init only"),
        "placement": (None, "'peft': real tokens at positions p..p+n−1, as BertModel with a key/value cache of "
                      "length p; export needs it; default 'minipeft' (positions 0..n−1)"),
        "name": (None, "the key of θ in params"),
    },
}

#: peft's spellings accepted by ``minipeft train``: {method: {flag: minipeft option}}
#: (only where the meaning is the same: prompt_tuning_init_text is text, minipeft's init_tokens ids)
ALIASES = {"lora": {"--lora-alpha": "alpha", "--target-modules": "targets", "--layers-to-transform": "layers"},
           "prompt": {"--num-virtual-tokens": "p"},
           "prefix": {"--num-virtual-tokens": "p", "--prefix-projection": "reparam", "--encoder-hidden-size": "hidden"}}
#: peft's config fields with no minipeft option, and why (named when such a flag is given to train)
PEFT_ONLY = {"lora_dropout": "minipeft has no dropout (its forward is deterministic)",
             "use_dora": "minipeft has no DoRA", "use_rslora": "minipeft scales by α/r only",
             "fan_in_fan_out": "minipeft stores every W as (d_out, d_in)", "bias": "use BitFit alongside",
             "modules_to_save": "the head trains unless --frozen-head"}
#: peft module names accepted for LoRA targets (and minipeft's own); "output.dense" is ambiguous in peft
PEFT_TARGETS = {**{v: k for k, v in MODULE.items() if k != "mlp2"},
                **{v.split(".")[-1]: k for k, v in MODULE.items() if k in ("q", "k", "v")}}


def targets_from_peft(values) -> tuple:
    """LoRA targets in minipeft's names from a mix of minipeft's and peft's (query, attention.self.value, …).
    "output.dense" is refused: in peft it also catches attention.output.dense (say o or mlp2)."""
    out = []
    for v in values:
        if v == "output.dense":
            raise ValueError("targets: 'output.dense' is ambiguous (peft's suffix match also catches "
                             "attention.output.dense); say mlp2 (encoder.layer.ℓ.output.dense) or o")
        out.append(PEFT_TARGETS.get(v, v))
    return tuple(out)


def markdown() -> str:
    """The Rosetta table as markdown (the README's copy is this function's output; a test compares)."""
    lines = ["| method | minipeft option | peft 0.21 field | notes |", "|---|---|---|---|"]
    for m, rows in ROSETTA.items():
        for opt, (field, note) in rows.items():
            lines.append(f"| {m} | `{opt}` | {f'`{field}`' if field else '—'} | {note} |")
    lines.append("| all | (the head) | — | not exported: task_type FEATURE_EXTRACTION has no head; "
                 "`minipeft import` gives a new frozen head |")
    for field, why in PEFT_ONLY.items():
        lines.append(f"| lora | — | `{field}` | {why} |")
    from .peft import NO_PEFT_EQUIVALENT

    for m, why in NO_PEFT_EQUIVALENT.items():
        lines.append(f"| {m} | (the method) | — | export refused: {why} |")
    return "\n".join(lines)

"""BertModel's module names, and peft's rule for which of them an adapter config targets.

minipeft's projection names ↔ the Linear modules of transformers' BertModel (block ℓ):

    q     encoder.layer.ℓ.attention.self.query        W_q  (d, d)
    k     encoder.layer.ℓ.attention.self.key          W_k  (d, d)
    v     encoder.layer.ℓ.attention.self.value        W_v  (d, d)
    o     encoder.layer.ℓ.attention.output.dense      W_o  (d, d)
    mlp1  encoder.layer.ℓ.intermediate.dense          W₁   (d_ff, d)
    mlp2  encoder.layer.ℓ.output.dense                W₂   (d, d_ff)

peft matches a list entry t of ``target_modules`` against a module name m by m == t or
m.endswith("." + t) (so "output.dense" also catches attention.output.dense), a string by
re.fullmatch, then keeps the layers of ``layers_to_transform`` (``matches``). Export
therefore writes names no other module ends with (``export_names``).
"""
from __future__ import annotations

import re

#: minipeft projection -> its BertModel module, relative to encoder.layer.ℓ
MODULE = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "o": "attention.output.dense", "mlp1": "intermediate.dense", "mlp2": "output.dense"}
_PER_LAYER = ("", "attention", "attention.self", "attention.self.query", "attention.self.key",
              "attention.self.value", "attention.self.dropout", "attention.output", "attention.output.dense",
              "attention.output.LayerNorm", "attention.output.dropout", "intermediate", "intermediate.dense",
              "intermediate.intermediate_act_fn", "output", "output.dense", "output.LayerNorm", "output.dropout")
_TOP = ("embeddings", "embeddings.word_embeddings", "embeddings.position_embeddings",
        "embeddings.token_type_embeddings", "embeddings.LayerNorm", "embeddings.dropout", "encoder", "encoder.layer")
_POOLER = ("pooler", "pooler.dense", "pooler.activation")
#: the longest regex target_modules accepted (matched against names of < 60 characters)
MAX_PATTERN = 1000


def module_name(layer: int, target: str) -> str:
    """encoder.layer.ℓ.<module of target>, e.g. (0, "q") -> encoder.layer.0.attention.self.query."""
    return f"encoder.layer.{layer}.{MODULE[target]}"


def modules(n_layers: int) -> list:
    """The names of BertModel's modules (``named_modules()`` minus the root), N blocks, with its pooler."""
    out = list(_TOP)
    for ell in range(n_layers):
        out += [f"encoder.layer.{ell}" + (f".{m}" if m else "") for m in _PER_LAYER]
    return out + list(_POOLER)


def lookup(name: str):
    """(layer, minipeft target) of a BertModel module name, or None when minipeft has no such projection."""
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", name)
    if m is None:
        return None
    for t, mod in MODULE.items():
        if m.group(2) == mod:
            return int(m.group(1)), t
    return None


def export_names(targets, layers, n_layers: int) -> list:
    """``target_modules`` for peft naming exactly ``targets`` × ``layers``: suffixes no other
    module ends with, and each block's full name for mlp2 ("output.dense" alone would also
    catch attention.output.dense); with layers_to_transform = layers for the rest."""
    ells = range(n_layers) if layers is None else layers
    out = []
    for t in targets:
        out += [module_name(ell, t) for ell in ells] if t == "mlp2" else [MODULE[t]]
    return out


def _layer_index(name: str, layers_pattern):
    """The block index peft reads from a module name (the first numbered part; or after layers_pattern)."""
    if not layers_pattern:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        m = None
        for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
            m = re.match(rf"(?:^|.*?\.){re.escape(pattern)}\.(?P<idx>\d+)\.", name)
            if m is not None:
                break
    return None if m is None else int(m.group("idx"))


def matches(name: str, target_modules, layers_to_transform=None, layers_pattern=None) -> bool:
    """Whether peft (0.21, ``check_target_module_exists``) puts an adapter on module ``name``."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    if name in target_modules:
        return True
    if not any(name.endswith("." + t) for t in target_modules):
        return False
    if layers_to_transform is None or (isinstance(layers_to_transform, list) and not layers_to_transform):
        return True
    ell = _layer_index(name, layers_pattern)
    if ell is None:
        return False
    return ell == layers_to_transform if isinstance(layers_to_transform, int) else ell in layers_to_transform


def feedforward(name: str, feedforward_modules) -> bool:
    """Whether peft's (IA)³ treats module ``name`` as feed-forward (scales its input, not its output)."""
    if feedforward_modules is None:
        return False
    if isinstance(feedforward_modules, str):
        return re.fullmatch(feedforward_modules, name) is not None
    return any(name.endswith(t) for t in feedforward_modules)

"""PEFT methods: one file per family, each a frozen dataclass filling some seams.

``REGISTRY`` maps a method's command-line name to "module:Class"; classes load lazily.
"""
from __future__ import annotations

import importlib

from ..validate import one_of
from .base import HOOKS, Method, attach, count_trainable, trainable
from .baselines import FullFineTune, LinearProbe

REGISTRY = {
    "linear-probe": "baselines:LinearProbe",
    "full": "baselines:FullFineTune",
    "prompt": "prompt:PromptTuning",
    "vpt-shallow": "vpt:VPTShallow",
    "vpt-deep": "vpt:VPTDeep",
    "prefix": "prefix:PrefixTuning",
    "adaptformer": "adapter:AdaptFormer",
    "serial-adapter": "adapter:SerialAdapter",
    "lora": "lora:LoRA",
    "bitfit": "bitfit:BitFit",
    "ia3": "ia3:IA3",
    "ssf": "ssf:SSF",
}


def method_class(name: str):
    """The Method subclass registered as ``name`` (ValueError listing the allowed names)."""
    one_of("method", name, sorted(REGISTRY))
    mod, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), cls)


__all__ = ["HOOKS", "Method", "REGISTRY", "FullFineTune", "LinearProbe", "attach", "count_trainable",
           "method_class", "trainable"]

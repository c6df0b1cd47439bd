"""Pure functions of the transformer (equations.md, "Transformer").

What trains are the fused primitives (``primitives.py``); the composed readable forms
of the same equations are in ``reference.py``.
"""
from . import autograd_vjps  # noqa: F401  (re-registers indexing's and reshape's VJPs: they hold shapes, not arrays)
from .attention import attention, merge_heads, prepend, split_heads
from .primitives import cross_entropy, gelu, gelu_erf, layer_norm, linear, log_softmax, softmax

__all__ = [
    "attention", "cross_entropy", "gelu", "gelu_erf", "layer_norm", "linear", "log_softmax",
    "merge_heads", "prepend", "softmax", "split_heads",
]

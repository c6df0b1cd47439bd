"""The frozen backbone: its parameter schema, config, initialisation, forward pass with seams."""
from . import schema
from .config import Config
from .cache import KVCache
from .forward import SEAMS, block, check_model, embed, features, forward, hidden, lm_head, patchify, pool, token_embedding
from .init import init_params, new_head
from .inputs import check_batch, check_labels

__all__ = ["Config", "KVCache", "SEAMS", "block", "check_batch", "check_labels", "check_model", "embed", "features",
           "forward", "hidden", "init_params", "lm_head", "new_head", "patchify", "pool", "schema", "token_embedding"]

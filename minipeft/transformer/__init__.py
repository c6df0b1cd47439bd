"""The frozen backbone: config, initialisation, forward pass with seams."""
from .config import Config
from .forward import SEAMS, block, embed, features, forward, patchify, pool, token_embedding
from .init import cast, init_params, new_head
from .inputs import check_batch, check_labels

__all__ = ["Config", "SEAMS", "block", "cast", "check_batch", "check_labels", "embed", "features",
           "forward", "init_params", "new_head", "patchify", "pool", "token_embedding"]

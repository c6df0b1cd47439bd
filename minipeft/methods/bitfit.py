"""BitFit (equations.md, "BitFit"; Ben Zaken et al. 2022): train only bias terms.

    trainable: b_q, b_k, b_v, b_o (attention), b₁, b₂ (MLP), β of every LayerNorm
               (LN₁, LN₂, and LN_f or, in BERT, the embedding LN; the pooler's and token
               tables' biases are not selected)
    frozen:    every weight matrix and every LayerNorm γ

Scale-and-shift with γ fixed to 1: y = x Wᵀ + b with only b trained. The head (W and
b) trains or not by the usual head flag, counted separately.
n = N·(Σ selected bias widths) (+ d for LN_f's β when "beta" is selected).

Merge. BitFit adds no computation and no θ of its own: the trained biases *are* backbone
leaves, so the merged backbone is params itself. ``attach`` leaves an empty marker at
params[name] (the adapter is attached and not merged); ``merge`` removes it, so a second
merge is refused like every other method's, and ``unmerge`` puts it back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import tree
from ..transformer.schema import linear_width
from ..validate import some_of
from .base import Method

#: bias name -> (module key in a block, width as a function of cfg)
BIASES = {"b_q": "attn", "b_k": "attn", "b_v": "attn", "b_o": "attn", "b_1": "mlp", "b_2": "mlp", "beta": "ln"}
_WIDTH_OF = {"b_q": "q", "b_k": "k", "b_v": "v", "b_o": "o", "b_1": "mlp1", "b_2": "mlp2"}


@dataclass(frozen=True)
class BitFit(Method):
    """Unfreeze the selected biases of every block (and LN_f's β with "beta") ("BitFit").

    The paper's strongest pair is the query bias and the MLP's expanding bias:
    ``BitFit(biases=("b_q", "b_1"))``.
    """

    name: str = "bitfit"
    biases: tuple = field(default=tuple(BIASES), metadata={
        "help": f"which biases train, among {tuple(BIASES)} (beta = every LayerNorm's β)"})

    #: the best validation accuracy among 3e-3, 1e-2, 3e-2 (digits, 10 epochs; benchmarks/reparam_table.py)
    suggested_lr = 3e-2

    def check_options(self):
        """Validate and normalise the options (called by ``Method.__post_init__``)."""
        object.__setattr__(self, "biases", some_of("biases", self.biases, BIASES))

    @property
    def needs_params(self) -> bool:
        """No hook reads θ: forward works with or without the marker."""
        return False

    def check_cfg(self, cfg) -> None:
        """ValueError when the backbone has none of the selected biases: a bias-free model
        (cfg.bias=False, Llama) has no b_*, an RMSNorm (norm='rms') no β. We do not train
        RMSNorm's gain g instead: BitFit's claim is about the additive terms (the paper
        freezes every LayerNorm γ), and g is a scale, the scale half of SSF on the norms
        (method 'ssf' with placements ln1 ln2 ln_f trains it, with its shift)."""
        if not self._present(cfg):
            raise ValueError(f"biases: the backbone has none of {self.biases} (bias={cfg.bias}, norm={cfg.norm!r}; "
                             f"a Llama has no biases and RMSNorm no β), so BitFit has nothing to train; use SSF "
                             f"(scale and shift) or (IA)³ instead")

    def _present(self, cfg) -> tuple:
        """The selected biases this backbone has."""
        return tuple(b for b in self.biases if (b == "beta" and cfg.norm != "rms") or (b != "beta" and cfg.bias))

    def init(self, cfg, params, rng) -> dict:
        """The empty marker {} (the trained biases are backbone leaves); ``check_cfg`` first."""
        self.check_cfg(cfg)
        return {}

    def trains_backbone(self, path) -> bool:
        """b_* leaves of the blocks' attention/MLP, and β of ln1, ln2, ln_f, when selected."""
        # exercise bitfit [2 pts] "BitFit": True for the selected biases (b_q..b_o, b_1, b_2, LN β) only, never W or γ
        leaf = path[-1]
        if leaf not in self.biases:
            return False
        if leaf == "beta":
            return (path[0] == "blocks" and path[2] in ("ln1", "ln2")) or path[0] == "ln_f" or \
                tuple(path[:2]) == ("embed", "ln")
        return path[0] == "blocks" and path[2] == BIASES[leaf]
        # end exercise

    def n_params(self, cfg) -> int:
        """N·Σ widths (d for b_q…b_o, b₂; d_ff for b₁; 2d for the blocks' β) + d per other LN
        with "beta" (LN_f in a pre-LN model, LN_emb when cfg.embed_ln)."""
        self.check_cfg(cfg)
        have = self._present(cfg)
        per_block = sum(2 * cfg.d if b == "beta" else linear_width(cfg, _WIDTH_OF[b]) for b in have)
        other_lns = int(cfg.has_ln_f) + int(cfg.embed_ln)
        return cfg.N * per_block + (other_lns * cfg.d if "beta" in have else 0)

    def merge(self, params) -> dict:
        """The trained biases already sit in the backbone: params without the marker params[name]."""
        self.theta_of(params)
        return tree.without(params, self.name)

    def unmerge(self, params, theta=None) -> dict:
        """params with the marker back (the trained biases stay: they are the adapter)."""
        self.check_merged(params)
        return {**params, self.name: {} if theta is None else theta}

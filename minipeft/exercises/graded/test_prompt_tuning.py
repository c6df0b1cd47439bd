"""Exercise prompt-tuning: Z₀ = [x₀; E₀] → [x₀; P_e; E₀] (equations.md, "Prompt tuning").

The region is ``methods.prompt.insert_after_cls``, which PromptTuning and VPT-Shallow use
at the "tokens" seam. P_e (p, d) is shared over the batch.
"""
import numpy as onp
from autograd import grad

from minipeft.methods.prompt import PromptTuning
from minipeft.methods.vpt import VPTShallow
from exercise_helpers import call, check_close, check_shape, rng, tiny_cfg

HINT = ("[x₀; P; E]: keep the CLS row Z[:, :1] first, then the p prompt rows (the same P for every example "
        "of the batch), then the n input rows Z[:, 1:]; (B, 1+n, d) -> (B, 1+p+n, d), concatenated on axis 1")


def _setup(p=3, B=2, seed=0):
    cfg = tiny_cfg()
    r = rng(seed)
    P = r.standard_normal((p, cfg.d))
    Z = r.standard_normal((B, 1 + cfg.n_patches, cfg.d))
    return cfg, P, Z


def _expected(P, Z):
    rows = []
    for b in range(Z.shape[0]):
        rows.append(onp.stack([Z[b, 0]] + [P[k] for k in range(P.shape[0])] + [Z[b, j] for j in range(1, Z.shape[1])]))
    return onp.stack(rows)


def test_prompts_sit_after_cls():
    for cls in (PromptTuning, VPTShallow):
        for p in (1, 3):
            cfg, P, Z = _setup(p)
            out = call(cls(p=p).on_tokens, {"P": P}, Z, cfg, what=f"{cls.__name__}(p={p}).on_tokens", hint=HINT)
            check_shape(out, (2, 1 + p + cfg.n_patches, cfg.d), f"{cls.__name__}(p={p}).on_tokens output", HINT)
            check_close(out, _expected(P, Z), f"{cls.__name__}(p={p}).on_tokens output", HINT)


def test_gradient_reaches_every_prompt():
    cfg, P, Z = _setup(p=3, B=4, seed=1)
    m = PromptTuning(p=3)
    G = rng(2).standard_normal((4, 1 + 3 + cfg.n_patches, cfg.d))
    hint = ("autograd must differentiate the insertion: np.broadcast_to has no working VJP in autograd (issue "
            "384) — repeat P over the batch with nn.prepend, np.tile, or P[None] + np.zeros((B, 1, 1)); no in-place "
            "writes into a preallocated array")
    g = call(grad(lambda q: onp.sum(G * m.on_tokens({"P": q}, Z, cfg))), P, what="∂L/∂P_e", hint=hint)
    check_close(g, G[:, 1:4].sum(0), "∂L/∂P_e = Σ over the batch of ∂L/∂(prompt rows)", hint)

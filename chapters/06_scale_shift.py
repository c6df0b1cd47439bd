# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Scale and shift: BitFit, (IA)³, SSF
#
# Notes, *SCALE AND SHIFT FINE-TUNING*: "Scale-and-shift methods are a class of PEFT
# techniques that adapt pre-trained models by applying lightweight, trainable affine
# transformations to internal activations … During training only the parameters γ and β
# are learned, while all other model parameters remain frozen. This mechanism is
# conceptually similar to Layer Normalization."
#
# Claims decided here over 5 seeds (paired, the rule of `chapters/README.md`; BitFit's
# were made on BERT, (IA)³'s on T0-3B, SSF's on ViT-B/16; here a 4-layer ViT of 136,906
# numbers, so a verdict speaks for this scale only):
#
# 1. BitFit (all biases) beats the head alone;
# 2. the query bias b_q and the MLP's expanding bias b₁ carry most of BitFit's gain: they
#    beat the complement (all other biases, twice as many numbers);
# 3. (IA)³ as in the paper (l_k, l_v, l_ff) beats the notes' placement (l_q, l_k, l_v);
# 4. SSF beats BitFit (the SSF paper's comparison).
#
# And exactly (to float32 rounding): every merge gives the original architecture.
#
# Budget: 3 epochs of Adam on the 1,000 `digits` training images for 7 models and 5 seeds
# (fewer epochs than `minipeft tour`; its measured wall and CPU time at full budget are in
# the runs table of `chapters/README.md`).

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import minipeft as mp
from minipeft.chapter import plot_arms, setup
from minipeft.merge import merge_methods
from minipeft.methods.bitfit import BitFit
from minipeft.methods.ia3 import IA3
from minipeft.methods.ssf import SSF

# one BLAS thread, Agg figures to $CHAPTER_FIG_DIR (else chapters/figures), the backbone, `digits`
ch = setup(globals().get("__file__"), name="06_scale_shift")
EPOCHS = ch.epochs(3)
ch.budget["epochs"] = EPOCHS
cfg, task = ch.cfg, ch.task
head_params = ch.with_new_head()
X_test = task.test[0]
shapes = lambda t: {path: a.shape for path, a in mp.tree.leaves_with_paths(t)}  # noqa: E731  (order-free)


def run(label, m, lr):
    """Train ``m`` on every seed; check that seed 0's model merges into the original architecture."""
    accs, trained = ch.over_seeds(label, m, lr, EPOCHS, method_numbers=m.n_params(cfg))
    merged, _ = merge_methods(trained[0], [m])
    d = float(np.abs(mp.predict(merged, X_test, cfg) - mp.predict(trained[0], X_test, cfg, [m])).max())
    ch.check(f"{label}: merged = unmerged, same architecture as the backbone (float32)",
             d < 1e-4 and shapes(merged) == shapes(head_params), f"max abs Δ logits = {d:.1e}")
    a = ch.arms[label]
    print(f"{label:26s} {m.n_params(cfg):5,} numbers (+ head 650)  test acc {a['mean']:.3f} "
          f"[{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]")
    return trained


def attention_1_by_hand(params, m, q_out, k_out, ln1_out=lambda x: x):
    """Block 1's attention weights A_1 in plain float64 NumPy, from the frozen arrays and
    method ``m``'s vectors: x = ln1_out(LN₁(X₀)), Q = q_out(x W_qᵀ + b_q), K = k_out(x W_kᵀ + b_k),
    per head softmax(Q Kᵀ / sqrt(d_h)). Returns (A_1 by hand, minipeft's traced A_1), (B, h, T, T) each."""
    tr = {}
    mp.forward(params, X_test[:8], cfg, [m], trace=tr)
    bp = {k: {n: np.asarray(v, dtype=np.float64) for n, v in d.items()} for k, d in params["blocks"][0].items()
          if k in ("ln1", "attn")}
    X0 = np.asarray(tr["hidden"][0], dtype=np.float64)  # (B, T, d): the input of block 1
    mu, var = X0.mean(-1, keepdims=True), X0.var(-1, keepdims=True)
    x = ln1_out((X0 - mu) / np.sqrt(var + cfg.eps) * bp["ln1"]["gamma"] + bp["ln1"]["beta"])
    Q = q_out(x @ bp["attn"]["W_q"].T + bp["attn"]["b_q"])
    K = k_out(x @ bp["attn"]["W_k"].T + bp["attn"]["b_k"])
    B, T, d = Q.shape
    d_h = d // cfg.h
    A = np.zeros((B, cfg.h, T, T))
    for hd in range(cfg.h):  # one head at a time: its d_h columns of Q and K
        S = Q[..., hd * d_h:(hd + 1) * d_h] @ np.swapaxes(K[..., hd * d_h:(hd + 1) * d_h], 1, 2) / np.sqrt(d_h)
        E = np.exp(S - S.max(-1, keepdims=True))
        A[:, hd] = E / E.sum(-1, keepdims=True)
    return A, np.asarray(tr["attn"][0], dtype=np.float64)

# %% [markdown]
# ## The family (equations.md, "Scale and shift")
#
#     y = γ ⊙ x + β      γ scale, β shift, both learnable vectors; everything else frozen.
#
# ## BitFit (equations.md, "BitFit")
#
# Notes, *BIAS-TERMS FINE-TUNING (BITFIT)*: "an extremely sparse PEFT method that updates
# only the bias terms of a model while keeping all weight matrices frozen … a simplified
# version of scale-and-shift methods: … BitFit keeps the scaling factor fixed and
# optimizes only the shift." Trainable: b_q, b_k, b_v, b_o; b₁, b₂; β of every LayerNorm.
# BitFit adds no hook at all: it only changes which backbone leaves train
# (`trains_backbone`, from `minipeft/methods/bitfit.py`):

# %%
print(inspect.getsource(BitFit.trains_backbone))
ch.over_seeds("linear probe", mp.LinearProbe(), 1e-2, EPOCHS)
for label, m in (("BitFit, all biases", BitFit()),
                 ("BitFit, b_q + b_1", BitFit(biases=("b_q", "b_1"))),
                 ("BitFit, all but b_q, b_1", BitFit(biases=("b_k", "b_v", "b_o", "b_2", "beta")))):
    run(label, m, BitFit.suggested_lr)
ch.compare("BitFit beats the head alone", "BitFit, all biases", "linear probe", source="BitFit paper (BERT)")
ch.compare("b_q and b_1 carry most of the gain: they beat the other biases", "BitFit, b_q + b_1",
           "BitFit, all but b_q, b_1", source="BitFit paper (BERT)")

# %% [markdown]
# ## (IA)³ (equations.md, "(IA)³")
#
# Notes, *(IA)³*: "adapts a pre-trained model by introducing learnable scaling factors
# directly into the internal components of the attention mechanism … applying learnable
# scaling vectors (l_q, l_k, l_v) to the Query, Key, and Value representations":
#
#     Attn = softmax( (l_q ⊙ Q)(l_k ⊙ K)ᵀ / sqrt(d_h) ) (l_v ⊙ V)
#
# The paper scales K, V and the MLP's hidden activation instead (no l_q):
#
#     MLP(x) = (l_ff ⊙ GELU(x W₁ᵀ + b₁)) W₂ᵀ + b₂
#
# All l start at 1 (step 0 = the backbone). Merge: l ⊙ (x Wᵀ + b) = x (diag(l) W)ᵀ + l ⊙ b
# folds l_q, l_k, l_v into their projections; l_ff folds into the columns of W₂.
#
# The two hooks that are (IA)³, from `minipeft/methods/ia3.py`: `on_linear` rescales a
# projection's output, `on_ff_hidden` the MLP's hidden activation.

# %%
print(inspect.getsource(IA3.on_linear))
print(inspect.getsource(IA3.on_ff_hidden))
ia3_trained = {}
for label, m in (("(IA)³ notes: l_q l_k l_v", IA3(variant="notes")),
                 ("(IA)³ paper: l_k l_v l_ff", IA3(variant="paper"))):
    ia3_trained[label] = run(label, m, IA3.suggested_lr)

# %% [markdown]
# One adapted layer by hand: block 1's attention weights of the trained notes-variant
# model (seed 0), softmax((l_q ⊙ Q)(l_k ⊙ K)ᵀ / sqrt(d_h)) per head in NumPy, against the
# weights minipeft's forward pass traced.

# %%
m_ia3, prm = IA3(variant="notes"), ia3_trained["(IA)³ notes: l_q l_k l_v"][0]
l1 = {k: np.asarray(v, dtype=np.float64) for k, v in prm[m_ia3.name]["blocks"][0].items()}
A_hand, A_mp = attention_1_by_hand(prm, m_ia3, lambda Q: l1["l_q"] * Q, lambda K: l1["l_k"] * K)
gap = float(np.abs(A_hand - A_mp).max())
ch.check("(IA)³ notes: block 1's attention weights by hand in NumPy equal minipeft's (float32 rounding)",
         gap < 1e-5, f"max abs Δ A_1 = {gap:.1e}; mean abs(l_q − 1) = {np.abs(l1['l_q'] - 1).mean():.3f}")
ch.compare("(IA)³: the paper's placement beats the notes'", "(IA)³ paper: l_k l_v l_ff", "(IA)³ notes: l_q l_k l_v",
           source="(IA)³ paper (T0-3B)")

# %% [markdown]
# ## SSF (equations.md, "SSF")
#
# Notes, *SCALING & SHIFTING FEATURES (SSF)*: "applies an SSF-ADA layer following
# Multi-Head Self-Attention (MSA), Feed-Forward Networks (FFN), and Layer Normalization":
# y = γ ⊙ x + β after W_q, W_k, W_v, W_o, W₁, W₂, LN₁, LN₂ and LN_f; init γ ~ N(1, 0.02²),
# β ~ N(0, 0.02²). *Reparameterization for Inference*: after a linear layer
#
#     y = γ ⊙ (x Wᵀ + b) + β = x (diag(γ) W)ᵀ + (γ ⊙ b + β)  →  W' = diag(γ) W,  b' = γ ⊙ b + β
#
# and after a LayerNorm: γ'_LN = γ ⊙ γ_LN, β'_LN = γ ⊙ β_LN + β. So the merged model has
# exactly the original architecture: same tree of arrays, same shapes, same cost.
#
# The hooks that are SSF, from `minipeft/methods/ssf.py`: `on_linear` after a projection,
# `on_after` after a LayerNorm.

# %%
print(inspect.getsource(SSF.on_linear))
print(inspect.getsource(SSF.on_after))
ssf = SSF()
ssf_trained = run("SSF, all placements", ssf, SSF.suggested_lr)

# %% [markdown]
# By hand again, for SSF's seed-0 model: x = γ_ln1 ⊙ LN₁(X₀) + β_ln1, then
# Q = γ_q ⊙ (x W_qᵀ + b_q) + β_q and K likewise, block 1's attention weights in NumPy
# against minipeft's.

# %%
g1 = {k: {n: np.asarray(v, dtype=np.float64) for n, v in gb.items()}
      for k, gb in ssf_trained[0][ssf.name]["blocks"][0].items()}
A_hand, A_mp = attention_1_by_hand(ssf_trained[0], ssf, lambda Q: g1["q"]["gamma"] * Q + g1["q"]["beta"],
                                   lambda K: g1["k"]["gamma"] * K + g1["k"]["beta"],
                                   lambda x: g1["ln1"]["gamma"] * x + g1["ln1"]["beta"])
gap = float(np.abs(A_hand - A_mp).max())
ch.check("SSF: block 1's attention weights by hand in NumPy equal minipeft's (float32 rounding)", gap < 1e-5,
         f"max abs Δ A_1 = {gap:.1e}")
ch.compare("SSF beats BitFit", "SSF, all placements", "BitFit, all biases", source="SSF paper (ViT-B/16)")
merged, _ = merge_methods(ssf_trained[0], [ssf])
print("merged params keys:", sorted(merged), "vs backbone:", sorted(head_params))


def gamma_dev(th):
    dev = {p: np.mean([np.abs(np.asarray(th["blocks"][ell][p]["gamma"]) - 1).mean() for ell in range(cfg.N)])
           for p in ssf.placements if p != "ln_f"}
    dev["ln_f"] = float(np.abs(np.asarray(th["ln_f"]["gamma"]) - 1).mean())
    return dev


devs = [gamma_dev(prm[ssf.name]) for prm in ssf_trained]
places = list(devs[0])
dev = np.array([[d[p] for p in places] for d in devs])  # (seeds, placements)
print("SSF after training, mean |γ − 1| per placement (mean over seeds):",
      {p: round(float(v), 3) for p, v in zip(places, dev.mean(0))})

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
labels = [k for k in ch.arms if ch.arms[k]["metric"] == "test accuracy"]
y = np.arange(len(labels))
for i, k in enumerate(labels):
    a = ch.arms[k]
    axes[0].errorbar([a["mean"]], [i], xerr=[[a["mean"] - a["ci"][0]], [a["ci"][1] - a["mean"]]], marker="o",
                     capsize=4, color="gray" if k == "linear probe" else f"C{i}")
axes[0].set(yticks=y, yticklabels=[f"{k} ({ch.arms[k]['trainable']:,})" for k in labels],
            xlabel=f"test accuracy, digits ({EPOCHS} epochs; mean, 95 % CI, {len(ch.seeds)} seeds)",
            title="Scale and shift (trainable numbers, head incl.)")
lo = min(ch.arms[k]["ci"][0] for k in labels)
hi = max(ch.arms[k]["ci"][1] for k in labels)
axes[0].set_xlim(max(0.0, lo - 0.03), min(1.0, hi + 0.03))
axes[0].invert_yaxis()
axes[0].tick_params(axis="y", labelsize=9)
axes[0].grid(axis="x", alpha=0.3)
axes[1].bar(places, dev.mean(0), yerr=dev.std(0, ddof=1) if len(dev) > 1 else None, capsize=3)
axes[1].set(ylabel="mean |γ − 1| after training (± sd over seeds)", title="SSF: how far each scale moved from 1")
axes[1].tick_params(axis="x", labelsize=9)
_ = ch.save(fig, "06_scale_shift.png")

# %%
ch.finish()

# %% [markdown]
# ## What it shows
#
# The verdict and check lines above decide the claims at this scale; the numbers are in
# `chapters/results/06_scale_shift.json` and `chapters/README.md`.
#
# - BitFit trains a few per cent of the backbone, all of it biases; the second verdict says
#   whether the paper's "b_q and b₁ matter most" holds here, against the other biases.
# - (IA)³: the notes' and the paper's placements train a similar number of vectors; the
#   verdict says whether the paper's choice shows at this scale.
# - SSF, at every placement, against BitFit: the SSF paper's comparison.
# - Merging: BitFit's biases already are backbone leaves; (IA)³ and SSF fold into the
#   weights. Every merged model has exactly the backbone's arrays and shapes — the same
#   architecture and inference cost, as the notes say.

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
# # 4. Adapters: AdaptFormer (parallel) and serial adapters
#
# Notes, *Adapter-based Fine-Tuning*: "a PEFT approach that modifies the internal
# structure of a model by introducing small learnable modules (e.g., MLPs) into the
# layers of a pretrained model." *AdaptFormer*: "it replaces the standard MLP block in
# Transformers with an AdaptMLP module, which consists of a dual-branch architecture:
# Frozen Branch … Trainable Branch: a low-rank bottleneck adapter." *THE BOTTLENECK
# ARCHITECTURE*: down-projection, ReLU, up-projection.
#
# Budget: 11 runs of 5 epochs of Adam on the 1,000 `digits` training images (about half
# a minute to a minute on a laptop CPU).

# %%
import matplotlib.pyplot as plt
import numpy as np

import minipeft as mp
from minipeft.chapter import setup
from minipeft.methods.adapter import AdaptFormer, SerialAdapter

# one BLAS thread, Agg figures to $CHAPTER_FIG_DIR (else chapters/figures), the backbone, `digits`
ch = setup(globals().get("__file__"))
EPOCHS = 5
cfg, task = ch.cfg, ch.task
head_params = ch.with_new_head()

# %% [markdown]
# ## AdaptFormer (equations.md, "Adapters: AdaptFormer")
#
# The adapter reads the same input as the frozen MLP, LN₂(X'_ℓ):
#
#     X̃_ℓ = ReLU(LN₂(X'_ℓ) W_downᵀ + b_down) W_upᵀ + b_up     W_down ∈ R^{d̂×d}, W_up ∈ R^{d×d̂}
#     X_ℓ  = X'_ℓ + MLP(LN₂(X'_ℓ)) + s · X̃_ℓ
#
# Trainable per adapter, with biases: 2·d·d̂ + d + d̂ (d = 64, d̂ = 8: 1,096; 4 layers:
# 4,384). W_up and the biases start at zero, so at step 0 the adapted model *is* the
# pretrained one. Checked below, bit for bit.

# %%
X = task.test[0]
base_logits = mp.predict(head_params, X, cfg)
for s in (0.1, 4.0):
    a = AdaptFormer(s=s)
    p0 = mp.attach(head_params, [a], cfg, seed=0)
    same = np.array_equal(mp.predict(p0, X, cfg, [a]), base_logits)
    print(f"AdaptFormer s={s}: {a.n_params(cfg):,} numbers; step-0 logits equal the backbone's bit for bit: {same}")

# %% [markdown]
# ## The scaling factor s
#
# Notes, *SCALING FACTOR*: "s = 0: the adapter is effectively disabled; the model
# behaves like the original pre-trained version … AdaptFormer achieves peak results with
# s = 0.1. Using larger values (e.g., s ≥ 1) can lead to unstable or degraded
# performance."
#
# We sweep s ∈ {0, 0.1, 1, 4} at two learning rates (10⁻², the suggested one, and 10⁻³),
# head trainable, same seed. A linear probe (head only) is the reference: with s = 0 every
# adapter gradient carries the factor s, so nothing but the head trains and the run
# should be the linear probe exactly.

# %%
lp_params, lp_hist, lp_acc = ch.train(mp.LinearProbe(), 1e-2, EPOCHS)  # fresh head, seed 0, head trainable
print(f"linear probe (lr 1e-2): test acc {lp_acc:.3f}")
S = [0.0, 0.1, 1.0, 4.0]
LRS = [1e-2, 1e-3]
sweep, curves = {}, {}
for lr in LRS:
    for s in S:
        a = AdaptFormer(s=s)
        params, hist, acc = ch.train(a, lr, EPOCHS)
        sweep[lr, s], curves[lr, s] = acc, hist["loss"]
        steps = len(hist["loss"]) // EPOCHS
        last = np.mean(hist["loss"][-steps:])
        spike = max(hist["loss"][steps:])
        extra = ""
        if s == 0 and lr == 1e-2:
            extra = (f"   (= linear probe: logits max |Δ| "
                     f"{np.abs(mp.predict(params, X, cfg, [a]) - mp.predict(lp_params, X, cfg)).max():.1e})")
        print(f"lr {lr:g}  s={s:<4g} test acc {acc:.3f}  last-epoch loss {last:.3f}  max step loss after epoch 1 "
              f"{spike:.3f}{extra}")

# %% [markdown]
# ## Serial vs parallel (equations.md, "Adapters: serial")
#
# Notes, *SERIAL ADAPTERS vs PARALLEL ADAPTERS*: "Parallel adapters: the adapter branch
# operates alongside the original layer and receives the same input … Serial adapters:
# the adapter module is inserted sequentially within the computation flow, where the
# input to each adapter is the output of the preceding network module."
#
#     A(h) = h + ReLU(h W_downᵀ + b_down) W_upᵀ + b_up
#
# Houlsby: after the attention output projection and after the MLP (two per block);
# Pfeiffer: after the MLP only. Near-identity init (W ~ N(0, 10⁻⁶)).

# %%
ser = {}
for label, m in (("parallel: AdaptFormer s=0.1", AdaptFormer(s=0.1)),
                 ("serial: Houlsby (attn + MLP)", SerialAdapter(placement="houlsby")),
                 ("serial: Pfeiffer (MLP)", SerialAdapter(placement="pfeiffer"))):
    if "AdaptFormer" in label:  # trained in the sweep above
        acc = sweep[1e-2, 0.1]
    else:
        _, _, acc = ch.train(m, 1e-2, EPOCHS)
    ser[label] = (m.n_params(cfg), acc)
    print(f"{label:30s} {m.n_params(cfg):6,} numbers (+ head 650)  test acc {acc:.3f}  (lr 1e-2)")
per_token = 2 * cfg.d * 8
print(f"inference: each adapter adds 2·d·d̂ = {per_token:,} multiply-adds per token; the frozen block has "
      f"4d² + 2·d·d_ff = {4 * cfg.d ** 2 + 2 * cfg.d * cfg.d_ff:,} (+ attention scores). Not mergeable (the ReLU).")

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
for lr, mk in zip(LRS, ("o", "s")):
    axes[0].plot(range(len(S)), [sweep[lr, s] for s in S], marker=mk, label=f"AdaptFormer, lr {lr:g}")
axes[0].axhline(lp_acc, color="gray", ls=":", label="linear probe")
axes[0].set(xticks=range(len(S)), xticklabels=[f"s={s:g}" for s in S], ylabel="test accuracy (digits)",
            title=f"AdaptFormer scale s ({EPOCHS} epochs)")
axes[0].legend(fontsize=7)
for s in S:
    c = np.convolve(curves[1e-2, s], np.ones(8) / 8, mode="valid")
    axes[1].plot(c, label=f"s={s:g}")
axes[1].set(xlabel="step", ylabel="training loss (moving mean of 8)", title="lr 1e-2: training loss")
axes[1].legend(fontsize=7)
labels = list(ser)
axes[2].bar(range(len(labels)), [ser[k][1] for k in labels], color=["C0", "C1", "C2"])
for i, k in enumerate(labels):
    axes[2].text(i, ser[k][1] + 0.005, f"{ser[k][1]:.3f}\n{ser[k][0]:,} nums", ha="center", fontsize=7)
axes[2].set(xticks=range(len(labels)), xticklabels=[k.split(":")[1].strip() for k in labels],
            ylim=(0.6, 1.0), ylabel="test accuracy", title="parallel vs serial (lr 1e-2)")
axes[2].tick_params(axis="x", labelsize=7)
ch.save(fig, "04_adapters.png")
print("figures:", ch.figures())

# %% [markdown]
# ## What it shows (measured; deterministic on one machine)
#
# In our run (5 epochs on `digits`, seed 0):
#
# - Step 0 is the backbone exactly (W_up = 0), for any s; and s = 0 trains exactly the
#   linear probe (test acc 0.728 both, logits max |Δ| = 0): the notes' "s = 0: the
#   adapter is effectively disabled" holds to the bit.
# - The rest of the notes' claim does **not** reproduce at toy scale. At lr 10⁻² test
#   accuracy is 0.728 / 0.774 / 0.834 / 0.830 for s = 0 / 0.1 / 1 / 4; at lr 10⁻³ it
#   is 0.578 / 0.630 / 0.678 / 0.718, growing with s. s = 4 is not unstable here: its
#   training loss is the lowest throughout and shows no spikes. A likely reason: under
#   Adam each step moves W_up by about lr whatever s is, so the branch's output moves by
#   about s·lr — s acts as a learning-rate multiplier for the adapter, and with a short
#   schedule on a small model a larger s simply adapts faster. The paper's s = 0.1
#   optimum was found on ViT-B with long schedules, where that trade-off differs.
#   `benchmarks/adapter_table.py` runs the same sweep for 10 epochs.
# - Serial vs parallel at lr 10⁻²: Pfeiffer (one serial adapter after each MLP, 4,384
#   numbers) 0.840, Houlsby (two per block, 8,768) 0.824, parallel AdaptFormer s = 0.1
#   (4,384) 0.774 — but AdaptFormer with s = 1 (0.834) matches the serial ones, so the
#   gap is the scale, not the placement.
# - Neither kind merges into the weights (the ReLU): each adapter costs 2·d·d̂ = 1,024
#   extra multiply-adds per token at inference, about 3 % of a block's 32,768.

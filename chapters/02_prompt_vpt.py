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
# # 2. Prompt tuning and Visual Prompt Tuning (VPT-Shallow, VPT-Deep)
#
# Notes, *PROMPT TUNING*: "Prompt Tuning is one of the most lightweight PEFT methods …
# all original model parameters … remain frozen. Instead of updating the model's
# internal weights, a small number of learnable tokens are added to the input prompt.
# During the training process, only these specific prompt tokens (and optionally the
# final classification layer) are updated via gradient descent."
#
# *Visual Prompt Tuning (VPT)*: "a variant of prompt tuning designed for vision models …
# Two variants exist: Shallow, Deep."
#
# Claims decided here over 5 seeds (paired: seed s draws the prompts' and the head's init
# and the data order, the same for every arm), each with the rule of `chapters/README.md`:
#
# 1. prompt tuning beats the head alone (the linear probe) — the notes' premise;
# 2. VPT-Deep beats VPT-Shallow — the notes' "deep vs input-only conditioning", the VPT
#    paper's headline (on ViT-B/16 with 24 benchmarks; here a 4-layer ViT of 136,906
#    numbers, so a verdict speaks for this scale only);
# 3. trained prompts steer the CLS row's attention more than random prompts do — the
#    notes' "prompts directly steer the model's internal attention dynamics".
#
# Budget: 4 epochs of Adam (batch 64) on the 1,000 `digits` training images, for each of
# 4 models and 5 seeds (fewer epochs than `minipeft tour`, to fit five seeds in the budget
# of about three minutes of CPU; its measured wall and CPU time at full budget are in the
# runs table of `chapters/README.md`).

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import minipeft as mp
from minipeft.chapter import acc_limits, plot_arms, setup, show_maps
from minipeft.methods.layout import key_columns, token_rows
from minipeft.methods.prompt import PromptTuning
from minipeft.methods.vpt import VPTDeep, VPTShallow, vpt_bound

# one BLAS thread, Agg figures to $CHAPTER_FIG_DIR (else chapters/figures), the backbone, `digits`
ch = setup(globals().get("__file__"), name="02_prompt_vpt")
EPOCHS = ch.epochs(4)
ch.budget["epochs"] = EPOCHS
cfg, backbone, task = ch.cfg, ch.backbone, ch.task

# %% [markdown]
# ## Prompt tuning (equations.md, "Prompt tuning")
#
# A learnable P_e ∈ R^{p×d} joins the input embeddings X_e ∈ R^{n×d}:
#
#     [P_e; X_e] ∈ R^{(p+n)×d}  → frozen transformer → Head
#
# Trainable: P_e (p·d numbers) and the head. Our model reads the CLS row, so the prompts
# go right after CLS: Z₀ = [x₀; E₀] → [x₀; P_e; E₀] (the "tokens" seam). That is the
# whole method; its hook, from `minipeft/methods/prompt.py`:

# %%
print(inspect.getsource(PromptTuning.on_tokens))

# %% [markdown]
# ## VPT (equations.md, "VPT")
#
# VPT-Shallow: prompts P = {p^k ∈ R^d} enter the first layer only; later layers carry
# their outputs Z:
#
#     [x₁, Z₁, E₁] = L₁([x₀, P, E₀])
#     [x_ℓ, Z_ℓ, E_ℓ] = L_ℓ([x_{ℓ-1}, Z_{ℓ-1}, E_{ℓ-1}])      ℓ = 2..N
#     y = Head(x_N)
#
# VPT-Deep: a fresh, layer-specific set at every layer; the layer's prompt outputs are
# discarded and replaced (its hook is `on_layer_in`, printed below):
#
#     [x_ℓ, _, E_ℓ] = L_ℓ([x_{ℓ-1}, P_{ℓ-1}, E_{ℓ-1}])      ℓ = 1..N
#
# Trainable: p·d (shallow), N·p·d (deep), plus the head. VPT initialises P uniformly in
# [−v, v], v = sqrt(6 / (channels·patch_area + d)). Prompt tuning and VPT-Shallow are the
# same equation; they differ only in the init (U[−0.5, 0.5] vs U[−v, v]).

# %%
print(inspect.getsource(VPTDeep.on_layer_in))
p = 8
models = {
    "linear probe": (mp.LinearProbe(), 1e-2),
    f"prompt tuning p={p}": (PromptTuning(p=p), PromptTuning.suggested_lr),
    f"VPT-Shallow p={p}": (VPTShallow(p=p), VPTShallow.suggested_lr),
    f"VPT-Deep p={p}": (VPTDeep(p=p), VPTDeep.suggested_lr),
}
print(f"VPT init bound v = sqrt(6 / ({cfg.patch_dim} + {cfg.d})) = {vpt_bound(cfg):.3f}")
trained = {}
for label, (m, lr) in models.items():
    accs, params = ch.over_seeds(label, m, lr, EPOCHS)
    trained[label] = (params, m)
    a = ch.arms[label]
    print(f"{label:20s} trainable {a['trainable']:6,} (head incl.)  lr {lr:g}  test acc {a['mean']:.3f} "
          f"[{a['ci'][0]:.3f}, {a['ci'][1]:.3f}] over seeds {ch.seeds}")

# %%
ch.compare("prompt tuning beats the linear probe", f"prompt tuning p={p}", "linear probe", source="notes")
ch.compare("VPT-Deep beats VPT-Shallow", f"VPT-Deep p={p}", f"VPT-Shallow p={p}", source="notes; VPT paper (ViT-B/16)")

# %% [markdown]
# ## Why prompt tokens work: the role of attention
#
# Notes: "Although the core model weights remain frozen, prompt tokens modify the
# model's behavior through the attention mechanism. Each attention layer processes both
# the original tokens and the learnable prompt tokens, allowing the prompts to influence
# how tokens attend to one another … Attention weights: changing how tokens attend to
# other tokens."
#
# We measure both halves of that sentence. `forward(..., trace=t)` gives every layer's
# weights A_ℓ (B, h, T, S); `token_rows` / `key_columns` say which query rows and which
# key columns belong to CLS, to the prompts and to the real patches. For 200 test images,
# per layer and per seed:
#
# 1. the attention mass the real tokens (patch queries) put on the prompt keys,
#    Σ_{k ∈ prompts} A[i, k], averaged over patches i, heads and images;
# 2. how much the CLS row's attention over the *real* keys (CLS and patches, renormalised)
#    moved away from the frozen model's: the total variation ½ Σ_j |a_j − a⁰_j|
#    (0 = same distribution, 1 = disjoint), averaged over heads and images.
#
# For contrast, VPT-Deep's prompts as drawn by each seed before any training.

# %%
X = task.test[0][:200]
n_in = cfg.n_patches


def attn(params, methods):
    t = {}
    mp.forward(params, X, cfg, methods, trace=t)
    return [np.asarray(A, dtype=np.float64) for A in t["attn"]]


frozen = attn(backbone, [])  # A⁰_ℓ, (B, h, 17, 17): no prompts


def attention_stats(params, m):
    """Per layer: patch rows' mass on the prompt keys; TV of the CLS row over the real keys vs frozen."""
    rows, cols = token_rows([m], n_in), key_columns([m], n_in)
    on_prompts, tv = [], []
    for A, A0 in zip(attn(params, [m]), frozen):
        on_prompts.append(A[:, :, rows["input"], cols[m.name]].sum(-1).mean())
        real = np.concatenate([A[:, :, 0, cols["cls"]], A[:, :, 0, cols["input"]]], axis=-1)  # (B, h, 17)
        real = real / real.sum(-1, keepdims=True)
        tv.append(0.5 * np.abs(real - A0[:, :, 0, :]).sum(-1).mean())
    return np.array(on_prompts), np.array(tv)  # (N,), (N,)


untrained = VPTDeep(p=p)
analysed = {label: v for label, v in trained.items() if label != "linear probe"}
analysed[f"VPT-Deep p={p}, untrained"] = ([mp.attach(ch.with_new_head(s), [untrained], cfg, seed=s) for s in ch.seeds],
                                          untrained)
stats = {}
for label, (params_list, m) in analysed.items():
    per_seed = [attention_stats(prm, m) for prm in params_list]
    stats[label] = (np.stack([a for a, _ in per_seed]), np.stack([t for _, t in per_seed]))  # (seeds, N) each
    print(f"{label}:")
    print("   patches' mass on prompts per layer (mean over seeds)", np.round(stats[label][0].mean(0), 3))
    print("   CLS attention over real keys, TV from frozen, per layer", np.round(stats[label][1].mean(0), 3))
ch.record(f"VPT-Deep p={p}: TV layer {cfg.N}", stats[f"VPT-Deep p={p}"][1][:, -1], metric="CLS attention TV vs frozen")
ch.record(f"VPT-Deep p={p} untrained: TV layer {cfg.N}", stats[f"VPT-Deep p={p}, untrained"][1][:, -1],
          metric="CLS attention TV vs frozen")
ch.compare("trained prompts move the CLS attention more than random ones", f"VPT-Deep p={p}: TV layer {cfg.N}",
           f"VPT-Deep p={p} untrained: TV layer {cfg.N}", source="notes")

# %% [markdown]
# One part is exact, not statistical. With input-level prompts (prompt tuning,
# VPT-Shallow), the real tokens' queries and keys in layer 1 are those of the frozen model:
# extra keys only rescale each row's softmax, so the CLS row's attention over the real keys,
# renormalised, is the frozen one (to float32 rounding) in layer 1, whatever the prompts.

# %%
for label in (f"prompt tuning p={p}", f"VPT-Shallow p={p}"):
    worst = float(stats[label][1][:, 0].max())
    ch.check(f"{label}: layer-1 CLS attention over the real keys is the frozen one", worst < 1e-5,
             f"max TV over seeds = {worst:.1e}")

# %% [markdown]
# As a yardstick for the TV numbers: the CLS rows of two *different* test images in the
# frozen model differ by this much on average (same layer, same head).

# %%
yard = np.array([0.5 * np.abs(A0[1:, :, 0] - A0[:-1, :, 0]).sum(-1).mean() for A0 in frozen])
print("frozen model, CLS rows of neighbouring images, TV per layer", np.round(yard, 3))

# %%
layers = np.arange(1, cfg.N + 1)
fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
acc_labels = list(models)
plot_arms(axes[0], ch.arms, acc_labels, ls="none", color="C0")
axes[0].set(xticks=range(len(acc_labels)), ylabel="test accuracy (digits)", ylim=acc_limits(ch.arms, acc_labels),
            title=f"Accuracy, mean and 95 % CI over {len(ch.seeds)} seeds")
axes[0].set_xticklabels([k.replace(" p=", "\np=") for k in acc_labels], fontsize=9)
for label, (mass, tv) in stats.items():
    style = {"color": "gray", "ls": "--"} if "untrained" in label else {}
    for ax, v in ((axes[1], mass), (axes[2], tv)):
        ax.errorbar(layers, v.mean(0), yerr=v.std(0, ddof=1) if len(v) > 1 else None, marker="o", capsize=3,
                    label=label, **style)
axes[2].plot(layers, yard, color="k", ls=":", label="frozen: image vs next image")
axes[1].set(xlabel="layer ℓ", ylabel="mass on the prompt keys", xticks=layers, ylim=(0, 1),
            title="Patch queries' attention on the prompts")
axes[2].set(xlabel="layer ℓ", ylabel="TV distance", xticks=layers, ylim=(0, 1),
            title="CLS attention over real keys vs frozen")
axes[1].legend(fontsize=8, loc="upper left"), axes[2].legend(fontsize=8, loc="upper left")
fig.suptitle("Prompts (p = 8) on digits; right panels: mean ± sd over seeds, mean over heads and 200 images", fontsize=10)
_ = ch.save(fig, "02_prompt_attention.png")

# %% [markdown]
# The CLS row's attention over the 16 patches in the last layer (mean over heads), for one
# test image and seed 0: frozen model vs each prompted model (patches only, renormalised),
# on one colour scale.

# %%
side = cfg.image_size // cfg.patch
fig, axes = plt.subplots(1, 2 + len(trained) - 1, figsize=(2.6 * (1 + len(trained)) + 1.2, 3.0), layout="constrained")
axes[0].imshow(X[0, 0], cmap="gray", vmin=0, vmax=1)
axes[0].set_title(f"input (label {task.test[1][0]})", fontsize=9)
axes[0].set_xticks([]), axes[0].set_yticks([])
a0 = frozen[-1][0, :, 0, 1:].mean(0)
maps, titles = [(a0 / a0.sum()).reshape(side, side)], ["frozen"]
for label, (params_list, m) in trained.items():
    if label == "linear probe":
        continue
    a = attn(params_list[0], [m])[-1][0, :, 0, key_columns([m], n_in)["input"]].mean(0)
    maps.append((a / a.sum()).reshape(side, side))
    titles.append(label)
show_maps(fig, axes[1:], maps, titles, "share of the CLS row's\npatch attention")
fig.suptitle(f"Layer {cfg.N}, mean over heads: where CLS looks among the patches", fontsize=10)
_ = ch.save(fig, "02_cls_maps.png")

# %%
ch.finish()

# %% [markdown]
# ## What it shows
#
# The verdict lines above decide the three claims at this scale; their numbers are in
# `chapters/results/02_prompt_vpt.json` and in the tables of `chapters/README.md`. How to
# read them:
#
# - Eight input tokens plus the head against the head alone: whether prompts add anything
#   over a linear probe on a domain-shifted task.
# - VPT-Deep trains 4× the prompt numbers of VPT-Shallow. The VPT paper's advantage of deep
#   prompts was measured on ViT-B/16 with long schedules; with 4 layers and a few epochs
#   the interval says whether it shows here.
# - Attention: extra keys cannot reorder the real tokens' attention in layer 1 (the exact
#   check); from layer 2 on the real tokens carry what they read from the prompts, and the
#   CLS row's attention moves. Random prompts move it too; the last verdict says whether
#   training moves it further. The dotted line (two different images in the frozen model)
#   gives the scale of those distances.
#
# Text models: the same `PromptTuning` runs on the text front (`Config(front="text")`),
# where `init_from="vocab"` draws P_e from rows of W_tok and `init_from="text"` from the
# embeddings of given tokens (e.g. the class-label words), as the paper recommends; see
# `minipeft/methods/prompt.py` and `tests/test_conditioning.py`. This chapter, on images,
# has no vocabulary to draw from.

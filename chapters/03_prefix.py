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
# # 3. Prefix tuning
#
# Notes, *Prefix Tuning*: "Prefix Tuning … achieves this by inserting learnable
# parameters directly into the attention mechanism … introduces trainable key and value
# vectors of length p, which are concatenated to the original keys and values at every
# layer … The number of output tokens remains unchanged because the output count depends
# on the number of queries, not the number of keys or values."
#
# *Prompt vs Prefix Tuning*: prompt tuning is the "simplest approach … operates only in
# the input embedding space"; prefix tuning is "more expressive: injects learned
# key/value vectors at each attention layer … can outperform prompt tuning on complex
# tasks".
#
# Claims decided here over 5 seeds (paired, the rule of `chapters/README.md`):
#
# 1. prefix tuning beats prompt tuning at an equal budget of trainable numbers, at two
#    budgets — the notes' "more expressive … can outperform prompt tuning"; Li & Liang made
#    the claim on GPT-2 and BART (hundreds of millions of numbers), here the backbone has
#    136,906, so a verdict speaks for this scale only;
# 2. the paper's reparameterisation P = MLP(P') trains better than the plain table (their
#    "fix for unstable training"), with the prefix encoder shared across layers and with
#    one encoder per layer (the notes: "shared across layers or … layer-specific").
#
# And measured: prefix's "slightly higher overhead" than prompt tuning at equal p, and what
# the reparameterisation costs in trainable numbers.
#
# Budget: 3 epochs of Adam on the 1,000 `digits` training images for each of 6 models and 5
# seeds. The larger budget is 2,048 numbers (prompt p = 32 vs prefix p = 4; the 64-token
# prompt of an earlier version cost most of the chapter's time); its measured wall and CPU
# time at full budget are in the runs table of `chapters/README.md`.

# %%
import inspect
import time

import matplotlib.pyplot as plt
import numpy as np

import minipeft as mp
from minipeft.chapter import acc_limits, plot_arms, setup
from minipeft.methods.prefix import PrefixTuning, unified_view
from minipeft.methods.layout import key_columns
from minipeft.methods.prompt import PromptTuning

# one BLAS thread, Agg figures to $CHAPTER_FIG_DIR (else chapters/figures), the backbone, `digits`
ch = setup(globals().get("__file__"), name="03_prefix")
EPOCHS = ch.epochs(3)
ch.budget["epochs"] = EPOCHS
cfg, task = ch.cfg, ch.task

# %% [markdown]
# ## The equations (equations.md, "Prefix tuning")
#
# At every layer ℓ, learnable P_k^ℓ, P_v^ℓ ∈ R^{p×d} are concatenated to the keys and
# values; the queries are untouched:
#
#     K' = [P_k; X W_kᵀ + b_k],   V' = [P_v; X W_vᵀ + b_v]
#     Attn(Q, K', V') = softmax(Q K'ᵀ / sqrt(d_h)) V'      ∈ R^{n×d}
#
# Trainable: 2·N·p·d numbers (plus the head). The hook, from `minipeft/methods/prefix.py`:

# %%
print(inspect.getsource(PrefixTuning.on_kv))

# %% [markdown]
# First the shapes: with p = 8, the keys grow from 17 to 25 rows, the output does not.

# %%
prefix = PrefixTuning(p=8)
params0 = mp.attach(ch.with_new_head(), [prefix], cfg, seed=0)
t = {}
mp.forward(params0, task.test[0][:4], cfg, [prefix], trace=t)
print("attention weights per layer (B, h, T queries, S keys):", [tuple(A.shape) for A in t["attn"]])
print("block outputs X_ℓ:", [tuple(H.shape) for H in t["hidden"][1:]])
ch.check("prefix p=8: keys grow by p, queries and outputs keep their T rows",
         all(A.shape[-1] == A.shape[-2] + 8 for A in t["attn"]) and all(H.shape[1] == 17 for H in t["hidden"][1:]),
         f"A_ℓ {tuple(t['attn'][0].shape)}, X_ℓ {tuple(t['hidden'][1].shape)}")

# %% [markdown]
# ## Prompt vs prefix at equal budget
#
# Two budgets of trainable numbers (the head's 650 comes on top of each):
#
# - 512 numbers: prompt tuning p = 8 (p·d) vs prefix p = 1 (2·N·p·d = 2·4·1·64);
# - 2,048 numbers: prompt tuning p = 32 vs prefix p = 4.
#
# Same epochs, same seeds, each at its suggested learning rate.

# %%
runs = {
    "prompt p=8": PromptTuning(p=8), "prefix p=1": PrefixTuning(p=1),
    "prompt p=32": PromptTuning(p=32), "prefix p=4": PrefixTuning(p=4),
}
trained = {}
for label, m in runs.items():
    accs, trained[label] = ch.over_seeds(label, m, m.suggested_lr, EPOCHS, method_numbers=m.n_params(cfg))
    a = ch.arms[label]
    print(f"{label:12s} method numbers {m.n_params(cfg):5,}  test acc {a['mean']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]")
ch.compare("prefix beats prompt at 512 numbers", "prefix p=1", "prompt p=8", source="notes; Li & Liang (GPT-2, BART)")
ch.compare("prefix beats prompt at 2,048 numbers", "prefix p=4", "prompt p=32", source="notes; Li & Liang (GPT-2, BART)")

# %% [markdown]
# ## The overhead (notes: prefix tuning has "slightly higher overhead")
#
# At equal length p, prefix tuning trains 2·N = 8 times the numbers of prompt tuning and
# adds p keys and values in every layer; prompt tuning adds p tokens to the sequence, which
# every layer then carries as queries too (attention is O(T·S), the MLP O(T)). Timed: the
# best of 3 rounds of 10 training steps each (batch 64), the four methods interleaved in
# every round, at p = 8 and at the chapter's larger budget. The clock is this process's CPU
# time (`time.process_time`; one BLAS thread): on a shared, loaded machine wall-clock time
# measures the other jobs as much as this one.

# %%
def step_times(methods, rounds=3, steps=10):
    """{label: the least CPU seconds per training step over ``rounds`` rounds of ``steps`` steps}."""
    start = {label: mp.attach(ch.with_new_head(), [m], cfg, seed=0) for label, m in methods.items()}
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(rounds):
        for label, m in methods.items():  # interleaved: each round times every method once
            t0 = time.process_time()
            mp.fit(start[label], task.train, cfg, [m], steps=steps, lr=m.suggested_lr, seed=0, progress=False)
            best[label] = min(best[label], (time.process_time() - t0) / steps)
    return best


timed = step_times({"prompt p=8": PromptTuning(p=8), "prefix p=8": PrefixTuning(p=8),
                    "prompt p=32": runs["prompt p=32"], "prefix p=4": runs["prefix p=4"]})
for label, secs in timed.items():
    print(f"{label:12s} {1e3 * secs:6.1f} ms of CPU per training step (best of 3 rounds of 10)")
print(f"equal p = 8: prefix/prompt step time {timed['prefix p=8'] / timed['prompt p=8']:.2f}; "
      f"trainable numbers {PrefixTuning(p=8).n_params(cfg):,} vs {PromptTuning(p=8).n_params(cfg):,}")
print(f"equal budget 2,048: prefix p=4 / prompt p=32 step time {timed['prefix p=4'] / timed['prompt p=32']:.2f}")

# %% [markdown]
# ## The reparameterisation P = MLP(P') (equations.md, "Prefix tuning")
#
# Notes: the prefixes can be "generated dynamically by a small prefix encoder (often an
# MLP), which can be shared across layers or remain layer-specific". minipeft's
# `PrefixTuning(reparam=True)` is the shared form of the paper's code: one MLP with a tanh
# hidden layer maps each row of a short P' ∈ R^{p×d'} to all layers' keys and values at once,
#
#     [P_k^1, P_v^1, …, P_k^N, P_v^N] (row i) = tanh(P'_i W_1ᵀ + b_1) W_2ᵀ + b_2 ∈ R^{2·N·d}
#
# The layer-specific form, `PrefixTuning(reparam=True, encoder="per-layer")`, gives every
# layer ℓ its own MLP, all reading the same P':
#
#     [P_k^ℓ, P_v^ℓ] (row i) = tanh(P'_i W_1^ℓᵀ + b_1^ℓ) W_2^ℓᵀ + b_2^ℓ ∈ R^{2·d}
#
# After training only P is kept: `eject` evaluates the MLP once and returns the plain
# table, with identical outputs. The encoder, from `minipeft/methods/prefix.py`:

# %%
print(inspect.getsource(PrefixTuning.table))

# %% [markdown]
# Layer 1's prefix by hand in NumPy, row by row, from the per-layer encoder's θ (at init,
# seed 0), against minipeft's table:

# %%
per_layer = PrefixTuning(p=4, reparam=True, encoder="per-layer")
th = mp.attach(ch.with_new_head(), [per_layer], cfg, seed=0)[per_layer.name]
th = {k: np.asarray(v, dtype=np.float64) for k, v in th.items()}
P_k1 = np.stack([np.tanh(th["W_1"][0] @ th["P_prime"][i] + th["b_1"][0]) @ th["W_2"][0].T + th["b_2"][0]
                 for i in range(per_layer.p)])[:, :cfg.d]  # (p, d): the first d of each row's 2·d
gap_hand = float(np.abs(P_k1 - np.asarray(per_layer.table(th, cfg.N, cfg.d)[0][0])).max())
ch.check("per-layer encoder: layer 1's P_k by hand in NumPy equals minipeft's table (float64)", gap_hand < 1e-12,
         f"max abs Δ = {gap_hand:.1e}")

# %% [markdown]
# What it costs, said plainly: either encoder trains far more numbers than the table it
# produces.

# %%
direct = runs["prefix p=4"]
encoders = {"prefix p=4, reparam": PrefixTuning(p=4, reparam=True), "prefix p=4, reparam per-layer": per_layer}
X = task.test[0][:200]
for label, rep in encoders.items():
    print(f"{label}: trains {rep.n_params(cfg):,} numbers ({100 * rep.n_params(cfg) / cfg.n_params:.1f} % of the "
          f"backbone) to produce a table of {direct.n_params(cfg):,} ({100 * direct.n_params(cfg) / cfg.n_params:.1f} %)"
          f", {rep.n_params(cfg) / direct.n_params(cfg):.1f} times as many")
    accs, trained[label] = ch.over_seeds(label, rep, rep.suggested_lr, EPOCHS, method_numbers=rep.n_params(cfg))
    pr = trained[label][0]
    ejected, plain = rep.eject(pr)
    gap = float(np.abs(mp.predict(ejected, X, cfg, [plain]) - mp.predict(pr, X, cfg, [rep])).max())
    ch.check(f"eject ({rep.encoder} encoder): the plain table gives the reparameterised model's logits", gap < 1e-5,
             f"max abs Δ logits = {gap:.1e} (float32); table {mp.count(ejected[plain.name]):,} numbers")
ch.compare("reparameterised prefix beats the plain table", "prefix p=4, reparam", "prefix p=4",
           source="Li & Liang (GPT-2, BART)")
ch.compare("reparameterised prefix, one encoder per layer, beats the plain table", "prefix p=4, reparam per-layer",
           "prefix p=4", source="Li & Liang (GPT-2, BART); notes (layer-specific encoder)")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
pairs = [("prompt p=8", "prefix p=1"), ("prompt p=32", "prefix p=4")]
for i, kind in enumerate(("prompt", "prefix")):
    labels = [pair[i] for pair in pairs]
    plot_arms(axes[0], ch.arms, labels, x=np.arange(2) + (i - 0.5) * 0.2, ls="none", label=kind, color=f"C{i}")
axes[0].set(xticks=[0, 1], xticklabels=["512 numbers", "2,048 numbers"], xlim=(-0.5, 1.5),
            ylim=acc_limits(ch.arms, [k for pair in pairs for k in pair]), ylabel="test accuracy (digits)",
            title=f"Prompt vs prefix at equal budget ({EPOCHS} epochs; mean, 95 % CI, {len(ch.seeds)} seeds)")
axes[0].legend(fontsize=9)
lbl = ["prefix p=4", "prefix p=4, reparam", "prefix p=4, reparam per-layer"]
plot_arms(axes[1], ch.arms, lbl, ls="none", color="C1")
axes[1].set(xticks=[0, 1, 2], xticklabels=[f"table\n{direct.n_params(cfg):,}",
                                           f"shared MLP(P')\n{encoders[lbl[1]].n_params(cfg):,}",
                                           f"MLP per layer\n{encoders[lbl[2]].n_params(cfg):,}"], xlim=(-0.5, 2.5),
            ylim=acc_limits(ch.arms, lbl), xlabel="method numbers trained",
            title="Prefix p=4: plain vs reparameterised")
axes[1].tick_params(axis="x", labelsize=9)
shared = (min(axes[0].get_ylim()[0], axes[1].get_ylim()[0]), max(axes[0].get_ylim()[1], axes[1].get_ylim()[1]))
for ax in axes:  # one accuracy scale for both panels (prefix p=4 is in both)
    ax.set_ylim(*shared)
_ = ch.save(fig, "03_prompt_vs_prefix.png")

# %% [markdown]
# ## The unified view (He et al. 2022)
#
# Split the softmax over K' = [P_k; K] into its two blocks of columns. Per head and query
# row q:
#
#     Attn(q, K', V') = (1 − λ) Attn(q, K, V) + λ softmax(q P_kᵀ / sqrt(d_h)) P_v
#     λ = Σ_i exp(q·P_k,i / sqrt(d_h)) / (Σ_i exp(q·P_k,i / sqrt(d_h)) + Σ_j exp(q·k_j / sqrt(d_h)))
#
# Prefix tuning is a *gate*: the frozen attention's output is shrunk by (1 − λ) and a
# learned, query-dependent vector (an attention over P_v alone) is mixed in with weight
# λ. This is how He et al. relate prefix tuning to adapters: the second term is a
# parallel branch added to the frozen attention output.
#
# `unified_view(Q, K, V, P_k, P_v, h)` computes the right-hand side and λ. We rebuild Q,
# K, V of each block from the traced block inputs X_{ℓ-1} (LN₁, then the frozen
# projections) and check (a) the gate form equals the model's attention with the prefix
# and (b) λ equals the attention mass on the prefix columns of the traced weights A_ℓ,
# for the trained prefix p = 4 of every seed.

# %%
m = runs["prefix p=4"]


def gates(params, m):
    """λ per layer (N, B, h, T) and the two checks' max |Δ|."""
    tr = {}
    mp.forward(params, X, cfg, [m], trace=tr)
    P_k, P_v = m.table(params[m.name], cfg.N, cfg.d)  # (N, p, d) each
    cols = key_columns([m], cfg.n_patches)
    lams, d_out, d_mass = [], 0.0, 0.0
    for ell in range(cfg.N):
        bp = params["blocks"][ell]
        h1 = mp.nn.layer_norm(tr["hidden"][ell], bp["ln1"]["gamma"], bp["ln1"]["beta"], cfg.eps)
        Q, K, V = (mp.nn.linear(h1, bp["attn"]["W_" + n], bp["attn"]["b_" + n]) for n in "qkv")
        out, lam = unified_view(Q, K, V, P_k[ell], P_v[ell], cfg.h)  # (B, T, d), (B, h, T)
        ref = mp.nn.attention(Q, K, V, cfg.h, prefix=(P_k[ell], P_v[ell]))
        d_out = max(d_out, float(np.abs(np.asarray(out) - np.asarray(ref)).max()))
        mass = np.asarray(tr["attn"][ell])[..., cols[m.name]].sum(-1)  # (B, h, T)
        d_mass = max(d_mass, float(np.abs(mass - np.asarray(lam)).max()))
        lams.append(np.asarray(lam, dtype=np.float64))
    return np.stack(lams), d_out, d_mass


per_seed = [gates(prm, m) for prm in trained["prefix p=4"]]
lam_init, _, _ = gates(mp.attach(ch.with_new_head(), [m], cfg, seed=0), m)
d_out, d_mass = max(g[1] for g in per_seed), max(g[2] for g in per_seed)
ch.check("unified view: the gate form is the model's prefix attention (float32)", d_out < 1e-5, f"max abs Δ = {d_out:.1e}")
ch.check("unified view: λ is the attention mass on the prefix columns", d_mass < 1e-5, f"max abs Δ = {d_mass:.1e}")
lam_layers = np.stack([g[0].mean(axis=(1, 2, 3)) for g in per_seed])  # (seeds, N)
lam_heads = np.stack([g[0].mean(axis=(1, 3)) for g in per_seed]).mean(0)  # (N, h)
print("mean λ per layer, trained (mean over seeds):", np.round(lam_layers.mean(0), 3))
print("mean λ per layer, at init (seed 0):        ", np.round(lam_init.mean(axis=(1, 2, 3)), 3))
print("λ per layer (rows) and head (columns), trained, mean over seeds, images and queries:")
print(np.round(lam_heads, 3))
print("CLS query's λ per layer (trained, seed 0):", np.round(per_seed[0][0][:, :, :, 0].mean(axis=(1, 2)), 3))

# %%
layers = np.arange(1, cfg.N + 1)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for hd in range(cfg.h):
    axes[0].plot(layers, lam_heads[:, hd], marker="o", alpha=0.5, label=f"head {hd + 1}")
axes[0].errorbar(layers, lam_layers.mean(0), yerr=lam_layers.std(0, ddof=1) if len(lam_layers) > 1 else None,
                 color="k", lw=2, capsize=3, label="mean over heads (± sd over seeds)")
axes[0].plot(layers, lam_init.mean(axis=(1, 2, 3)), color="gray", ls="--", label="mean at init (seed 0)")
axes[0].set(xlabel="layer ℓ", ylabel="λ = attention mass on the prefix", xticks=layers, ylim=(0, 1),
            title="Prefix p=4: the gate λ per layer (trained)")
axes[0].legend(fontsize=8, loc="upper left", ncol=2)
axes[1].hist([per_seed[0][0][ell].ravel() for ell in range(cfg.N)], bins=20, label=[f"layer {e}" for e in layers])
axes[1].set(xlabel="λ (per image, head, query)", ylabel="count", title="Distribution of λ (trained, seed 0)")
axes[1].legend(fontsize=8)
_ = ch.save(fig, "03_prefix_lambda.png")

# %%
ch.finish()

# %% [markdown]
# ## What it shows
#
# The verdict lines above decide the claims at this scale; the numbers are in
# `chapters/results/03_prefix.json` and `chapters/README.md`. How to read them:
#
# - Shapes: every layer's attention has p more key columns but the same query rows, and the
#   block outputs keep their shape: the output count follows the queries.
# - Equal budget: if prefix tuning's extra expressiveness mattered on this task, both
#   prefix-vs-prompt verdicts would say reproduced. What always shows is cost: a long
#   prompt lengthens the sequence in every layer, while a prefix only adds key/value
#   columns — the timings above.
# - The reparameterisation, with one shared encoder or one per layer, trains many times
#   more numbers than the table it makes (printed above); `eject` then keeps only the
#   table, with the same logits. The two reparameterisation verdicts say whether the
#   paper's fix for unstable training pays at this scale and budget.
# - The unified view holds to float32 rounding, and λ, the share of attention the gate
#   gives the prefix, differs per layer and head and is spread widely per query.

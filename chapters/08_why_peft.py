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
# # 8. Why PEFT: what full fine-tuning costs, measured
#
# Notes, *Introduction*: full fine-tuning updates every parameter, which means "high
# computational cost", "memory requirements" for gradients and optimizer states, "storage
# costs" (a full copy of the model per task) and the risk of catastrophic forgetting
# (chapter 7 after `digits`; here after the two other downstream tasks). PEFT trains a
# small θ while the backbone φ stays frozen.
#
# This chapter measures those costs for every method of the tour, on the pretrained
# backbone, for one training step of batch 64 on `digits`:
#
# - **trainable numbers** |θ| (the head included);
# - **optimizer state**: Adam keeps two moments per trainable number (m and v), so
#   2·|θ| numbers; for full fine-tuning that is twice the model;
# - **gradient memory**: the gradient tree autograd returns — only θ's, since φ is a
#   constant of the loss (no frozen weight's gradient is ever computed);
# - **peak step memory**: the most memory NumPy held above the parameters during one
#   forward + backward pass (`tracemalloc`; the activations kept for the backward pass plus
#   the gradients);
# - **bytes on disk per task**: the adapter file `minipeft train` saves (θ only), against
#   the whole model that full fine-tuning must store per task.
#
# All deterministic counts and bytes (no seeds: no training for them). Scale: on a ViT-B/16
# (86 M numbers) or a billion-parameter LM the same ratios decide whether a model fits in
# memory at all; here everything is small.
#
# Then forgetting, decided over 5 seeds (paired, the rule of `chapters/README.md`) after
# full fine-tuning on `mnist-rot` and on `mnist-invert` (chapter 7 does `digits`): for each
# task, (1) the pretraining task's accuracy with the original mnist head put back is below
# the pretrained model's, and (2) a refitted mnist head on the fine-tuned features is below
# the same refit on the pretrained features. Budget: 2 epochs of full fine-tuning (the
# tour's recipe, lr 10⁻³) on each task's 600 training images; refits as in chapter 7.

# %%
import tempfile
import tracemalloc
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import minipeft as mp
from minipeft.adapters import save_adapter
from minipeft.chapter import plot_arms, setup
from minipeft.methods import REGISTRY, method_class
from minipeft.methods.lora import LoRA
from minipeft.train import adam_init

# one BLAS thread, Agg figures to $CHAPTER_FIG_DIR (else chapters/figures), the backbone, `digits`
ch = setup(globals().get("__file__"), name="08_why_peft")
cfg, task = ch.cfg, ch.task
EPOCHS = ch.epochs(2)
ch.budget["epochs"] = EPOCHS
xb, yb = task.train[0][:64], task.train[1][:64]


def nbytes(tree):
    return sum(np.asarray(a).nbytes for _, a in mp.tree.leaves_with_paths(tree))


def costs(name, folder):
    """One method's costs: counts, Adam state, gradient, peak step memory, bytes on disk."""
    m = method_class(name)()
    params = mp.attach(ch.with_new_head(0), [m], cfg, seed=0)
    theta, phi = mp.split(params, mp.trainable([m], train_head=True))
    state = adam_init(theta)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    _, grads = mp.value_and_grad(lambda th: mp.loss(th, phi, xb, yb, cfg, [m]), theta)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    path = Path(folder) / f"{name}.npz"
    save_adapter(path, params, [m], cfg)
    grad_paths = {path for path, _ in mp.tree.leaves_with_paths(grads)}
    return {"trainable": mp.count(theta), "adam_state_bytes": nbytes(state["m"]) + nbytes(state["v"]),
            "gradient_bytes": nbytes(grads), "peak_step_bytes": peak - base, "disk_bytes": path.stat().st_size,
            # a gradient for a backbone weight matrix or LayerNorm γ (BitFit's biases are its θ)
            "frozen_grads": any(p[0] in ("blocks", "embed", "ln_f") and str(p[-1]).startswith(("W", "gamma", "pos", "cls"))
                                for p in grad_paths)}


with tempfile.TemporaryDirectory() as folder:
    rows = {name: costs(name, folder) for name in REGISTRY}
full = rows["full"]
print(f"{'method':15s} {'trainable':>9s} {'% of full':>9s} {'Adam state':>11s} {'gradient':>10s} "
      f"{'peak step':>10s} {'on disk':>10s}")
for name, r in rows.items():
    print(f"{name:15s} {r['trainable']:9,} {100 * r['trainable'] / full['trainable']:8.2f}% "
          f"{r['adam_state_bytes'] / 1e3:9.1f} kB {r['gradient_bytes'] / 1e3:8.1f} kB "
          f"{r['peak_step_bytes'] / 1e6:8.2f} MB {r['disk_bytes'] / 1e3:8.1f} kB")
    ch.measure(name, **{k: v for k, v in r.items() if k != "frozen_grads"})

# %% [markdown]
# What holds exactly, for every PEFT method:

# %%
peft = [k for k in REGISTRY if k not in ("full", "linear-probe")]
ch.check("Adam state is 2 numbers per trainable number, for every method",
         all(r["adam_state_bytes"] == 2 * r["gradient_bytes"] for r in rows.values()), "m and v, float32")
ch.check("no PEFT method computes a gradient for a backbone weight matrix or LN γ",
         not any(rows[k]["frozen_grads"] for k in peft) and rows["full"]["frozen_grads"],
         "gradient leaves: θ and the head only (full fine-tuning: all)")
worst_state = max(rows[k]["adam_state_bytes"] / full["adam_state_bytes"] for k in peft)
ch.check("every PEFT method's optimizer state is under a tenth of full fine-tuning's", worst_state < 0.1,
         f"largest ratio {worst_state:.3f}")
worst_disk = max(rows[k]["disk_bytes"] / full["disk_bytes"] for k in peft)
ch.check("every PEFT method's file per task is under a tenth of the full model's", worst_disk < 0.1,
         f"largest ratio {worst_disk:.3f}")

# %% [markdown]
# The step's peak memory is a different story: the activations kept for the backward pass
# do not shrink with θ. Gradients must still flow back through every frozen layer to reach
# θ (a LoRA step costs most of a full step, `benchmarks/README.md`), and methods that
# lengthen the sequence (prompt tuning, VPT) hold *more* activations than full fine-tuning.
# Which methods stay below full fine-tuning's peak:

# %%
below = [k for k in peft if rows[k]["peak_step_bytes"] < full["peak_step_bytes"]]
above = [k for k in peft if k not in below]
print("peak step memory below full fine-tuning's:", below)
print("at or above it:", above)

# %%
fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
names = list(REGISTRY)
y = np.arange(len(names))
panels = [("trainable", "trainable numbers (head incl.)", 1), ("adam_state_bytes", "Adam state (kB)", 1e3),
          ("peak_step_bytes", "peak memory of one step above the parameters (MB)", 1e6),
          ("disk_bytes", "bytes on disk per task (kB)", 1e3)]
for ax, (key, label, unit) in zip(axes.ravel(), panels):
    vals = np.array([rows[k][key] / unit for k in names])
    ax.barh(y, vals, color=["0.5" if k in ("full", "linear-probe") else "C0" for k in names])
    ax.set(yticks=y, yticklabels=names, xlabel=label, xscale="log" if key != "peak_step_bytes" else "linear")
    ax.axvline(rows["full"][key] / unit, color="C3", ls=":", lw=1)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=9)
fig.suptitle("What one training step and one task cost, per method (red dotted: full fine-tuning)", fontsize=11)
_ = ch.save(fig, "08_why_peft.png")

# %% [markdown]
# ## Forgetting after each of the other downstream tasks
#
# Full fine-tuning writes every backbone weight; LoRA writes none (chapter 5 checks W₀ bit
# for bit). For each task and seed: full fine-tuning, then on `mnist` (the pretraining
# task) the original head put back, and a refitted head (a linear probe on the first 1,000
# mnist training images, 2 epochs, the seed's head init and data order) on the fine-tuned
# and on the pretrained backbone. LoRA r = 4 on the same task, adapter removed, for
# comparison: its backbone must be the pretrained one, bit for bit.

# %%
mnist = mp.load_task("mnist")
pre_acc = mp.evaluate(ch.backbone, mnist.test, cfg)["acc"]


def refit_head(params, seed):  # a fresh mnist head on the first 1,000 mnist training images (minipeft/chapter.py)
    return ch.refit_head(params, mnist, seed, n_train=128 if ch.quick else 1000, epochs=EPOCHS)


ch.record("pretrained model, mnist", [pre_acc] * len(ch.seeds), metric="mnist test accuracy")
ch.record("pretrained, refitted head", [refit_head(ch.backbone, s) for s in ch.seeds], metric="mnist test accuracy")
FORGET_TASKS = ("mnist-rot", "mnist-invert")
identical = []
for name in FORGET_TASKS:
    t = mp.load_task(name)
    _, full_ft = ch.over_seeds(f"full FT on {name}", method_class("full")(), 1e-3, EPOCHS, task=t)
    _, lora_ft = ch.over_seeds(f"LoRA r=4 on {name}", LoRA(r=4), LoRA.suggested_lr, EPOCHS, task=t)
    ch.record(f"full FT on {name}, original head", [mp.evaluate({**p, "head": ch.backbone["head"]}, mnist.test,
                                                                cfg)["acc"] for p in full_ft],
              metric="mnist test accuracy")
    ch.record(f"full FT on {name}, refitted head", [refit_head(p, s) for s, p in zip(ch.seeds, full_ft)],
              metric="mnist test accuracy")
    for p in lora_ft:
        removed = {**{k: v for k, v in p.items() if k != "lora"}, "head": ch.backbone["head"]}
        identical.append(all(np.array_equal(a, mp.tree.get(ch.backbone, path))
                             for path, a in mp.tree.leaves_with_paths(removed)))
    for label in (f"full FT on {name}", f"LoRA r=4 on {name}", f"full FT on {name}, original head",
                  f"full FT on {name}, refitted head"):
        a = ch.arms[label]
        print(f"{label:38s} {a['metric']:20s} {a['mean']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]")
    ch.compare(f"full fine-tuning on {name} forgets mnist (original head)", f"full FT on {name}, original head",
               "pretrained model, mnist", direction="<", source="notes (introduction)")
    ch.compare(f"full fine-tuning on {name}: the features lost mnist information (refitted head)",
               f"full FT on {name}, refitted head", "pretrained, refitted head", direction="<",
               source="notes (introduction)")
print(f"pretrained: mnist test acc {pre_acc:.3f} (own head)")
ch.check("LoRA, adapter removed after each task: the backbone is the pretrained one, bit for bit",
         all(identical), f"{sum(identical)} of {len(identical)} trained models")

# %%
fig, ax = plt.subplots(figsize=(9, 4.2))
groups = [("pretrained model, mnist", "pretrained, refitted head")] + [
    (f"full FT on {n}, original head", f"full FT on {n}, refitted head") for n in FORGET_TASKS]
for j, kind in enumerate(("original head", "refitted head")):
    plot_arms(ax, ch.arms, [g[j] for g in groups], x=np.arange(len(groups)) + (j - 0.5) * 0.2, ls="none",
              color=f"C{j}", label=kind)
ax.set(xticks=range(len(groups)), xticklabels=["pretrained"] + [f"after full FT\non {n}" for n in FORGET_TASKS],
       xlim=(-0.5, len(groups) - 0.5), ylim=(0, 1.0), ylabel="mnist test accuracy",
       title=f"Forgetting the pretraining task ({EPOCHS} epochs of full FT; mean, 95 % CI, {len(ch.seeds)} seeds)")
ax.legend(title="mnist head", loc="lower left")
ax.grid(axis="y", alpha=0.3)
_ = ch.save(fig, "08_forgetting.png")

# %%
ch.finish()

# %% [markdown]
# ## What it shows
#
# The numbers are printed above and kept in `chapters/results/08_why_peft.json` (the
# measurements table of `chapters/README.md`).
#
# - Trainable numbers, optimizer state, gradient memory and bytes on disk all scale with
#   |θ|: every PEFT method needs a small fraction of full fine-tuning's, and one pretrained
#   backbone serves every task with a small file each.
# - The activation memory of a step does not scale with |θ|: the backward pass still runs
#   through the whole frozen network, and longer sequences (prompts) cost more. PEFT saves
#   optimizer and gradient memory and storage, not the forward/backward computation.
# - Forgetting, the notes' other cost of full fine-tuning: the verdicts above say, for each
#   task, whether full fine-tuning lost the pretraining task with its old head and in its
#   features (chapter 7 does the same after `digits`); LoRA's backbone, with the adapter
#   removed, is the pretrained one bit for bit.

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
# # 1. The transformer: the frozen backbone and its seams
#
# Notes, *Prompt Tuning → TRANSFORMER*: "Transformers serve as the foundation for modern
# deep neural networks, leveraging self-attention and deep contextual representations to
# process information. The input to a Transformer is a prompt, which consists of a
# sequence of tokens … converted into embeddings." *Core Structure*: "a stack of
# Transformer blocks, each containing multi-head attention, feed-forward layers, residual
# connections, layer normalization. The final output representation is typically derived
# from a specific token … then passed to a classification layer."
#
# Every PEFT method of the notes starts from such a model, frozen. This chapter looks at
# the one minipeft uses: a small pre-LN vision transformer pretrained on MNIST digits.
#
# Budget: no training here, only forward passes (the time it took is in the runs table of
# `chapters/README.md`), so no seeds either: every claim of this chapter is exact, printed as a `check:` line.

# %%
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

import minipeft as mp
from minipeft.chapter import setup
from minipeft.transformer import embed, patchify

# one BLAS thread, Agg figures to $CHAPTER_FIG_DIR (else chapters/figures), the pretrained backbone
ch = setup(globals().get("__file__"), task=None, name="01_transformer")

# %% [markdown]
# ## The pre-LN block (equations.md, "Transformer")
#
# Rows are tokens (X ∈ R^{n×d}); a linear layer stores W ∈ R^{d_out×d_in} and computes
# `x @ W.T + b`. Block ℓ, as in ViT:
#
#     X'_ℓ = X_{ℓ-1} + MSA(LN₁(X_{ℓ-1}))
#     X_ℓ  = X'_ℓ   + MLP(LN₂(X'_ℓ))
#
#     LN(x)   = γ ⊙ (x − μ(x)) / sqrt(σ²(x) + ε) + β
#     Q = X W_qᵀ + b_q,  K = X W_kᵀ + b_k,  V = X W_vᵀ + b_v        (split into h heads)
#     Attn(Q, K, V) = softmax(Q Kᵀ / sqrt(d_h)) V                   (per head)
#     MSA(X) = concat_heads(Attn(Q, K, V)) W_oᵀ + b_o
#     MLP(x) = GELU(x W₁ᵀ + b₁) W₂ᵀ + b₂
#
# Input (vision): the image is cut into m patches I_j; E₀ = {e₀ʲ = Embed(I_j) + pos_j};
# a CLS token x₀ is prepended: Z₀ = [x₀; E₀]. Output: y = Head(LN_f(x_N)), the CLS row of
# the last layer through a final LayerNorm and a linear head.
#
# The pretrained backbone: d = 64, h = 4 heads, N = 4 blocks, d_ff = 128, 16×16 grey
# images in 4×4 patches (m = 16 patches + CLS = 17 tokens).

# %%
cfg = ch.cfg
params, info = ch.backbone, ch.info
print("config:", cfg.to_dict())
parts = {k: mp.count(params[k]) for k in ("embed", "blocks", "ln_f", "head")}
print("numbers per part:", parts, "total", f"{sum(parts.values()):,}")
d, dff = cfg.d, cfg.d_ff
# LN₁, LN₂ (γ, β); W_q..W_o with their biases; W₁, b₁, W₂, b₂
per_block = 2 * 2 * d + 4 * (d * d + d) + 2 * d * dff + dff + d
print(f"one block, closed form 2·2d + 4(d² + d) + 2·d·d_ff + d_ff + d = {per_block:,};  "
      f"N blocks = {cfg.N * per_block:,};  cfg.n_params = {cfg.n_params:,}")
ch.check("the blocks hold N times the closed-form count", parts["blocks"] == cfg.N * per_block,
         f"{parts['blocks']:,} = {cfg.N} x {per_block:,}")
ch.check("the parts add up to cfg.n_params", sum(parts.values()) == cfg.n_params, f"{cfg.n_params:,}")

# %% [markdown]
# ## Patches + CLS: from an image to a sequence of tokens
#
# `patchify` cuts a (B, 1, 16, 16) batch into (B, 16, 16): 16 patches I_j of 4·4 = 16
# pixels each, row-major. `embed` applies Embed(I_j) = I_j W_eᵀ + b_e, prepends x₀ and
# adds the position table: Z₀ = [x₀; E₀] + pos, (B, 17, 64).

# %%
tasks = {name: mp.load_task(name) for name in mp.TASKS}
X = tasks["mnist"].test[0][:8]  # (8, 1, 16, 16)
I = patchify(X, cfg.patch)
Z0 = embed(params, X, cfg)
print(f"images {X.shape} -> patches I_j {I.shape} -> Z₀ = [x₀; E₀] + pos {Z0.shape}")

# %% [markdown]
# ## The forward pass, layer by layer
#
# `mp.forward(..., trace=dict)` records Z₀ and the output X_ℓ of every block, and every
# block's attention weights A_ℓ = softmax(Q Kᵀ / sqrt(d_h)) of shape (B, h, T, S).

# %%
trace = {}
logits = mp.forward(params, X, cfg, trace=trace)
print("hidden:", [tuple(H.shape) for H in trace["hidden"]])
print("attn:  ", [tuple(A.shape) for A in trace["attn"]], "(rows sum to 1:",
      bool(np.allclose(trace["attn"][0].sum(-1), 1, atol=1e-5)), ")")
print("logits:", logits.shape, "predicted", logits.argmax(1), "true", tasks["mnist"].test[1][:8])

# %% [markdown]
# ## One block by hand, in plain NumPy
#
# The equations above are all there is. Below, block 1 is computed from the backbone's
# arrays with nothing but NumPy (float64), one line per equation, and compared with
# the X_1 that minipeft's forward pass traced (float32: they agree to float32 rounding).
# minipeft's own code for this is `block` in `minipeft/transformer/forward.py`; the
# fused primitives it calls are in `minipeft/nn/primitives.py`, their readable composed
# forms in `minipeft/nn/reference.py`.

# %%
def ln(x, gamma, beta, eps=cfg.eps):  # LN(x) = γ ⊙ (x − μ(x)) / sqrt(σ²(x) + ε) + β
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def gelu_tanh(x):  # GELU, tanh form (as minipeft and GPT-2)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
bp = {k: {n: f64(a) for n, a in v.items()} for k, v in params["blocks"][0].items()}
X0 = f64(trace["hidden"][0])  # Z₀, (B, 17, 64)
B_, T_, d_h = X0.shape[0], X0.shape[1], cfg.d // cfg.h
h1 = ln(X0, bp["ln1"]["gamma"], bp["ln1"]["beta"])
Q, K, V = (h1 @ bp["attn"]["W_" + n].T + bp["attn"]["b_" + n] for n in "qkv")  # (B, T, d) each
heads = lambda M: M.reshape(B_, T_, cfg.h, d_h).transpose(0, 2, 1, 3)  # noqa: E731  (B, h, T, d_h)
S = heads(Q) @ heads(K).transpose(0, 1, 3, 2) / np.sqrt(d_h)  # (B, h, T, T)
A = np.exp(S - S.max(-1, keepdims=True))
A /= A.sum(-1, keepdims=True)  # softmax over the keys
Z = (A @ heads(V)).transpose(0, 2, 1, 3).reshape(B_, T_, cfg.d)  # concat_heads
X1 = X0 + Z @ bp["attn"]["W_o"].T + bp["attn"]["b_o"]  # X'_1
h2 = ln(X1, bp["ln2"]["gamma"], bp["ln2"]["beta"])
X_1 = X1 + gelu_tanh(h2 @ bp["mlp"]["W_1"].T + bp["mlp"]["b_1"]) @ bp["mlp"]["W_2"].T + bp["mlp"]["b_2"]
err = float(np.abs(X_1 - f64(trace["hidden"][1])).max())
err_A = float(np.abs(A - f64(trace["attn"][0])).max())
ch.check("block 1 by hand in NumPy equals minipeft's X_1 (float32 rounding)", err < 1e-4 * max(1.0, np.abs(X_1).max()),
         f"max abs Δ X_1 = {err:.1e}, max abs Δ A_1 = {err_A:.1e}, max abs X_1 = {np.abs(X_1).max():.1f}")

# %% [markdown]
# ## The seams: where methods enter
#
# The notes' methods differ in *where* they touch the model: prompt tuning and VPT-Shallow
# at the input tokens, VPT-Deep at every layer's input, prefix tuning at the keys and
# values, AdaptFormer beside the MLP, serial adapters after attention and MLP, LoRA, (IA)³
# and SSF at the linear projections, (IA)³ also at the MLP's hidden activation, SSF after
# each LayerNorm. The forward pass hands each of those values through a named *seam*,
# the identity unless an active method fills it:
#
#     tokens     Z₀ = [x₀; E₀]           prompt tuning, VPT-Shallow
#     layer_in   X_{ℓ-1}                 VPT-Deep
#     linear     x Wᵀ + b (q k v o mlp1 mlp2)   LoRA, (IA)³, SSF
#     kv         (K, V)                  prefix tuning
#     ff_hidden  GELU(x W₁ᵀ + b₁)        (IA)³ l_ff
#     mlp        MLP(LN₂(X'))            AdaptFormer
#     after      ln1, attn, ln2, mlp, ln_f outputs   serial adapters, SSF
#
# A method is a frozen dataclass that defines `on_<seam>` hooks. The smallest possible
# one fills every seam, records what passes through, and changes nothing:

# %%
SEEN = []


@dataclass(frozen=True)
class SeamLogger(mp.Method):
    """Records (seam, layer, name, shape) at every seam and returns each value unchanged."""

    name: str = "seam_logger"

    def n_params(self, cfg):
        return 0

    def on_tokens(self, theta, Z, cfg):
        SEEN.append(("tokens", None, None, Z.shape))
        return Z

    def on_layer_in(self, theta, X, layer, cfg):
        SEEN.append(("layer_in", layer, None, X.shape))
        return X

    def on_linear(self, theta, y, x, layer, name, cfg):
        SEEN.append(("linear", layer, name, y.shape))
        return y

    def on_kv(self, theta, kv, layer, cfg):
        SEEN.append(("kv", layer, None, kv[0].shape))
        return kv

    def on_ff_hidden(self, theta, H, layer, cfg):
        SEEN.append(("ff_hidden", layer, None, H.shape))
        return H

    def on_mlp(self, theta, M, x_norm, x_resid, layer, cfg):
        SEEN.append(("mlp", layer, None, M.shape))
        return M

    def on_after(self, theta, y, layer, name, cfg):
        SEEN.append(("after", layer, name, y.shape))
        return y


logger = SeamLogger()
logged = mp.forward(mp.attach(params, [logger], cfg), X, cfg, [logger])
print("seam calls in one forward pass:",
      {s: sum(1 for e in SEEN if e[0] == s) for s in mp.transformer.SEAMS})
print("block 1 (layer 0), in order:")
for seam, layer, name, shape in SEEN:
    if layer == 0 or seam == "tokens":
        print(f"   {seam:9s} {name or '':5s} {tuple(shape)}")
ch.check("identity hooks at every seam leave the logits bit for bit", bool(np.array_equal(logged, logits)),
         f"{len(SEEN)} seam calls in one forward pass")

# %% [markdown]
# ## What the pretrained model knows, and the downstream domains
#
# The backbone was pretrained (full training, 20 epochs) on the `mnist` task. The
# downstream tasks shift the domain (`digits`: blocky upsampled 8×8 UCI digits;
# `mnist-invert`: negatives) or the label set (`mnist-rot`: which of 4 rotations). The
# first two keep the ten digit labels, so the pretrained head can be tried on them as is:
# that is how far the domain shift takes the frozen model.

# %%
print(f"pretrained on mnist: val acc {info['val_acc']:.3f}, test acc {info['test_acc']:.3f}")
accs = {name: mp.evaluate(params, tasks[name].test, cfg)["acc"] for name in ("mnist", "digits", "mnist-invert")}
for name, acc in accs.items():
    print(f"pretrained model and head, no fine-tuning, on {name:12s} test: acc {acc:.3f}")
ch.check("the domain shifts cost the frozen model accuracy (digits, mnist-invert below mnist)",
         accs["digits"] < accs["mnist"] and accs["mnist-invert"] < accs["mnist"],
         ", ".join(f"{k} {v:.3f}" for k, v in accs.items()))

# %% [markdown]
# The figure shows eight test inputs of each task, as the model sees them (16×16).

# %%
fig, axes = plt.subplots(len(mp.TASKS), 8, figsize=(8, 4.4))
for r, name in enumerate(mp.TASKS):
    Xt, yt = tasks[name].test
    for c in range(8):
        ax = axes[r, c]
        ax.imshow(Xt[c, 0], cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(tasks[name].labels[yt[c]], fontsize=8)
    axes[r, 0].set_ylabel(name, fontsize=8)
fig.suptitle("16×16 inputs of each task (title: label)", fontsize=10)
_ = ch.save(fig, "01_tasks.png")

# %% [markdown]
# And where the CLS row looks: the attention weights of the CLS query over the 16 patch
# keys, averaged over the 4 heads, for one test digit at each of the 4 layers, on one
# colour scale for all layers (so magnitudes compare across layers; the CLS key's own
# weight is left out, so a layer's 16 values sum to less than 1).

# %%
from minipeft.chapter import show_maps  # noqa: E402

side = cfg.image_size // cfg.patch
fig, axes = plt.subplots(1, cfg.N + 1, figsize=(2.3 * (cfg.N + 1) + 1.2, 2.8), layout="constrained")
axes[0].imshow(X[0, 0], cmap="gray", vmin=0, vmax=1)
axes[0].set_title(f"input (label {tasks['mnist'].test[1][0]})", fontsize=9)
axes[0].set_xticks([]), axes[0].set_yticks([])
maps = [np.asarray(A_l)[0, :, 0, 1:].mean(0).reshape(side, side) for A_l in trace["attn"]]  # (4, 4) each
show_maps(fig, axes[1:], maps, [f"layer {ell}" for ell in range(1, cfg.N + 1)],
          "CLS → patch attention\n(mean over heads)")
fig.suptitle("Where the CLS query looks, per layer (pretrained backbone, mnist test image)", fontsize=10)
for ell, A_l in enumerate(trace["attn"], 1):
    A_l = np.asarray(A_l)
    print(f"layer {ell}: CLS attention on itself {A_l[0, :, 0, 0].mean():.3f}, "
          f"on the patches {A_l[0, :, 0, 1:].sum(-1).mean():.3f}")
_ = ch.save(fig, "01_cls_attention.png")

# %%
ch.finish()

# %% [markdown]
# ## What it shows
#
# - The backbone's count follows the closed form per block, and every block keeps the
#   shape (B, 17, 64); the attention weights are (B, heads, queries, keys).
# - One block computed by hand in NumPy, equation by equation, is minipeft's block to
#   float32 rounding: nothing is hidden in the library.
# - A forward pass offers every seam (1 tokens, N layer_in, 6N linear, N kv, N ff_hidden,
#   N mlp and 4N + 1 after); with identity hooks the logits are unchanged bit for bit.
# - The pretrained model is good on its own task and drops on the shifted domains (the
#   accuracies are printed above and kept in `chapters/results/01_transformer.json`). That
#   gap is what the following chapters close, each training a small θ while this backbone
#   stays frozen.

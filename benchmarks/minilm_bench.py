"""minipeft vs what a user would pick instead, on all-MiniLM-L6-v2: HF peft 0.21 (LoRA) and
plain PyTorch (full fine-tuning, forward), eager, CPU, one thread, the same weights.

    python benchmarks/minilm_bench.py               # 8 × 32 and 8 × 128 tokens
    python benchmarks/minilm_bench.py --profile 32  # where a minipeft LoRA step spends its time

Each step is: the loss L = CE(Head(mean-pool(X_N)), y) of a batch of 8 real texts cut to
exactly n tokens, its gradients, one Adam update of the trainable numbers (the head
trains in both, as in a text-classification fine-tune):
  lora     minipeft LoRA(r = 8, α = 8, targets q, v) vs peft's LoraConfig(r=8, lora_alpha=8,
           target_modules=["query", "value"], lora_dropout=0) on transformers' BertModel
  full     minipeft FullFineTune vs BertModel with every parameter trainable
  forward  minipeft forward vs BertModel under torch.no_grad (mean-pool + head)
Before any timing, each pair's loss and every trainable gradient are checked to agree
(relative error per leaf, float32). Dropout is 0 on both sides. Timing interleaves the two
(benchmarks/measure.py: CPU-time ratios, median over rounds, interquartile range) and the
table prints minipeft / torch: below 1 means minipeft is faster. Needs the crosscheck extra.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # before NumPy loads its BLAS

import argparse  # noqa: E402
import cProfile  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as onp  # noqa: E402

import minipeft as mp  # noqa: E402
from minipeft.methods import method_class  # noqa: E402
from minipeft.models import minilm as M  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402

BATCH, RANK, CLASSES = 8, 8, 4
#: largest relative error ‖a − b‖ / ‖b‖ allowed per gradient leaf (float32, 6 layers)
GRAD_RTOL = 1e-3
#: the issue's target for every row: minipeft's CPU time ≤ this × torch's (peft's for LoRA)
TARGET = 1.0
TEXT = measure.TEXT


def batch(tok, n):
    """8 texts (the paragraph from 8 offsets) cut to exactly n tokens: (8, 3, n), labels (8,)."""
    words = (TEXT * 8).split()
    texts = [" ".join(words[7 * i:]) for i in range(BATCH)]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every text is cut on purpose
        x = onp.asarray(tok.encode(texts, max_len=n))
    assert x.shape == (BATCH, 3, n) and x[:, 2].all()
    return x, onp.arange(BATCH) % CLASSES


# ------------------------------------------------------------------------- minipeft
def lora_params(params, cfg):
    """(LoRA(r = 8, α = 8, targets q, v), params with it attached): every B drawn ~ 0.01·N(0, 1)
    (seed 0, float32), so that ∂L/∂A ≠ 0 and is checked too."""
    lora = method_class("lora")(r=RANK, alpha=float(RANK), targets=("q", "v"))
    p = mp.attach(params, [lora], cfg, seed=0)
    rng = onp.random.default_rng(0)
    for blk in p["lora"]["blocks"]:
        for t in blk.values():
            t["B"] = (0.01 * rng.standard_normal(t["B"].shape)).astype("float32")
    return lora, p


def mp_step(params, cfg, methods, x, y):
    """One minipeft training step (loss, gradients, Adam) as a closure, checked once before the
    steps as ``fit`` does; returns (step, grads_of_first)."""
    theta, phi = mp.split(params, mp.trainable(methods))
    state = {"theta": theta, "adam": mp.adam_init(theta, inplace=True)}
    mp.transformer.check_model(params, cfg, methods)

    def grads():
        return mp.value_and_grad(lambda th: mp.loss(th, phi, x, y, cfg, methods, checked=True), state["theta"])

    def step():
        _, g = grads()
        state["theta"], state["adam"] = mp.adam_step(state["theta"], g, state["adam"], lr=1e-4, inplace=True)  # as fit

    return step, grads


# ---------------------------------------------------------------------------- torch
def torch_model(torch, params, full):
    """transformers' BertModel on the shipped weights (dropout 0) and a head with minipeft's head."""
    from transformers import BertModel
    from transformers.utils import logging
    logging.set_verbosity_error()  # the file's pooler weights are skipped on purpose (add_pooling_layer=False)
    model = BertModel.from_pretrained(str(M.model_dir()), hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0, add_pooling_layer=False).float()
    model.train()
    for q in model.parameters():
        q.requires_grad_(full)
    head = torch.nn.Linear(params["head"]["W"].shape[1], CLASSES)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(params["head"]["W"]))
        head.bias.copy_(torch.tensor(params["head"]["b"]))
    return model, head


def torch_inputs(torch, x):
    """BertModel's keyword arguments for a batch x (B, 3, n): token ids, token types, attention mask."""
    return {"input_ids": torch.tensor(x[:, 0]), "token_type_ids": torch.tensor(x[:, 1]),
            "attention_mask": torch.tensor(x[:, 2])}


def torch_forward(torch, model, head, inputs):
    """Inference as a closure: logits = head(mean over the n tokens of BertModel's last hidden
    state) under torch.no_grad, the model in eval mode. (B, n, d) → (B, d) → (B, CLASSES)."""
    model.eval()

    def fwd():
        with torch.no_grad():
            h = model(**inputs).last_hidden_state
            return head(h.mean(1))

    return fwd


def torch_loss(torch, model, head, inputs, y):
    h = model(**inputs).last_hidden_state  # (B, n, d)
    m = inputs["attention_mask"].to(h.dtype)[..., None]
    return torch.nn.functional.cross_entropy(head((h * m).sum(1) / m.sum(1)), y)


def torch_step(torch, model, head, inputs, y):
    trainable = [q for q in list(model.parameters()) + list(head.parameters()) if q.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-4)

    def grads():
        for q in trainable:
            q.grad = None
        loss = torch_loss(torch, model, head, inputs, y)
        loss.backward()
        return loss

    def step():
        opt.zero_grad(set_to_none=True)
        torch_loss(torch, model, head, inputs, y).backward()
        opt.step()

    return step, grads


def profile_rows(stats, top=10):
    """Markdown rows: the functions with the most own time in a profiled minipeft LoRA step,
    each with its share of the step's total."""
    total = stats.total_tt
    items = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    rows = ["| function | calls | share of the step (own time) |", "|---|---:|---:|"]
    for (path, line, func), (cc, nc, tt, ct, callers) in items:
        where = f"{Path(path).parent.name}/{Path(path).name}:{line}" if path != "~" else "builtin"
        rows.append(f"| `{func}` ({where}) | {nc} | {100 * tt / total:.0f} % |")
    return rows


# -------------------------------------------------------------------------- checks
def rel(a, b):
    a, b = onp.asarray(a, dtype=onp.float64), onp.asarray(b, dtype=onp.float64)
    return float(onp.linalg.norm(a - b) / max(onp.linalg.norm(b), 1e-30))


def check(name, pairs, loss_mp, loss_t):
    """Raise when the loss or any gradient leaf disagrees; return the worst relative error.

    A leaf whose gradient is zero in exact arithmetic (the key bias b_k: adding q·b_k to a
    whole row of scores leaves the softmax unchanged) holds rounding noise on both sides,
    so each error is relative to max(‖b‖, 10⁻⁴ · the largest leaf norm).
    """
    worst = rel(loss_mp, loss_t)
    floor = 1e-4 * max(float(onp.linalg.norm(onp.asarray(b, dtype=onp.float64))) for _, _, b in pairs)
    for label, a, b in pairs:
        a, b = onp.asarray(a, dtype=onp.float64), onp.asarray(b, dtype=onp.float64)
        e = float(onp.linalg.norm(a - b)) / max(float(onp.linalg.norm(b)), floor)
        if e > GRAD_RTOL:
            raise SystemExit(f"{name}: gradient {label} disagrees: relative error {e:.2e} > {GRAD_RTOL}")
        worst = max(worst, e)
    if rel(loss_mp, loss_t) > 1e-5:
        raise SystemExit(f"{name}: loss disagrees: {float(loss_mp)} vs {float(loss_t)}")
    return worst


def run_size(torch, n, rounds, profile=False):
    params, cfg, tok = M.load(n_classes=CLASSES, pool="mean", dtype="float32")
    x, y = batch(tok, n)
    inputs = torch_inputs(torch, x)
    yt = torch.tensor(y)
    rows = []

    # LoRA: minipeft vs HF peft, the same A and B (B ≠ 0 so ∂L/∂A is checked too)
    from peft import LoraConfig, get_peft_model
    lora, p = lora_params(params, cfg)
    model, head = torch_model(torch, params, full=False)
    pm = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["query", "value"],
                                          lora_dropout=0.0))
    with torch.no_grad():
        for name, q in pm.named_parameters():
            if "lora_" in name:
                ell = int(name.split("encoder.layer.")[1].split(".")[0])
                t = "q" if ".query." in name else "v"
                q.copy_(torch.tensor(p["lora"]["blocks"][ell][t]["A" if "lora_A" in name else "B"]))
    step_mp, grads_mp = mp_step(p, cfg, [lora], x, y)
    step_t, grads_t = torch_step(torch, pm, head, inputs, yt)
    lt = grads_t()
    lm, g = grads_mp()
    pairs = [("head.W", g["head"]["W"], head.weight.grad.numpy()), ("head.b", g["head"]["b"], head.bias.grad.numpy())]
    for name, q in pm.named_parameters():
        if "lora_" in name:
            ell = int(name.split("encoder.layer.")[1].split(".")[0])
            t, k = ("q" if ".query." in name else "v"), ("A" if "lora_A" in name else "B")
            pairs.append((f"{ell}.{t}.{k}", g["lora"]["blocks"][ell][t][k], q.grad.numpy()))
    err = check("lora", pairs, lm, lt.item())
    if profile:
        prof = cProfile.Profile()
        prof.runcall(lambda: [step_mp() for _ in range(3)])
        rows = ["LoRA step:", ""] + profile_rows(pstats.Stats(prof))
        full = mp.FullFineTune()
        step_mp, _ = mp_step(params, cfg, [full], x, y)
        step_mp()  # warm-up: first-touch page faults of the Adam state
        prof = cProfile.Profile()
        prof.runcall(lambda: [step_mp() for _ in range(3)])
        return rows + ["", "full fine-tuning step:", ""] + profile_rows(pstats.Stats(prof))
    rows.append(("lora step", err, measure.interleave({"minipeft": step_mp, "torch": step_t}, rounds)))
    del pm, model

    # full fine-tuning: every leaf's gradient, through the one HF-name table
    full = mp.FullFineTune()
    model, head = torch_model(torch, params, full=True)
    step_mp, grads_mp = mp_step(params, cfg, [full], x, y)
    step_t, grads_t = torch_step(torch, model, head, inputs, yt)
    lt = grads_t()
    lm, g = grads_mp()
    named = dict(model.named_parameters())
    pairs = [("head.W", g["head"]["W"], head.weight.grad.numpy())]
    for hf, path in M.hf_to_phi(cfg.N):
        if hf in named:
            pairs.append((hf, mp.tree.get(g, path), named[hf].grad.numpy()))
    err = check("full", pairs, lm, lt.item())
    rows.append(("full step", err, measure.interleave({"minipeft": step_mp, "torch": step_t}, max(3, rounds // 2))))

    # forward only (inference: mean-pool + head), a fresh model (the full steps moved that one)
    del model
    model, head = torch_model(torch, params, full=False)
    fwd_t = torch_forward(torch, model, head, inputs)

    def fwd_mp():
        return mp.forward(params, x, cfg)

    err = rel(fwd_mp(), fwd_t().numpy())
    if err > 1e-5:
        raise SystemExit(f"forward: logits disagree: relative error {err:.2e}")
    rows.append(("forward", err, measure.interleave({"minipeft": fwd_mp, "torch": fwd_t}, rounds)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--profile", type=int, default=None, help="profile a minipeft LoRA step at this many tokens")
    ap.add_argument("--out", default=None, help="also write the table to this markdown file "
                                                 "(benchmarks/minilm_results.md)")
    a = ap.parse_args()
    try:
        import torch
        import transformers
        import peft
    except ImportError as e:
        raise SystemExit(f"needs the crosscheck extra ({e}): python -m pip install -e \".[crosscheck]\"")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from minipeft import runtime
    runtime.apply()  # the allocator and thread policy every minipeft entry point applies
    if a.profile:
        lines = [f"Where minipeft's steps spend their time ({a.profile} tokens, batch {BATCH}, float32, one "
                 f"thread; cProfile over 3 steps, own time per function): "
                 f"`python benchmarks/minilm_bench.py --profile {a.profile}`", ""]
        lines += run_size(torch, a.profile, 1, profile=True)
        print("\n".join(lines))
        if a.out:
            Path(a.out).write_text("# (generated)\n\n" + "\n".join(lines) + "\n")
        return
    out = measure.Report()  # prints each line and keeps it for --out

    out(f"all-MiniLM-L6-v2, float32, batch {BATCH}, one thread, {platform.processor() or platform.machine()}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"numpy {onp.__version__}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{measure.load_line('at the start')}")
    import headline
    kernels = headline.blas_kernels(torch)
    out(f"BLAS: NumPy {'; '.join(kernels['numpy'])}; torch {'; '.join(kernels['torch'])}")
    out("ratio = minipeft / torch (CPU time, median of interleaved rounds; < 1: minipeft faster); "
        "lora is against HF peft, full and forward against plain transformers; "
        f"target (issue 12): ratio ≤ {TARGET}")
    out()
    out("| tokens | what | minipeft / torch | IQR | wall-clock ratio | agreement (max rel. err.) | target |")
    out("|---:|---|---:|---|---:|---:|---|")
    for n in a.tokens:
        for what, err, res in run_size(torch, n, a.rounds):
            r = measure.ratio(res, "minipeft", "torch")
            met = "met" if r["cpu"] <= TARGET else "**not met**"
            out(f"| {n} | {what} | {r['cpu']:.2f} | {r['iqr'][0]:.2f}-{r['iqr'][1]:.2f} | {r['wall']:.2f} | "
                f"{err:.1e} | {met} |")
    out()
    out(measure.load_line("at the end"))
    if a.out:
        out.write(a.out, "minilm_bench.py")


if __name__ == "__main__":
    main()

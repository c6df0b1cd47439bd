"""minipeft vs HF peft 0.21 on all-MiniLM-L6-v2, both directions, per method and dtype.

    PYTHONPATH=$PWD python benchmarks/peft_parity.py            # every method, float32 and float64
    PYTHONPATH=$PWD python benchmarks/peft_parity.py --methods lora --dtypes float64

export  random non-zero θ in minipeft → ``interop.export_peft`` → peft.PeftModel.from_pretrained(
        BertModel from the same local weights, DIR) → max |Δ| of the last hidden state on
        real-token rows and of the pooled output (BertModel's pooler; minipeft pool="pooler"),
        and for LoRA and (IA)³ max |Δ| between peft's merge_and_unload weights and minipeft's merge.
import  an adapter created in peft and trained STEPS Adam steps there (loss Σ c ⊙ mean-pooled
        output) → save_pretrained → ``interop.import_peft`` → the same two comparisons.
Every number printed is measured by this run. Needs torch, transformers, peft (the crosscheck
extra); tests/test_peft_crosscheck.py asserts on the same functions.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402

import numpy as onp  # noqa: E402

import minipeft as mp  # noqa: E402
from minipeft import tree  # noqa: E402
from minipeft.interop import export_peft, import_peft  # noqa: E402
from minipeft.methods import method_class  # noqa: E402
from minipeft.models import minilm as M  # noqa: E402

SENTENCES = ["A short one.", "Parameter-efficient fine-tuning adapts large pretrained models cheaply.",
             "Why?", "Prefix tuning prepends keys and values at every layer."]
#: the minipeft side of each case (θ then drawn at random, non-zero)
CASES = {
    "lora": lambda: method_class("lora")(r=4, alpha=8.0, targets=("q", "k", "v", "o", "mlp1", "mlp2"), layers=(0, 2, 5)),
    "ia3-notes": lambda: method_class("ia3")(variant="notes"),
    "ia3-paper": lambda: method_class("ia3")(variant="paper"),
    "prompt": lambda: method_class("prompt")(p=5, placement="peft"),
    "prefix": lambda: method_class("prefix")(p=5, placement="peft"),
}
STEPS = 3


def load(dtype):
    """(params, cfg, tok) of MiniLM with pool="pooler" (BertModel's pooled output)."""
    return M.load(n_classes=2, pool="pooler", dtype=dtype)


def bert(torch, dtype):
    """transformers' BertModel on the shipped weights, eager attention, eval mode, in ``dtype``."""
    import transformers
    from transformers.utils import logging
    logging.set_verbosity_error()
    model = transformers.BertModel.from_pretrained(str(M.model_dir()), attn_implementation="eager").eval()
    return model.double() if dtype == "float64" else model.float()


def inputs(torch, tok):
    """(minipeft's encoded batch (B, 3, n), BertModel's input_ids and attention_mask) of SENTENCES."""
    e = tok.encode(SENTENCES)
    return e, {"input_ids": torch.tensor(e.ids), "attention_mask": torch.tensor(e.mask)}


def random_theta(method, params, cfg, seed=0):
    """params with method's θ attached and every leaf redrawn, non-zero and on a realistic scale:
    LoRA A, B ~ N(0, 0.05²); (IA)³ l ~ 1 + N(0, 0.1²); prompt and prefix rows ~ N(0, 1)."""
    p = mp.attach(params, [method], cfg, seed=seed)
    rng = onp.random.default_rng(seed)
    dt = params["embed"]["pos"].dtype

    def draw(path, a):
        if path[-1].startswith("l_"):
            return (1 + 0.1 * rng.standard_normal(a.shape)).astype(dt)
        sd = 0.05 if path[-1] in ("A", "B") else 1.0
        return (sd * rng.standard_normal(a.shape)).astype(dt)

    return {**p, method.name: tree.map_leaves(draw, p[method.name])}


def minipeft_outputs(params, cfg, methods, e):
    """(last hidden state (B, T, d), pooled (B, d)), T = p + n under a peft-placed prompt."""
    trace = {}
    pooled = mp.features(params, onp.asarray(e), cfg, methods, trace=trace)
    return onp.asarray(trace["hidden"][-1]), onp.asarray(pooled)


def peft_outputs(torch, pm, inp):
    """(last_hidden_state (B, T, d), pooler_output (B, d)) of the peft model, as NumPy."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = pm(**inp)
    return r.last_hidden_state.numpy(), r.pooler_output.numpy()


def compare(mine, theirs, mask, p_front):
    """max |Δ| over the real-token rows of the last hidden state and over the pooled output."""
    (h1, q1), (h2, q2) = mine, theirs
    real = onp.concatenate([onp.zeros((mask.shape[0], p_front), bool), mask.astype(bool)], axis=1)
    return float(onp.abs(h1 - h2)[real].max()), float(onp.abs(q1 - q2).max())


def merged_weights_delta(torch, pm, params, method):
    """max |Δ| between peft's merge_and_unload() weights and minipeft's merge, over every tensor."""
    merged_t = pm.merge_and_unload()
    sd = {k: v.detach().numpy() for k, v in merged_t.state_dict().items()}
    merged_m = method.merge(params)
    worst = 0.0
    for name, path in M.hf_to_phi(len(params["blocks"])):
        worst = max(worst, float(onp.abs(onp.asarray(tree.get(merged_m, path)) - sd[name]).max()))
    return worst


class default_dtype:
    """torch's default dtype set to ``dtype`` inside the block: peft builds its prompt encoders
    (PromptEmbedding, PrefixEncoder) in the default dtype, not the base model's, so a float64
    run needs it (else peft rounds P to float32 on load)."""

    def __init__(self, torch, dtype):
        self.torch, self.dtype = torch, getattr(torch, dtype)

    def __enter__(self):
        self.old = self.torch.get_default_dtype()
        self.torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        self.torch.set_default_dtype(self.old)


def export_case(torch, name, dtype, model, loaded, folder):
    """minipeft → peft: {"hidden", "pooled"(, "merge")} max |Δ| for case ``name``."""
    import peft
    params, cfg, tok = loaded
    method = CASES[name]()
    p = random_theta(method, params, cfg)
    out = export_peft(os.path.join(folder, f"export-{name}-{dtype}"), p, method, cfg)
    with default_dtype(torch, dtype):
        pm = peft.PeftModel.from_pretrained(copy.deepcopy(model), out).eval()
    e, inp = inputs(torch, tok)
    mine = minipeft_outputs(p, cfg, [method], e)
    front = method.p if method.prompt_seam == "inputs" else 0
    res = dict(zip(("hidden", "pooled"), compare(mine, peft_outputs(torch, pm, inp), e.mask, front)))
    if method.mergeable:
        res["merge"] = merged_weights_delta(torch, pm, p, method)
    return res


def peft_config(name):
    """The peft side of each case, built with peft's own config classes (its spellings)."""
    import peft
    ft = "FEATURE_EXTRACTION"
    if name == "lora":
        return peft.LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value", "intermediate.dense"],
                               layers_to_transform=[1, 3, 4], lora_dropout=0.0, task_type=ft)
    if name == "ia3-notes":
        return peft.IA3Config(target_modules=["query", "key", "value"], feedforward_modules=[], task_type=ft)
    if name == "ia3-paper":
        return peft.IA3Config(target_modules=r"encoder\.layer\.\d+\.(attention\.self\.(key|value)|output\.dense)",
                              feedforward_modules=r"encoder\.layer\.\d+\.output\.dense", task_type=ft)
    if name == "prompt":
        return peft.PromptTuningConfig(num_virtual_tokens=5, task_type=ft)
    return peft.PrefixTuningConfig(num_virtual_tokens=5, task_type=ft)


def train_in_peft(torch, pm, inp, steps=STEPS, seed=0):
    """STEPS Adam steps (lr 1e-2) on L = Σ c ⊙ mean-pool(last hidden state over the real tokens)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam([q for q in pm.parameters() if q.requires_grad], lr=1e-2)
    m = inp["attention_mask"][..., None].to(next(pm.parameters()).dtype)
    c = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            h = pm(**inp).last_hidden_state[:, -m.shape[1]:]  # the real rows (prompts sit in front)
            pooled = (h * m).sum(1) / m.sum(1)
            c = torch.randn(pooled.shape, dtype=pooled.dtype, generator=torch.Generator().manual_seed(seed)) \
                if c is None else c
            loss = (pooled * c).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return pm.eval()


def import_case(torch, name, dtype, model, loaded, folder):
    """peft → minipeft: an adapter made and trained in peft, saved, imported; max |Δ| as export_case."""
    import peft
    params, cfg, tok = loaded
    e, inp = inputs(torch, tok)
    with default_dtype(torch, dtype):
        pm = peft.get_peft_model(copy.deepcopy(model), peft_config(name))
    pm = train_in_peft(torch, pm, inp)
    out = os.path.join(folder, f"import-{name}-{dtype}")
    pm.save_pretrained(out)
    p, method, _ = import_peft(out, params, cfg)
    front = method.p if method.prompt_seam == "inputs" else 0
    mine = minipeft_outputs(p, cfg, [method], e)
    res = dict(zip(("hidden", "pooled"), compare(mine, peft_outputs(torch, pm, inp), e.mask, front)))
    if method.mergeable:
        res["merge"] = merged_weights_delta(torch, pm, p, method)
    return res


def main(argv=None):
    import torch
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lines = []

    def emit(line):
        print(line, flush=True)
        lines.append(line)

    import peft
    import transformers
    emit(f"minipeft vs HF peft {peft.__version__} (transformers {transformers.__version__}, torch {torch.__version__}) "
         f"on all-MiniLM-L6-v2, {len(SENTENCES)} sentences padded to one length; written by "
         f"`python benchmarks/peft_parity.py`\n")
    emit("| direction | method | dtype | max abs Δ last hidden (real rows) | max abs Δ pooled | max abs Δ merged weights |")
    emit("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for dtype in args.dtypes:
            model, loaded = bert(torch, dtype), load(dtype)
            for direction, fn in (("export", export_case), ("import", import_case)):
                for name in args.methods:
                    r = fn(torch, name, dtype, model, loaded, folder)
                    merge = f"{r['merge']:.2e}" if "merge" in r else "n/a"
                    emit(f"| minipeft {'→' if direction == 'export' else '←'} peft | {name} | {dtype} | "
                         f"{r['hidden']:.2e} | {r['pooled']:.2e} | {merge} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

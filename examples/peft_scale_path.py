"""The scale path, runnable: a minipeft LoRA → HF peft on PyTorch (CPU) → back to minipeft, merged.

    PYTHONPATH=$PWD python examples/peft_scale_path.py            # needs torch, transformers, peft

1. minipeft: LoRA (r = 4, α = 8 on q, v) + a head on all-MiniLM-L6-v2, trained STEPS Adam steps
   on a toy two-class text task (L = CE(Head(mean-pool(X_N)), y)).
2. ``minipeft.interop.export_peft`` writes a peft folder; peft.PeftModel.from_pretrained(BertModel,
   DIR, is_trainable=True) loads it. peft's feature-extraction model has no head, so the head
   goes along by hand as a torch.nn.Linear with minipeft's W and b.
3. STEPS Adam steps in peft (same loss, same lr). After every step the adapter is saved with
   save_pretrained, imported back with ``interop.import_peft``, and minipeft's logits are
   compared with torch's: max |Δ| per step.
4. The last import is merged in minipeft (W = W₀ + (α/r) B A) and compared again.

On several GPUs with accelerate only step 3 changes: ``accelerator = Accelerator()``;
``pm, head, opt = accelerator.prepare(pm, head, opt)``; ``accelerator.backward(loss)`` instead of
``loss.backward()``; a DataLoader of your data through ``prepare`` (each process sees its shard);
save on one process: ``if accelerator.is_main_process:
accelerator.unwrap_model(pm).save_pretrained(DIR)``; run with ``accelerate launch
examples/peft_scale_path.py``. The adapter folder is the same, so step 4 is unchanged.
(Not run here: this machine has no GPU.)
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import tempfile  # noqa: E402
import warnings  # noqa: E402

import numpy as onp  # noqa: E402

import minipeft as mp  # noqa: E402
from minipeft.interop import export_peft, import_peft  # noqa: E402
from minipeft.methods import method_class  # noqa: E402
from minipeft.models import minilm as M  # noqa: E402

STEPS, LR = 3, 3e-3
TEXTS = ["what a wonderful, kind and generous gesture", "this is the worst service I have ever had",
         "I loved every minute of it", "a dull, tedious and pointless film",
         "the staff were friendly and helpful", "never again, a complete waste of money"]
LABELS = onp.array([1, 0, 1, 0, 1, 0])


def main():
    import peft
    import torch
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.set_num_threads(1)
    params, cfg, tok = M.load(n_classes=2, pool="mean", dtype="float32")
    x = onp.asarray(tok.encode(TEXTS))

    # 1. minipeft
    lora = method_class("lora")(r=4, alpha=8.0, targets=("q", "v"))
    p = mp.attach(params, [lora], cfg, seed=0)
    theta, phi = mp.split(p, mp.trainable([lora]))
    state = mp.adam_init(theta)
    for step in range(STEPS):
        loss, g = mp.value_and_grad(lambda th: mp.loss(th, phi, x, LABELS, cfg, [lora]), theta)
        theta, state = mp.adam_step(theta, g, state, lr=LR)
        print(f"minipeft step {step + 1}: loss {float(loss):.4f}")
    p = mp.combine(theta, phi)

    with tempfile.TemporaryDirectory() as folder:
        # 2. export, load in peft, the head by hand
        out = export_peft(os.path.join(folder, "lora"), p, lora, cfg)
        bert = transformers.BertModel.from_pretrained(str(M.model_dir()), attn_implementation="eager",
                                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        pm = peft.PeftModel.from_pretrained(bert, out, is_trainable=True)
        head = torch.nn.Linear(cfg.d, 2)
        with torch.no_grad():
            head.weight.copy_(torch.tensor(p["head"]["W"]))
            head.bias.copy_(torch.tensor(p["head"]["b"]))
        inp = {"input_ids": torch.tensor(x[:, 0]), "attention_mask": torch.tensor(x[:, 2])}
        y = torch.tensor(LABELS)
        m = inp["attention_mask"][..., None].float()

        def torch_logits():
            h = pm(**inp).last_hidden_state
            return head((h * m).sum(1) / m.sum(1))

        def compare(tag):
            with torch.no_grad():
                want = torch_logits().numpy()
            pm.save_pretrained(os.path.join(folder, "back"))
            q, method, _ = import_peft(os.path.join(folder, "back"), p, cfg)
            q["head"] = {"W": head.weight.detach().numpy().copy(), "b": head.bias.detach().numpy().copy()}
            got = onp.asarray(mp.forward(q, x, cfg, [method]))
            print(f"{tag}: max |Δ| logits minipeft (imported) vs peft {float(onp.abs(got - want).max()):.2e}")
            return q, method

        compare("peft step 0 (as exported)")
        # 3. train in peft
        opt = torch.optim.Adam([t for t in pm.parameters() if t.requires_grad] + list(head.parameters()), lr=LR)
        for step in range(STEPS):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss = torch.nn.functional.cross_entropy(torch_logits(), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            print(f"peft step {step + 1}: loss {loss.item():.4f}")
            q, method = compare(f"peft step {step + 1}")

        # 4. merge in minipeft
        merged = method.merge(q)
        unmerged = onp.asarray(mp.forward(q, x, cfg, [method]))
        print(f"merged in minipeft: max |Δ| logits merged vs unmerged {float(onp.abs(mp.forward(merged, x, cfg) - unmerged).max()):.2e}")
        with torch.no_grad():
            want = torch_logits().numpy()
        print(f"merged in minipeft vs peft (unmerged): max |Δ| logits {float(onp.abs(mp.forward(merged, x, cfg) - want).max()):.2e}")
        print(f"accuracy on the {len(TEXTS)} training texts: {float((unmerged.argmax(1) == LABELS).mean()):.2f}")


if __name__ == "__main__":
    main()

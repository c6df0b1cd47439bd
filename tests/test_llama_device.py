"""The Llama configuration on the device backend (tests/fake_device.py's stand-in, which
refuses what CuPy refuses; CuPy too where it runs): the LM loss and its gradient with LoRA
on the gate, and generation with the KV cache and a prefix, equal to NumPy's."""
import numpy as onp

import minipeft as mp
from minipeft.generate import generate
from minipeft.methods.lora import LoRA
from minipeft.methods.prefix import PrefixTuning
from minipeft.methods.prompt import PromptTuning
from minipeft.transformer.lm import lm_loss
from test_device import assert_same, device, on  # noqa: F401  (device: the fixture)
from test_llama import CFG, IDS

METHODS = [LoRA(r=2, targets=("q", "gate")), PrefixTuning(p=2), PromptTuning(p=2)]


def _run():
    params = mp.attach(mp.init_params(CFG, 0, "float64"), METHODS, CFG, 0)
    theta, phi = mp.split(params, mp.trainable(METHODS, train_head=False))
    targets = onp.ones_like(IDS)
    v, g = mp.value_and_grad(lambda th: lm_loss(mp.combine(th, phi), IDS, CFG, METHODS, targets), theta)
    return {"loss": v, "grads": g}, generate(params, [1, 2, 3], CFG, METHODS, max_new_tokens=4)


def test_lm_loss_gradient_and_generation_match_numpy(device):
    want, toks_h = on(onp, _run)
    got, toks = _run()
    assert_same(got, want, device)
    assert toks == toks_h

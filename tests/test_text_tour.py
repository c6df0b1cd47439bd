"""``minipeft tour --model minilm``: the tour on all-MiniLM-L6-v2 (minipeft/tour.py's
``run_text_tour``), and fit's length-bucketed ``batches``.

Fast: the real model in --quick mode (one step per method on a few texts) with every
method's trainable count against its closed form; VPT's refusal (why it is not in the
tour); fit's batches against padding-free runs on a tiny random BERT; bad input.
Slow: the real command with a small budget, its table rows and its time line.
"""
import os
import subprocess
import sys

import numpy as onp
import pytest

import minipeft as mp
from minipeft import text
from minipeft.cli import main
from minipeft.methods import REGISTRY, method_class
from minipeft.models import minilm as M
from minipeft.tour import TEXT_METHODS, _class_balanced_head, format_table, run_text_tour

TINY = mp.Config(d=16, h=4, N=2, d_ff=24, n_classes=3, front="text", vocab=13, max_len=12, eps=1e-12,
                 norm="post", act="gelu_erf", cls="ids", type_vocab=2, embed_ln=True, pool="mean")


def table_rows(stdout):
    return [[c.strip() for c in line.split("|")[1:-1]] for line in stdout.splitlines()
            if line.startswith("| ") and "method" not in line]


def test_cli_minilm_quick_every_text_method_with_its_closed_form_count(capsys):
    assert main(["tour", "--model", "minilm", "--quick"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert [r[0] for r in rows] == list(TEXT_METHODS) == [n for n in REGISTRY if n not in ("vpt-shallow", "vpt-deep")]
    _, cfg, _ = M.load(n_classes=2, dtype="float32")
    C, d = 2, cfg.d
    head = C * d + C
    want = {"linear-probe": head, "full": cfg.n_params}
    want.update({n: method_class(n)().n_params(cfg) + head for n in TEXT_METHODS if n not in want})
    for r in rows:
        assert int(r[1].replace(",", "")) == want[r[0]], r
        assert r[5] == ("—" if r[0] in ("linear-probe", "full") else
                        ("yes" if r[0] in ("lora", "bitfit", "ia3", "ssf") else "no"))
        assert 0.0 <= float(r[4]) <= 1.0
    assert "Tour on tweets: 1 step(s) on 4 texts" in out and "whole command:" in out


@pytest.mark.parametrize("name", ["vpt-shallow", "vpt-deep"])
def test_vpt_refuses_a_text_model_so_the_tour_leaves_it_out(name):
    with pytest.raises(ValueError, match="front='vision'"):
        mp.attach(mp.init_params(TINY, seed=0), [method_class(name)()], TINY, 0)
    with pytest.raises(ValueError, match="methods"):
        run_text_tour(methods=[name], quick=True)


@pytest.mark.parametrize("kwargs, field", [({"task": "digits"}, "task"), ({"k": 0}, "k"), ({"n_test": 0}, "n_test"),
                                           ({"epochs": 0}, "epochs"), ({"methods": []}, "methods"),
                                           ({"k": 10 ** 6}, "k")])
def test_text_tour_bad_input(kwargs, field):
    with pytest.raises(ValueError, match=field):
        run_text_tour(quick=True, **kwargs)


def test_cli_k_only_for_minilm_and_tasks_match_the_model(capsys):
    assert main(["tour", "--k", "4", "--quick"]) != 0
    assert "--k" in capsys.readouterr().err
    assert main(["tour", "--task", "tweets", "--quick"]) != 0
    assert "--task" in capsys.readouterr().err
    assert main(["tour", "--model", "minilm", "--task", "digits", "--quick"]) != 0
    assert "task must be one of" in capsys.readouterr().err


def test_class_balanced_head_keeps_the_share_and_takes_the_first_of_each_class():
    labels = onp.array([0] * 30 + [1] * 10 + [0] * 40 + [1] * 20)  # 70 : 30
    idx = _class_balanced_head(labels, 10)
    assert onp.bincount(labels[idx]).tolist() == [7, 3]
    assert idx.tolist() == list(range(7)) + [30, 31, 32]


# ----------------------------------------------------------------- fit's batches
def tiny_text(n=12, seed=0):
    """n texts of 3..8 tokens ([CLS]=1 ... [SEP]=2), padded on the right to 10 columns."""
    rng = onp.random.default_rng(seed)
    lengths = rng.integers(3, 9, n)
    x = onp.zeros((n, 3, 10), dtype=onp.int64)
    for i, L in enumerate(lengths):
        x[i, 0, :L] = onp.r_[1, rng.integers(3, TINY.vocab, L - 2), 2]
        x[i, 2, :L] = 1
    return x, rng.integers(0, TINY.n_classes, n), lengths


def naive_fit(params, x, y, batches, lr, methods):
    """Adam over the given batches, each batch cut by hand to its longest text, one fit call per step."""
    m = methods[0]
    theta, phi = mp.split(params, mp.trainable([m]))
    from minipeft.train import adam_init, adam_step, loss
    from minipeft.autodiff import value_and_grad
    state = adam_init(theta)
    for b in batches:
        L = int(x[b, 2].sum(axis=1).max())
        _, g = value_and_grad(lambda th: loss(th, phi, x[b][:, :, :L], y[b], TINY, methods), theta)
        theta, state = adam_step(theta, g, state, lr=lr)
    return mp.combine(theta, phi)


def test_fit_batches_run_the_given_batches_each_cut_to_its_longest_text():
    x, y, lengths = tiny_text()
    m = method_class("lora")()
    params = mp.attach(mp.init_params(TINY, seed=1, dtype="float64"), [m], TINY, 0)
    batches = lambda e: text.bucket_batches(lengths, 4, 7 + e)  # noqa: E731
    got, hist = mp.fit(params, (x, y), TINY, [m], epochs=2, lr=1e-2, batches=batches, progress=False)
    want = naive_fit(params, x, y, batches(0) + batches(1), 1e-2, [m])
    assert len(hist["loss"]) == 2 * len(batches(0))
    for p, leaf in mp.tree.leaves_with_paths(want):
        assert onp.allclose(mp.tree.get(got, p), leaf, rtol=0, atol=1e-12), p


def test_fit_batches_bad_input():
    x, y, _ = tiny_text()
    params = mp.init_params(TINY, seed=1)
    for bad in (lambda e: [], lambda e: [onp.array([0, 99])], lambda e: [onp.array([0.5])]):
        with pytest.raises(ValueError, match="batches"):
            mp.fit(params, (x, y), TINY, batches=bad, progress=False)
    with pytest.raises(TypeError, match="batches"):
        mp.fit(params, (x, y), TINY, batches=[onp.arange(4)], progress=False)


# ----------------------------------------------------------------- the real command
@pytest.mark.slow
def test_minilm_tour_for_real_small_budget(tmp_path):
    env = {**os.environ, "MINIPEFT_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "minipeft", "tour", "--model", "minilm", "--k", "8", "--epochs", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = table_rows(out.stdout)
    assert [r[0] for r in rows] == list(TEXT_METHODS)
    full = next(r for r in rows if r[0] == "full")
    assert full[2] == "100.00%" and full[3] == "0.0001"
    assert all(0.0 <= float(r[4]) <= 1.0 and float(r[6]) > 0 for r in rows)
    assert "1 epoch(s) on 16 texts (8 per class, cut to 64 tokens; test on 300 texts)" in out.stdout
    assert "whole command:" in out.stdout

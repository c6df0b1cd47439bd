"""The tour (``minipeft tour``, minipeft/tour.py) and the chapters (chapters/NN_*.py).

Fast: the tour on a tiny random backbone (the pretrained loader swapped out), checking
every registered method appears with the trainable count of its closed form; the CLI
entry; bad input; and that every chapter is a compilable jupytext percent script.
Slow (real backbone, real data): each chapter run as a script, writing its figures to a
temporary folder; ``minipeft tour --quick`` for real.
"""
import os
import py_compile
import subprocess
import sys
from pathlib import Path

import numpy as onp
import pytest

import minipeft as mp
from minipeft import pretrained
from minipeft.cli import main
from minipeft.methods import REGISTRY, method_class
from minipeft.tour import BASELINES, QUICK_TRAIN, format_table, run_tour

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))
#: the figures each chapter must write
FIGURES = {
    "01_transformer.py": ["01_tasks.png", "01_cls_attention.png"],
    "02_prompt_vpt.py": ["02_prompt_attention.png", "02_cls_maps.png"],
    "03_prefix.py": ["03_prompt_vs_prefix.png", "03_prefix_lambda.png"],
    "04_adapters.py": ["04_adapters.png"],
    "05_lora.py": ["05_lora.png"],
    "06_scale_shift.py": ["06_scale_shift.png"],
    "07_summary.py": ["07_accuracy_vs_trainable.png", "07_forgetting.png"],
}
MERGEABLE = {"lora", "bitfit", "ia3", "ssf"}


@pytest.fixture
def tiny_backbone(monkeypatch):
    """Swap the pretrained backbone for a tiny random one on the tasks' 16×16 images."""
    cfg = mp.Config(d=16, h=2, N=2, d_ff=24, n_classes=10, image_size=16, patch=4)
    params = mp.init_params(cfg, seed=3, dtype="float32")
    calls = []

    def fake_load(c=None, *a, **k):
        calls.append(c)
        return params, {"val_acc": 0.0, "test_acc": 0.0, "seconds": 0.0, "spec": {}}

    monkeypatch.setattr(pretrained, "DEFAULT_CONFIG", cfg)
    monkeypatch.setattr(pretrained, "load_backbone", fake_load)
    return cfg, params, calls


def test_tour_every_method_with_its_closed_form_count(tiny_backbone):
    cfg, params, calls = tiny_backbone
    before = {p: onp.array(a) for p, a in mp.tree.leaves_with_paths(params)}
    rows = run_tour("digits", quick=True, n_train=100, progress=False, log=lambda s: None)
    assert calls == [cfg]
    assert [r["method"] for r in rows] == list(REGISTRY)
    head = 10 * 16 + 10  # C·d + C, d = 16
    n_bb = sum(a.size for a in before.values())  # counted here, independently of cfg.n_params
    for r in rows:
        m = method_class(r["method"])()
        if r["method"] == "linear-probe":
            want = head
        elif r["method"] == "full":
            want = n_bb
        else:
            want = m.n_params(cfg) + head
        assert r["trainable"] == want, r
        assert r["head"] == head
        assert r["pct"] == pytest.approx(100 * want / n_bb)
        assert r["mergeable"] == (None if r["method"] in BASELINES else r["method"] in MERGEABLE)
        # the README's rates for the baselines; every method trains at its own suggestion
        assert r["lr"] == {"linear-probe": 1e-2, "full": 1e-3}.get(r["method"], m.suggested_lr)
        assert r["epochs"] == 1 and r["n_train"] == 100
        assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["val_acc"] <= 1.0 and r["train_s"] >= 0
    after = {p: a for p, a in mp.tree.leaves_with_paths(params)}
    assert all(onp.array_equal(before[p], after[p]) for p in before)  # the tour never writes the backbone


def test_tour_quick_defaults(tiny_backbone):
    rows = run_tour("mnist-rot", quick=True, methods=["bitfit"], progress=False, log=lambda s: None)
    (r,) = rows
    assert r["epochs"] == 1 and r["n_train"] == QUICK_TRAIN and r["head"] == 4 * 16 + 4


def test_format_table_lines(tiny_backbone):
    rows = run_tour("digits", quick=True, n_train=64, methods=["linear-probe", "lora", "prompt"],
                    progress=False, log=lambda s: None)
    text = format_table(rows, "digits", 12345)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)  # header, rule, one line per method
    assert "12,345 numbers" in text
    cells = {line.split("|")[1].strip(): line.split("|")[6].strip() for line in table[2:]}
    assert cells == {"linear-probe": "—", "lora": "yes", "prompt": "no"}
    with pytest.raises(ValueError, match="rows"):
        format_table([])


def test_cli_tour(tiny_backbone, capsys):
    assert main(["tour", "--quick", "--methods", "lora", "ssf"]) == 0
    out = capsys.readouterr().out
    assert "| lora |" in out and "| ssf |" in out and "| full |" not in out and "1 epoch(s)" in out


@pytest.mark.parametrize("kwargs, field", [
    ({"task": "mnist"}, "task"), ({"task": "digits", "epochs": 0}, "epochs"),
    ({"task": "digits", "methods": ["magic"]}, "methods"), ({"task": "digits", "methods": []}, "methods"),
    ({"task": "digits", "n_train": 0}, "n_train"),
])
def test_tour_bad_input(kwargs, field):
    with pytest.raises(ValueError, match=field):
        run_tour(**kwargs)


def test_cli_tour_bad_task(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tour", "--task", "mnist"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_chapter_setup_train_and_save(tiny_backbone, tmp_path, monkeypatch):
    from minipeft.chapter import setup

    cfg, params, calls = tiny_backbone
    monkeypatch.setenv("CHAPTER_FIG_DIR", str(tmp_path / "figs"))
    ch = setup(str(tmp_path / "chapter.py"))
    try:
        assert calls == [cfg] and ch.cfg is cfg and ch.backbone is params and ch.task.name == "digits"
        assert ch.fig_dir == tmp_path / "figs" and ch.fig_dir.is_dir()
        threadpoolctl = pytest.importorskip("threadpoolctl")
        assert all(i["num_threads"] == 1 for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
        m = mp.LinearProbe()
        trained, hist, acc = ch.train(m, 1e-2, epochs=1)
        # the recipe spelled out: fresh head (seed 0), attach (seed 0), Adam (seed 0), test accuracy
        ref = mp.attach(mp.new_head(params, 10, seed=0), [m], cfg, seed=0)
        ref, ref_hist = mp.fit(ref, ch.task.train, cfg, [m], epochs=1, lr=1e-2, seed=0, progress=False)
        assert hist["loss"] == ref_hist["loss"] and acc == mp.evaluate(ref, ch.task.test, cfg)["acc"]
        assert len(hist["loss"]) == -(-len(ch.task.train[1]) // 64)
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        assert ch.save(fig, "x.png") == tmp_path / "figs" / "x.png" and (tmp_path / "figs" / "x.png").is_file()
        assert ch.figures() == ["x.png"] and not plt.get_fignums()
    finally:
        ch.blas_limit.__exit__(None, None, None)  # give the other tests their BLAS threads back
    monkeypatch.delenv("CHAPTER_FIG_DIR")
    monkeypatch.chdir(tmp_path)  # a notebook: no __file__, figures next to it
    nb = setup(None, task=None)
    nb.blas_limit.__exit__(None, None, None)
    assert nb.fig_dir == tmp_path / "figures" and nb.fig_dir.is_dir() and nb.task is None
    with pytest.raises(ValueError, match="task"):
        nb.with_new_head()


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_a_percent_script(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "c.pyc"), doraise=True)
    text = path.read_text(encoding="utf-8")
    assert "# %% [markdown]" in text and "\n# %%\n" in text
    assert "import minipeft as mp" in text and "CHAPTER_FIG_DIR" in text
    for fig in FIGURES[path.name]:
        assert fig in text


def test_every_chapter_is_listed():
    assert [p.name for p in CHAPTERS] == sorted(FIGURES)


def _env(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", MINIPEFT_PROGRESS="0", CHAPTER_FIG_DIR=str(tmp_path / "figures"))
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_runs_and_saves_its_figures(path, tmp_path):
    out = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "figures:" in out.stdout
    for fig in FIGURES[path.name]:
        f = tmp_path / "figures" / fig
        assert f.is_file() and f.stat().st_size > 1000, fig
    assert not any(f.name in FIGURES[path.name] for f in (tmp_path.glob("*.png")))


@pytest.mark.slow
def test_tour_quick_for_real(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minipeft", "tour", "--quick"], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("| ") and "method" not in line]
    assert [line.split("|")[1].strip() for line in table] == list(REGISTRY)
    assert "136,906" in out.stdout and "| full | 136,906 | 100.00% |" in out.stdout

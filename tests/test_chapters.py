"""The tour (``minipeft tour``, minipeft/tour.py) and the chapters (chapters/NN_*.py).

Fast: the tour on a tiny random backbone (the pretrained loader swapped out), checking
every registered method appears with the trainable count of its closed form; the CLI
entry; bad input; and that every chapter is a compilable jupytext percent script.
Slow (real backbone, real data): each chapter run as a script in quick mode, writing its
figures and its results file to a temporary folder, its verdict lines in the fixed format;
each chapter converted with jupytext and executed with nbclient (an inline PNG, no warning,
no stray repr; chapter 1 also in the default suite); ``minipeft tour --quick`` for real.
"""
import os
import py_compile
import re
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
from minipeft.verdict import CHECK_RE, VERDICT_RE, read_results

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
    "08_why_peft.py": ["08_why_peft.png", "08_forgetting.png"],
    "09_minilm.py": ["09_minilm.png"],
    "10_smollm2.py": ["10_smollm2.png"],
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
        assert r["train_cpu_s"] >= 0  # the CPU seconds of fit (this process), besides its wall seconds
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


def test_setup_seeds_and_the_commit(tiny_backbone, tmp_path, monkeypatch):
    from minipeft import verdict
    from minipeft.chapter import QUICK_SEEDS, setup

    monkeypatch.setenv("CHAPTER_FIG_DIR", str(tmp_path / "figs"))
    monkeypatch.delenv("CHAPTER_QUICK", raising=False)
    for bad in [(1,), (1, 1), (0, 1.5), ()]:
        with pytest.raises(ValueError, match="seeds"):
            setup(str(tmp_path / "c.py"), seeds=bad)
    ch = setup(str(tmp_path / "c.py"), seeds=[4, 7, 9])
    ch.blas_limit.__exit__(None, None, None)
    assert ch.seeds == (4, 7, 9) and ch.source == verdict.source_state()  # the commit, read at setup
    monkeypatch.setenv("CHAPTER_QUICK", "1")
    quick = setup(str(tmp_path / "c.py"), seeds=[4, 7, 9])
    quick.blas_limit.__exit__(None, None, None)
    assert quick.seeds == QUICK_SEEDS  # quick mode keeps its own seeds


def test_cpu_now_counts_finished_children(monkeypatch):
    from minipeft import chapter

    fake = os.times_result((1.5, 0.25, 10.0, 2.0, 99.0))  # user, system, children's user and system, elapsed
    monkeypatch.setattr(chapter.os, "times", lambda: fake)
    assert chapter.cpu_now() == 1.5 + 0.25 + 10.0 + 2.0


def test_chapter_9_results_every_arm_in_every_setting():
    """The committed results of chapter 9: k ∈ {8, 16, 32} and full data, every arm in each, the gap and the
    notes' claims decided in each setting, the commit that produced it, CPU time including the workers'."""
    res = read_results(ROOT / "chapters" / "results" / "09_minilm.json")
    b, seeds = res["budget"], res["budget"]["seeds"]
    assert b["ks"] == [8, 16, 32] and len(seeds) >= 3 and not res["quick"]
    settings = [f"k={k}" for k in b["ks"]] + ["full data"]
    peft = [m for m in REGISTRY if not m.startswith("vpt") and m not in ("linear-probe", "full")]
    assert b["arms"] == ["linear probe", "full"] + peft
    for tag in settings:
        for a in b["arms"]:
            arm = res["arms"][f"{a} ({tag})"]
            assert arm["n"] == len(seeds) and all(0.0 <= v <= 1.0 for v in arm["values"]), (a, tag)
            assert a == "linear probe" or arm["n_steps"] >= 1
    claims = {c["claim"]: c for c in res["claims"]}
    for tag in settings:
        gap = claims[f"the gap PEFT must close: full fine-tuning beats the linear probe ({tag})"]
        assert (gap["a"], gap["b"]) == (f"full ({tag})", f"linear probe ({tag})")
        assert f"prefix outperforms prompt tuning on the hard task ({tag})" in claims
        for m in peft:
            assert f"{m} is comparable to full fine-tuning: within {b['margin']} or better ({tag})" in claims
    for tag in settings[:-1]:
        assert f"prompt tuning works few-shot: it beats the linear probe ({tag})" in claims
    assert all(c["n_seeds"] == len(seeds) for c in res["claims"])
    checks = {c["claim"]: c["holds"] for c in res["checks"]}
    assert checks["every PEFT method trains < 1 % of the backbone's numbers (head included)"]
    assert all(checks[f"{m}: merged = unmerged on MiniLM, the backbone's own arrays and shapes (float32)"]
               for m in MERGEABLE)
    assert re.fullmatch(r"[0-9a-f]{40}", res["code"]["commit"]) and res["code"]["dirty"] == []
    per_run = b["cpu_s_per_run"]
    assert len(per_run) == len(settings) * len(seeds)
    assert sum(per_run.values()) <= res["timing"]["cpu_s"]  # the workers' CPU is in the chapter's


def test_label_points_overlap_no_label_marker_or_bar_and_stay_inside():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from minipeft.chapter import label_points

    rng = onp.random.default_rng(0)
    pts = [(f"method-{i}", float(x), float(y), (float(y) - 0.02, float(y) + 0.02))
           for i, (x, y) in enumerate(zip(10 ** rng.uniform(-0.5, 2, 12), rng.uniform(0.6, 0.8, 12)))]
    pts += [("twin", pts[0][1], pts[0][2] + 0.01, (pts[0][2] - 0.01, pts[0][2] + 0.03))]  # nearly on top of another
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for _, x, y, (lo, hi) in pts:
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], marker="o", ls="none")
    ax.set(xscale="log", xlim=(0.2, 300), ylim=(0.5, 0.9))
    fig.tight_layout()
    texts = label_points(ax, pts)
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in texts]
    inside = ax.get_window_extent(r)
    assert [t.get_text() for t in texts] == [p[0] for p in pts]
    for i, b in enumerate(boxes):
        assert inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1
        assert not any(b.overlaps(c) for c in boxes[:i]), pts[i][0]
        for _, x, y, (lo, hi) in pts:  # no label over a marker or an error bar (each drawn as a thin box)
            (px, plo), (_, phi) = ax.transData.transform((x, lo)), ax.transData.transform((x, hi))
            assert not (b.x0 < px + 4 and px - 4 < b.x1 and b.y0 < phi and plo < b.y1), (pts[i][0], x, y)
    plt.close(fig)


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


def test_chapter_seeds_verdicts_and_results_file(tiny_backbone, tmp_path, monkeypatch, capsys):
    from minipeft.chapter import QUICK_SEEDS, setup
    from minipeft.methods.lora import LoRA

    monkeypatch.setenv("CHAPTER_FIG_DIR", str(tmp_path / "figs"))
    monkeypatch.setenv("CHAPTER_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("CHAPTER_QUICK", "1")
    ch = setup(str(tmp_path / "09_x.py"))
    try:
        assert ch.quick and ch.seeds == QUICK_SEEDS and ch.epochs(5) == 1 and ch.name == "09_x"
        lp, _ = ch.over_seeds("linear probe", mp.LinearProbe(), 1e-2, 1)
        lo, trained = ch.over_seeds("LoRA r=2", LoRA(r=2), 1e-2, 1)
        # each seed is its own run: the same as training that seed alone, on the quick split
        _, _, acc1 = ch.train(LoRA(r=2), 1e-2, 1, seed=QUICK_SEEDS[1])
        assert lo[1] == acc1 and len(trained) == len(QUICK_SEEDS) and len(ch.train_split()[1]) == 128
        assert ch.compare("LoRA beats the linear probe", "LoRA r=2", "linear probe", source="notes") is None
        rec = ch.claims[-1]
        ch.check("nothing changed", True, "max |Δ| = 0")
        ch.budget["epochs"] = 1
        assert ch.finish() is None  # nothing for a notebook to echo
        path = ch.results_path()
    finally:
        ch.blas_limit.__exit__(None, None, None)
    lines = capsys.readouterr().out.splitlines()
    assert any(VERDICT_RE.match(ln) for ln in lines) and any(CHECK_RE.match(ln) for ln in lines)
    assert path == tmp_path / "results" / "09_x.quick.json"
    res = read_results(path)
    assert res["quick"] and res["claims"][0]["values_a"] == lo and res["claims"][0]["values_b"] == lp
    assert res["claims"][0]["verdict"] == rec["verdict"] and res["arms"]["LoRA r=2"]["trainable"] == 2 * 2 * 2 * (16 + 16) + 170
    assert res["environment"]["thread_policy"] and len(res["backbone"]["id"]) == 16
    t = res["timing"]  # measured since setup: wall and CPU seconds, the load sampled at start, per arm, at the end
    assert 0 < t["cpu_s"] and 0 < t["wall_s"] <= res["wall_s"] + 0.1
    assert t["load_1min"] is None or (t["load_1min"]["samples"] == 4
                                      and t["load_1min"]["min"] <= t["load_1min"]["mean"] <= t["load_1min"]["max"])
    with pytest.raises(ValueError, match="one per seed"):
        ch.record("x", [0.1])


def _env(tmp_path, quick=True):
    env = dict(os.environ, MPLBACKEND="Agg", MINIPEFT_PROGRESS="0", CHAPTER_FIG_DIR=str(tmp_path / "figures"),
               CHAPTER_RESULTS_DIR=str(tmp_path / "results"), CHAPTER_QUICK="1" if quick else "0")
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
    res = read_results(tmp_path / "results" / f"{path.stem}.quick.json")
    lines = out.stdout.splitlines()
    verdicts = [ln for ln in lines if ln.startswith("verdict:")]
    assert all(VERDICT_RE.match(ln) for ln in verdicts), verdicts
    assert all(CHECK_RE.match(ln) for ln in lines if ln.startswith("check:"))
    assert len(verdicts) == len(res["claims"]) and all(c["holds"] for c in res["checks"]), res["checks"]
    assert "Warning" not in out.stderr, out.stderr[-2000:]


def _execute_notebook(path, tmp_path):
    """Convert ``path`` with jupytext, execute it with nbclient in quick mode; return its outputs."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = jupytext.read(path)
    import minipeft as mp
    mp.pretrained.load_backbone()  # build the cached backbone first: its build message is not the notebook's
    env = dict(_env(tmp_path), PYTHONPATH=str(ROOT))
    del env["MPLBACKEND"]  # the kernel chooses its inline backend
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute(env=env)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _check_notebook_outputs(outputs):
    assert any("image/png" in o.get("data", {}) for o in outputs if o["output_type"] == "display_data")
    streams = [o for o in outputs if o["output_type"] == "stream"]
    assert not [o["text"] for o in streams if o["name"] == "stderr"]
    assert not any("Warning" in o["text"] for o in streams)
    assert not [o for o in outputs if o["output_type"] in ("execute_result", "error")]  # no stray repr


@pytest.mark.slow
def test_chapter_1_as_a_notebook(tmp_path):
    _check_notebook_outputs(_execute_notebook(CHAPTERS[0], tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("path", CHAPTERS[1:], ids=lambda p: p.name)
def test_chapter_as_a_notebook(path, tmp_path):
    _check_notebook_outputs(_execute_notebook(path, tmp_path))


@pytest.mark.slow
def test_tour_quick_for_real(tmp_path):
    out = subprocess.run([sys.executable, "-m", "minipeft", "tour", "--quick"], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("| ") and "method" not in line]
    assert [line.split("|")[1].strip() for line in table] == list(REGISTRY)
    assert "136,906" in out.stdout and "| full | 136,906 | 100.00% |" in out.stdout

"""What chapter 9 and the rate sweep add to the MiniLM tour (minipeft/tour.py): ``text_setting``
(few-shot or a capped full-data set, the test or the validation split, a shorter max_len),
``task.full(n)``, prompt tuning's label-word init in ``text_method``, ``tour_rows``' make /
on_trained, the sweep's pick rule, and ``chapter.setup(model=...)``'s bad input.

Fast: the real tokenizer and tasks (no weights read except in the one quick tour run).
"""
import warnings

import numpy as onp
import pytest

from minipeft import text
from minipeft.methods.prompt import PromptTuning
from minipeft.models import minilm as M
from minipeft.tour import TEXT_LR, run_text_tour, text_method, text_setting

TASK = text.GAP_TASK


@pytest.fixture(scope="module")
def task():
    return text.load_text_task(TASK)


def test_full_n_is_a_fixed_stratified_subset_of_the_full_data_set(task):
    full = task.full()
    sub = task.full(100)
    assert len(sub) == 100 and set(sub.texts) <= set(full.texts)
    want = onp.bincount(full.labels) * 100 / len(full)  # each class in proportion (largest remainder)
    assert onp.all(onp.abs(onp.bincount(sub.labels) - want) < 1)
    assert task.full(100).texts == sub.texts  # fixed by the task: no seed
    assert task.full(10 ** 6).texts == full.texts and task.full().texts == full.texts
    for bad in (1, 0, "10", 2.5):
        with pytest.raises(ValueError, match="n must be"):
            task.full(bad)


def test_text_setting_val_split_scores_validation_texts_only(task):
    s = text_setting(TASK, k=4, seed=1, n_test=20, split="val", max_len=32)
    tok = M.tokenizer()

    def rows(texts):  # each text's ids cut to 32 tokens, padding dropped
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the truncation warning: cutting is the point here
            ids = onp.asarray(tok.encode(list(texts), max_len=32))[:, 0]
        return {tuple(int(i) for i in r if i) for r in ids}

    val_ids, test_ids = rows(task.val.texts), rows(task.test.texts)
    scored = [tuple(int(i) for i in row[0] if i) for x, _ in s["eval"] for row in x]
    assert s["n_eval"] == 20 == len(scored)
    assert all(r in val_ids for r in scored) and not any(r in test_ids for r in scored)
    assert onp.bincount(onp.concatenate([y for _, y in s["eval"]])).tolist() == [9, 11]  # val's 230 : 270
    assert s["x_train"].shape[2] <= 32 and s["max_len"] == 32 and s["k"] == 4
    assert s["train"].texts == task.few_shot(4, 1).texts
    assert s["label_ids"] == tok.word_ids(list(task.label_words))


def test_text_setting_full_data(task):
    s = text_setting(TASK, n_full=50, n_test=10)
    assert s["k"] is None and s["train"].texts == task.full(50).texts
    assert onp.array_equal(s["lengths"], s["x_train"][:, 2].sum(axis=1))


@pytest.mark.parametrize("kwargs, field", [({"split": "train"}, "split"), ({"max_len": 65}, "max_len"),
                                           ({"max_len": 2}, "max_len"), ({"n_full": 1}, "n_full"),
                                           ({"task": "digits"}, "task"), ({"n_test": 0}, "n_test")])
def test_text_setting_bad_input(kwargs, field):
    with pytest.raises(ValueError, match=field):
        text_setting(**kwargs)


def test_text_method_starts_prompt_at_the_label_words():
    m = text_method("prompt", (5, 7))
    assert isinstance(m, PromptTuning) and m.init_from == "text" and m.init_tokens == (5, 7)
    assert text_method("prompt").init_from == "uniform" and text_method("lora").options()["r"] == 4


def test_run_text_tour_make_on_trained_split_and_steps():
    seen = []
    rows = run_text_tour(methods=["lora", "prompt"], quick=True, split="val", lrs={"lora": 5e-3},
                         on_trained=lambda name, m, p: seen.append((name, type(m).__name__, sorted(p))),
                         log=lambda line: None, progress=False)
    assert [r["method"] for r in rows] == ["lora", "prompt"]
    assert rows[0]["lr"] == 5e-3 and rows[1]["lr"] == TEXT_LR.get("prompt", PromptTuning().suggested_lr)
    assert all(r["split"] == "val" and r["n_steps"] == 1 for r in rows)
    assert [s[0] for s in seen] == ["lora", "prompt"] and "lora" in seen[0][2] and "prompt" in seen[1][2]
    assert rows[1]["options"]["init_from"] == "text"  # the tour's prompt starts at the label words


def test_sweep_picks_the_best_mean_and_ties_go_to_the_smaller_rate(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "text_lr_sweep.py"
    spec = importlib.util.spec_from_file_location("text_lr_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    res = {"a": {1e-3: [0.7, 0.8], 3e-3: [0.8, 0.7], 1e-2: [0.6, 0.6]}, "b": {1e-2: [0.5], 3e-2: [0.9]}}
    assert sweep.picks(res) == {"a": 1e-3, "b": 3e-2}
    assert set(sweep.GRID) == set(run_text_tour.__globals__["TEXT_METHODS"])
    log = tmp_path / "log.txt"
    log.write_text("lora            lr 0.003   seed 1: val acc 0.815  (64 texts, 24 steps, 20.1 s)\n"
                   "noise line\nmagic           lr 0.1     seed 0: val acc 0.500\n"
                   "full            lr 0.0001  seed 0: val acc 0.840  (from the log)\n")
    assert sweep.read_log(log) == {("lora", 3e-3, 1): 0.815, ("full", 1e-4, 0): 0.84}
    lines = []
    got = sweep.sweep(["full"], [0], done={("full", lr, 0): 0.5 + lr for lr in sweep.GRID["full"]}, log=lines.append)
    assert got == {"full": {lr: [0.5 + lr] for lr in sweep.GRID["full"]}} and all("from the log" in ln for ln in lines)


@pytest.mark.parametrize("kwargs, field", [({"model": "bert"}, "model"), ({"model": "minilm", "task": "digits"},
                                                                            "task")])
def test_chapter_setup_model_bad_input(kwargs, field):
    from minipeft.chapter import setup

    with pytest.raises(ValueError, match=field):
        setup(None, **kwargs)

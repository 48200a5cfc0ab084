"""IMDB readers (experiments.sentiment.data) and the archive download (…download), on tiny fixtures.

No test touches the network: urlopen is replaced. One test reads the shared csv.gz when present.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.sentiment import data as D
from experiments.sentiment import download as DL

# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
TREE = {
    "train/pos/0_9.txt": "A fine film.<br /><br />Loved it.",
    "train/pos/12_7.txt": "Good enough.",
    "train/pos/2_10.txt": "Masterpiece!",
    "train/neg/1_1.txt": "Awful. Not worth it.",
    "train/neg/3_4.txt": "Meh, no.",
    "test/pos/5_8.txt": "Caf\u00e9 scenes were lovely.",
    "test/neg/4_2.txt": "Boring.",
    # ignored parts of the official layout
    "train/unsup/7_0.txt": "unlabelled",
    "train/urls_pos.txt": "http://www.imdb.com/title/tt0000001/usercomments",
    "train/labeledBow.feat": "1 0:3",
    "imdb.vocab": "the\nand",
}


def make_tree(root: Path, files: dict[str, str | bytes] = TREE) -> Path:
    top = root / "aclImdb"
    for rel, content in files.items():
        p = top / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return top


def write_csv(path: Path, text: str | bytes) -> Path:
    raw = text if isinstance(text, bytes) else text.encode("utf-8")
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


# ------------------------------------------------------------------------------------------------
# the official folder layout
# ------------------------------------------------------------------------------------------------
def test_read_aclimdb_dir_layout_and_order(tmp_path):
    top = make_tree(tmp_path)
    df = D.read_aclimdb_dir(top)
    assert list(df.columns) == list(D.COLUMNS)
    assert len(df) == 7  # unsup, urls, .feat, imdb.vocab ignored
    # split order, then neg before pos, then numeric id (12 after 2)
    assert df[["split", "label", "file_id", "rating"]].values.tolist() == [
        ["train", 0, 1, 1],
        ["train", 0, 3, 4],
        ["train", 1, 0, 9],
        ["train", 1, 2, 10],
        ["train", 1, 12, 7],
        ["test", 0, 4, 2],
        ["test", 1, 5, 8],
    ]
    assert df.loc[2, "review"] == TREE["train/pos/0_9.txt"]  # text as stored, <br /> included
    assert df.loc[6, "review"] == "Caf\u00e9 scenes were lovely."
    assert df["label"].dtype == np.int64 and df.attrs["skipped"] == {}
    # the parent of aclImdb/ works too, and load_imdb picks the folder reader
    pd.testing.assert_frame_equal(D.read_aclimdb_dir(tmp_path), df)
    pd.testing.assert_frame_equal(D.load_imdb(tmp_path), df)
    assert D.read_aclimdb_dir(top, splits=("test",))["split"].tolist() == ["test", "test"]


BAD_FILES = {
    "train/pos/20_9.txt": b"caf\xe9 in latin-1",  # undecodable
    "train/neg/21_3.txt": b"   \n ",  # empty review
    "train/neg/notes.txt": b"stray file",  # bad file name
    "train/pos/22_3.txt": b"rating 3 in pos/",  # rating contradicts folder
}


@pytest.mark.parametrize(
    "rel,reason",
    [
        ("train/pos/20_9.txt", "undecodable"),
        ("train/neg/21_3.txt", "empty_review"),
        ("train/neg/notes.txt", "bad_file_name"),
        ("train/pos/22_3.txt", "bad_rating"),
    ],
)
def test_read_aclimdb_dir_malformed_raises_naming_the_file(tmp_path, rel, reason):
    top = make_tree(tmp_path, {**TREE, rel: BAD_FILES[rel]})
    with pytest.raises(ValueError) as e:
        D.read_aclimdb_dir(top)
    assert rel in str(e.value) and reason in str(e.value) and "on_error='skip'" in str(e.value)


def test_read_aclimdb_dir_skip_counts_and_warns(tmp_path, caplog):
    top = make_tree(tmp_path, {**TREE, **BAD_FILES})
    with caplog.at_level(logging.WARNING, logger=D.__name__):
        df = D.read_aclimdb_dir(top, on_error="skip")
    assert len(df) == 7
    assert df.attrs["skipped"] == {"bad_file_name": 1, "bad_rating": 1, "empty_review": 1, "undecodable": 1}
    assert any("20_9.txt" in m for m in df.attrs["skipped_examples"])
    assert "skipped 4 malformed" in caplog.text


def test_read_aclimdb_dir_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no aclImdb layout"):
        D.read_aclimdb_dir(tmp_path)
    (tmp_path / "aclImdb" / "train" / "pos").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="train/neg"):
        D.read_aclimdb_dir(tmp_path)


# ------------------------------------------------------------------------------------------------
# CSV readers
# ------------------------------------------------------------------------------------------------
def test_two_column_csv(tmp_path):
    p = write_csv(
        tmp_path / "IMDB Dataset.csv",
        'review,sentiment\n"Great, truly.<br />Yes",positive\nDull,negative\n"multi\nline",Positive\n',
    )
    df = D.read_review_csv(p)
    assert df["review"].tolist() == ["Great, truly.<br />Yes", "Dull", "multi\nline"]
    assert df["label"].tolist() == [1, 0, 1]
    assert df["split"].tolist() == [None, None, None]
    assert "file_id" not in df and "rating" not in df
    with pytest.raises(ValueError, match="no split"):
        D.split_frames(df)
    with pytest.raises(ValueError, match="orig_split"):
        D.read_review_csv(p, require_split=True)
    pd.testing.assert_frame_equal(D.load_imdb(p), df)


def test_shared_format_csv_gz(tmp_path):
    p = write_csv(
        tmp_path / "aclImdb_50k.csv.gz",
        "review,sentiment,orig_split,file_id,rating\n"
        "Good,positive,train,3,8\nBad,negative,test,7,1\nFine,positive,test,9,10\n",
    )
    df = D.load_imdb(p)
    assert df[["label", "split", "file_id", "rating"]].values.tolist() == [
        [1, "train", 3, 8],
        [0, "test", 7, 1],
        [1, "test", 9, 10],
    ]
    parts = D.split_frames(df)
    assert len(parts["train"]) == 1 and len(parts["test"]) == 2
    # a folder holding the shared file is accepted too
    pd.testing.assert_frame_equal(D.load_imdb(tmp_path), df)


@pytest.mark.parametrize(
    "body,row,reason",
    [
        ("ok,positive\nalso ok,postive\n", 2, "unknown_label"),
        ("ok,positive\n,negative\n", 2, "empty_review"),
        ('ok,positive\n"   ",negative\n', 2, "empty_review"),
        (b"ok,positive\nbad \xff byte,negative\n", 2, "undecodable"),
        ("first,3\nok,positive\n", 1, "unknown_label"),
    ],
)
def test_csv_malformed_raises_naming_file_and_row(tmp_path, body, row, reason):
    head = b"review,sentiment\n"
    p = write_csv(tmp_path / "r.csv", head + (body if isinstance(body, bytes) else body.encode()))
    with pytest.raises(ValueError) as e:
        D.read_review_csv(p)
    msg = str(e.value)
    assert "r.csv" in msg and f"data row {row}:" in msg and reason in msg


def test_csv_skip_counts_each_reason(tmp_path, caplog):
    p = write_csv(
        tmp_path / "r.csv.gz",
        b"review,sentiment,orig_split,file_id,rating\n"
        b"good,positive,train,1,9\n"
        b"bad label,great,train,2,9\n"
        b",negative,test,3,1\n"
        b"bad \xfe bytes,negative,test,4,1\n"
        b"no split,negative,valid,5,1\n"
        b"bad rating,positive,test,6,3\n"
        b"bad id,negative,test,x,2\n"
        b"fine,negative,test,8,2\n",
    )
    with pytest.raises(ValueError, match="data row 2: unknown_label"):
        D.read_review_csv(p)
    with caplog.at_level(logging.WARNING, logger=D.__name__):
        df = D.read_review_csv(p, on_error="skip")
    assert df["review"].tolist() == ["good", "fine"]
    assert df["file_id"].tolist() == [1, 8]
    assert df.attrs["skipped"] == {
        "bad_file_id": 1,
        "bad_rating": 1,
        "empty_review": 1,
        "undecodable": 1,
        "unknown_label": 1,
        "unknown_split": 1,
    }
    assert "skipped 6 malformed" in caplog.text
    assert df.attrs["source"].endswith("r.csv.gz")


def test_csv_missing_column_is_an_error_even_when_skipping(tmp_path):
    p = write_csv(tmp_path / "r.csv", "text,sentiment\nhello,positive\n")
    for on_error in ("raise", "skip"):
        with pytest.raises(ValueError, match=r"r\.csv: missing column\(s\) review"):
            D.read_review_csv(p, on_error=on_error)
    p2 = write_csv(tmp_path / "s.csv", "review,stars\nhello,5\n")
    with pytest.raises(ValueError, match="sentiment"):
        D.read_review_csv(p2)


def test_csv_wrong_field_count(tmp_path):
    p = write_csv(tmp_path / "r.csv", "review,sentiment\nok,positive\nx,negative,extra\nfine,negative\n")
    with pytest.raises(ValueError, match="r.csv: malformed CSV"):
        D.read_review_csv(p)
    df = D.read_review_csv(p, on_error="skip")
    assert df["review"].tolist() == ["ok", "fine"] and df.attrs["skipped"] == {"bad_line": 1}


def test_on_error_value_checked(tmp_path):
    p = write_csv(tmp_path / "r.csv", "review,sentiment\nok,positive\n")
    with pytest.raises(ValueError, match="on_error"):
        D.read_review_csv(p, on_error="ignore")


# ------------------------------------------------------------------------------------------------
# choosing the source
# ------------------------------------------------------------------------------------------------
def test_load_imdb_env_var_and_argument(tmp_path, monkeypatch):
    a = write_csv(tmp_path / "a.csv", "review,sentiment\nfrom env,positive\n")
    b = write_csv(tmp_path / "b.csv", "review,sentiment\nfrom arg,negative\n")
    monkeypatch.setenv(D.DATA_ENV, str(a))
    assert D.load_imdb()["review"].tolist() == ["from env"]
    assert D.load_imdb(b)["review"].tolist() == ["from arg"]  # the argument wins
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError) as e:
        D.load_imdb()
    assert "$SCRATCH_RNN_IMDB" in str(e.value) and "experiments.sentiment.download" in str(e.value)


def test_load_imdb_nothing_found(tmp_path, monkeypatch):
    monkeypatch.delenv(D.DATA_ENV, raising=False)
    monkeypatch.setattr(D, "SHARED_CSV", tmp_path / "shared.csv.gz")
    monkeypatch.setattr(D, "LOCAL_DIRS", (tmp_path / "aclImdb",))
    with pytest.raises(FileNotFoundError) as e:
        D.load_imdb()
    msg = str(e.value)
    assert "shared.csv.gz" in msg and D.DATA_ENV in msg and "--data" in msg and "download" in msg
    # a downloaded folder is found once it exists
    make_tree(tmp_path)
    assert len(D.load_imdb()) == 7


def test_load_imdb_rejects_archive_and_unknown(tmp_path):
    (tmp_path / "aclImdb_v1.tar.gz").write_bytes(b"x")
    with pytest.raises(ValueError, match="extract it"):
        D.load_imdb(tmp_path / "aclImdb_v1.tar.gz")
    (tmp_path / "reviews.json").write_text("{}")
    with pytest.raises(ValueError, match="unrecognised"):
        D.load_imdb(tmp_path / "reviews.json")
    with pytest.raises(ValueError, match="without the aclImdb layout"):
        D.load_imdb(tmp_path)


def test_random_split_stratified_and_reproducible():
    df = D.make_frame([f"r{i}" for i in range(40)], [i % 2 for i in range(40)], [None] * 40)
    a = D.random_split(df, test_fraction=0.25, seed=3)
    b = D.random_split(df, test_fraction=0.25, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert df["split"].isna().all()  # the input is not modified
    assert (
        a.groupby(["split", "label"]).size()
        == pd.Series({("test", 0): 5, ("test", 1): 5, ("train", 0): 15, ("train", 1): 15})
    ).all()
    tr = D.split_frames(a)["train"]
    v = D.random_split(tr, test_fraction=0.2, split_names=("train", "valid"), only_missing=False)
    assert v["split"].value_counts().to_dict() == {"train": 24, "valid": 6}


# ------------------------------------------------------------------------------------------------
# the real shared copy
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(
    not D.SHARED_CSV.is_file(), reason=f"shared IMDB copy absent ({D.SHARED_CSV}); CI provides ../shared"
)
def test_shared_csv_official_split_and_balance():
    df = D.read_review_csv(D.SHARED_CSV, require_split=True)
    assert df.attrs["skipped"] == {}
    assert len(df) == 50_000
    counts = df.groupby(["split", "label"]).size().to_dict()
    assert counts == {("test", 0): 12_500, ("test", 1): 12_500, ("train", 0): 12_500, ("train", 1): 12_500}
    assert set(df["rating"][df["label"] == 0]) == {1, 2, 3, 4}
    assert set(df["rating"][df["label"] == 1]) == {7, 8, 9, 10}
    # (split, label, file_id) identifies a review file of the official layout
    assert not df.duplicated(["split", "label", "file_id"]).any()
    assert df["review"].duplicated().sum() == 418  # as the shared README says; kept, not dropped


# ------------------------------------------------------------------------------------------------
# download: no real network
# ------------------------------------------------------------------------------------------------
class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def tiny_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, text in [
            ("aclImdb/train/pos/0_9.txt", "good"),
            ("aclImdb/train/neg/0_1.txt", "bad"),
            ("aclImdb/test/pos/1_8.txt", "nice"),
            ("aclImdb/test/neg/1_2.txt", "poor"),
            ("aclImdb/train/unsup/0_0.txt", "unlabelled"),
            ("aclImdb/README", "readme"),
        ]:
            raw = text.encode()
            info = tarfile.TarInfo(rel)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def test_download_offline_fails_at_once_with_advice(tmp_path, monkeypatch, capsys):
    calls = []

    def offline(url, timeout=None):
        calls.append(timeout)
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    t = time.perf_counter()
    with pytest.raises(DL.DownloadError) as e:
        DL.download(tmp_path, progress=False)
    assert time.perf_counter() - t < 2.0
    assert calls == [DL.DEFAULT_TIMEOUT] and DL.DEFAULT_TIMEOUT <= 30
    msg = str(e.value)
    assert "name resolution" in msg and D.DATA_ENV in msg and "--data" in msg and "aclImdb_50k.csv.gz" in msg
    assert list(tmp_path.iterdir()) == []  # no partial file left
    assert DL.main(["--dest", str(tmp_path)]) == 1
    assert "could not download" in capsys.readouterr().err


def test_download_timeout_is_a_download_error(tmp_path, monkeypatch):
    def slow(url, timeout=None):
        raise TimeoutError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", slow)
    with pytest.raises(DL.DownloadError, match="timed out"):
        DL.fetch_archive(tmp_path, progress=False)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    wrong = b"<html>captive portal</html>"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(wrong))
    with pytest.raises(DL.ChecksumError) as e:
        DL.download(tmp_path, progress=False)
    msg = str(e.value)
    assert f"size {len(wrong)} bytes, expected {DL.SIZE}" in msg and DL.MD5 in msg and DL.SHA256 in msg
    assert list(tmp_path.iterdir()) == []
    # same size, wrong content: the hashes catch it (sha256 and md5 both named)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(wrong))
    with pytest.raises(DL.ChecksumError, match="md5 .*sha256"):
        DL.fetch_archive(tmp_path, progress=False, size=len(wrong))
    assert list(tmp_path.iterdir()) == []


def test_download_verifies_then_extracts_atomically(tmp_path, monkeypatch):
    payload = tiny_archive()
    sums = dict(md5=hashlib.md5(payload).hexdigest(), sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    calls = []

    def serve(url, timeout=None):
        calls.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    root = DL.download(tmp_path, progress=False, **sums)
    assert root == tmp_path / "aclImdb" and (root / ".complete").is_file()
    assert (tmp_path / DL.ARCHIVE_NAME).read_bytes() == payload
    assert not (root / "train" / "unsup").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([DL.ARCHIVE_NAME, "aclImdb"])  # no temporaries
    df = D.load_imdb(root)
    assert df[["split", "label"]].values.tolist() == [["train", 0], ["train", 1], ["test", 0], ["test", 1]]
    # a second call reuses the extracted folder without any network
    assert DL.download(tmp_path, progress=False, **sums) == root and len(calls) == 1
    # --force re-extracts from the verified archive, still without downloading
    DL.download(tmp_path, progress=False, force=True, with_unsup=True, **sums)
    assert len(calls) == 1 and (root / "train" / "unsup" / "0_0.txt").is_file()

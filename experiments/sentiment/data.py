"""Readers for the Large Movie Review Dataset (IMDB, Maas et al. 2011).

Every reader returns a :class:`pandas.DataFrame` with the columns

- ``review`` (str): the review text as stored (HTML ``<br />`` included; cleaning is :mod:`.text`'s job),
- ``label`` (int): 0 = negative, 1 = positive,
- ``split`` (object): ``"train"`` / ``"test"`` (the official split) or ``None`` when the source has none,
- ``file_id``, ``rating`` (int): where the source has them (the official layout and the shared CSV).

Three layouts are read:

- the official ``aclImdb/`` folder (``train|test/pos|neg/<id>_<rating>.txt``; ``unsup`` is ignored),
  :func:`read_aclimdb_dir`;
- the common two-column CSV ``review,sentiment`` (``positive``/``negative``), and the shared
  ``aclImdb_50k.csv.gz`` (``review,sentiment,orig_split,file_id,rating``), both :func:`read_review_csv`;
- :func:`load_imdb` picks one by path: the argument, else ``$SCRATCH_RNN_IMDB``, else the shared copy
  ``../shared/datasets/imdb/aclImdb_50k.csv.gz`` beside the project root, else an extracted download.

Malformed input (a missing column, an unknown label, an empty review, bytes that are not UTF-8, a bad
file name or rating) raises :class:`ValueError` naming the file and the 1-based data row (CSV; the
header is not counted) or the file name (folder layout). With ``on_error="skip"`` such rows are
skipped and counted instead: ``df.attrs["skipped"]`` maps each reason to its count,
``df.attrs["skipped_examples"]`` lists the first few places, and a warning is logged. Nothing is
dropped silently. Duplicate reviews are *not* malformed (the dataset itself holds 418 repeated texts)
and are kept.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: The project root (the folder holding ``pyproject.toml``): experiments/sentiment/data.py -> ../..
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: The environment variable that points the experiment at a local copy (folder, .csv or .csv.gz).
DATA_ENV = "SCRATCH_RNN_IMDB"
#: The read-only shared copy, relative to the project root.
SHARED_CSV = PROJECT_ROOT.parent / "shared" / "datasets" / "imdb" / "aclImdb_50k.csv.gz"
#: Where ``python -m experiments.sentiment.download`` extracts the official archive (git-ignored).
DOWNLOAD_DIR = PROJECT_ROOT / "datasets" / "cache"
#: Other places an extracted ``aclImdb/`` folder is looked for (``/datasets/aclImdb/`` is git-ignored).
LOCAL_DIRS = (PROJECT_ROOT / "datasets" / "aclImdb", DOWNLOAD_DIR / "aclImdb")

COLUMNS = ("review", "label", "split", "file_id", "rating")
SPLITS = ("train", "test")
LABEL_NAMES = {0: "negative", 1: "positive"}
_LABEL_VALUES = {"positive": 1, "pos": 1, "1": 1, "negative": 0, "neg": 0, "0": 0}
_FILE_RE = re.compile(r"^(\d+)_(\d+)\.txt$")
_SURROGATE_RE = re.compile("[\udc80-\udcff]")  # what encoding_errors="surrogateescape" leaves for bad bytes
_MAX_EXAMPLES = 20

OnError = Literal["raise", "skip"]


def how_to_point_at_data() -> str:
    """The advice printed whenever the data cannot be found or downloaded."""
    return (
        f"Point the experiment at a local copy of the Large Movie Review Dataset: set {DATA_ENV}=PATH "
        "(or pass the experiment's --data PATH), where PATH is an extracted aclImdb/ folder, "
        "a review,sentiment CSV, or the shared aclImdb_50k.csv.gz. "
        f"The shared copy is used by default when it exists at {SHARED_CSV}. "
        "With network access, `python -m experiments.sentiment.download` fetches and verifies the "
        f"official archive into {DOWNLOAD_DIR} (git-ignored), which is then found automatically."
    )


# --------------------------------------------------------------------------------------------
# problems: raise, or skip and count
# --------------------------------------------------------------------------------------------
class _Problems:
    """Collects (place, reason, detail); raises on the first under on_error='raise'."""

    def __init__(self, source: Path | str, on_error: OnError):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.source = str(source)
        self.on_error = on_error
        self.counts: dict[str, int] = {}
        self.examples: list[str] = []

    def add(self, place: str, reason: str, detail: str) -> None:
        msg = f"{self.source}: {place}: {reason}: {detail}"
        if self.on_error == "raise":
            raise ValueError(msg + " (pass on_error='skip' to skip and count malformed rows)")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(msg)

    def attach(self, df: pd.DataFrame) -> pd.DataFrame:
        df.attrs["source"] = self.source
        df.attrs["skipped"] = dict(sorted(self.counts.items()))
        df.attrs["skipped_examples"] = list(self.examples)
        if self.counts:
            total = sum(self.counts.values())
            log.warning(
                "%s: skipped %d malformed row(s): %s; first: %s",
                self.source,
                total,
                df.attrs["skipped"],
                self.examples[0],
            )
        return df


def make_frame(reviews, labels, splits, file_ids=None, ratings=None) -> pd.DataFrame:
    """A DataFrame in the readers' format (``split`` as object so that ``None`` stays ``None``)."""
    data = {
        "review": pd.Series(list(reviews), dtype=object),
        "label": pd.Series(np.asarray(labels, dtype=np.int64)),
        "split": pd.Series(list(splits), dtype=object),
    }
    if file_ids is not None:
        data["file_id"] = pd.Series(np.asarray(file_ids, dtype=np.int64))
    if ratings is not None:
        data["rating"] = pd.Series(np.asarray(ratings, dtype=np.int64))
    return pd.DataFrame(data)


def _rating_problem(rating: int, label: int) -> str | None:
    """The dataset's rule: negative = rating 1-4, positive = rating 7-10."""
    if not 1 <= rating <= 10:
        return f"rating {rating} outside 1-10"
    if (label == 1 and rating < 7) or (label == 0 and rating > 4):
        return f"rating {rating} contradicts label {LABEL_NAMES[label]} (negative 1-4, positive 7-10)"
    return None


# --------------------------------------------------------------------------------------------
# the official folder layout
# --------------------------------------------------------------------------------------------
def find_aclimdb_root(path: str | os.PathLike) -> Path | None:
    """The folder holding ``train/`` and/or ``test/``: ``path`` itself or ``path/aclImdb``."""
    p = Path(path)
    for cand in (p, p / "aclImdb"):
        if (cand / "train").is_dir() or (cand / "test").is_dir():
            return cand
    return None


def read_aclimdb_dir(
    path: str | os.PathLike, *, splits: Iterable[str] = SPLITS, on_error: OnError = "raise"
) -> pd.DataFrame:
    """Read the official ``aclImdb/`` layout: ``<split>/{pos,neg}/<id>_<rating>.txt``.

    ``path`` is the ``aclImdb`` folder or its parent. ``train/unsup`` and every file outside the
    ``pos``/``neg`` folders (``urls_*.txt``, ``*.feat``, ``imdb.vocab``) are ignored. Rows come in a
    fixed order: split as given, then negative before positive, then by numeric id.
    A file whose name is not ``<id>_<rating>.txt``, whose rating contradicts its folder, whose bytes
    are not UTF-8, or whose text is blank is malformed (see the module docstring).
    """
    root = find_aclimdb_root(path)
    if root is None:
        raise FileNotFoundError(
            f"{path}: no aclImdb layout here (expected train/ and test/ folders, "
            f"or an aclImdb/ folder holding them). {how_to_point_at_data()}"
        )
    problems = _Problems(root, on_error)
    reviews, labels, split_col, ids, ratings = [], [], [], [], []
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        for label, folder in ((0, "neg"), (1, "pos")):
            d = root / split / folder
            if not d.is_dir():
                raise FileNotFoundError(
                    f"{d}: missing folder of the aclImdb layout "
                    f"({root} has no {split}/{folder}/). {how_to_point_at_data()}"
                )
            entries = []
            for f in d.iterdir():
                rel = f"{split}/{folder}/{f.name}"
                m = _FILE_RE.match(f.name)
                if m is None or not f.is_file():
                    problems.add(f"file {rel}", "bad_file_name", "expected <id>_<rating>.txt")
                    continue
                entries.append((int(m.group(1)), int(m.group(2)), f, rel))
            entries.sort(key=lambda e: e[0])
            for fid, rating, f, rel in entries:
                bad = _rating_problem(rating, label)
                if bad is not None:
                    problems.add(f"file {rel}", "bad_rating", bad)
                    continue
                raw = f.read_bytes()
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    problems.add(f"file {rel}", "undecodable", f"not UTF-8 ({e})")
                    continue
                if not text.strip():
                    problems.add(f"file {rel}", "empty_review", "the review text is blank")
                    continue
                reviews.append(text)
                labels.append(label)
                split_col.append(split)
                ids.append(fid)
                ratings.append(rating)
    return problems.attach(make_frame(reviews, labels, split_col, ids, ratings))


# --------------------------------------------------------------------------------------------
# CSV: review,sentiment[,orig_split|split][,file_id][,rating]
# --------------------------------------------------------------------------------------------
def _read_csv_raw(path: Path, problems: _Problems) -> pd.DataFrame:
    kw = dict(dtype=object, keep_default_na=False, encoding="utf-8", encoding_errors="surrogateescape")
    try:
        return pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError as e:
        raise ValueError(f"{path}: empty file, no header ({e})") from e
    except pd.errors.ParserError as e:
        if problems.on_error == "raise":
            raise ValueError(
                f"{path}: malformed CSV: {e} (pass on_error='skip' to skip and count "
                "lines with the wrong number of fields)"
            ) from e
    bad_lines: list[list[str]] = []

    def on_bad(fields):
        bad_lines.append(fields)
        return None

    df = pd.read_csv(path, engine="python", on_bad_lines=on_bad, **kw)
    for fields in bad_lines:
        problems.add("a line", "bad_line", f"wrong number of fields ({len(fields)}): {str(fields)[:80]}")
    return df


def read_review_csv(
    path: str | os.PathLike, *, on_error: OnError = "raise", require_split: bool = False
) -> pd.DataFrame:
    """Read a CSV (optionally gzip'd) of reviews.

    Required columns: ``review`` and ``sentiment`` (``positive``/``negative``, also ``pos``/``neg``/
    ``1``/``0``, any case) or ``label`` (same values). Optional: ``orig_split`` or ``split``
    (``train``/``test``), ``file_id``, ``rating`` (1-4 negative, 7-10 positive). Without a split
    column ``split`` is ``None`` for every row (``require_split=True`` makes that an error).
    Rows are kept in file order; errors name the 1-based data row (the header is not counted).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. {how_to_point_at_data()}")
    problems = _Problems(path, on_error)
    raw = _read_csv_raw(path, problems)
    cols = {str(c).strip().lower(): c for c in raw.columns}
    label_col = cols.get("sentiment", cols.get("label"))
    missing = [name for name, c in (("review", cols.get("review")), ("sentiment (or label)", label_col)) if c is None]
    split_col = cols.get("orig_split", cols.get("split"))
    if require_split and split_col is None:
        missing.append("orig_split (or split)")
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {list(raw.columns)}")
    id_col, rating_col = cols.get("file_id"), cols.get("rating")

    n = len(raw)
    text = raw[cols["review"]].to_numpy()
    lab = raw[label_col].to_numpy()
    spl = raw[split_col].to_numpy() if split_col is not None else None
    fid = raw[id_col].to_numpy() if id_col is not None else None
    rat = raw[rating_col].to_numpy() if rating_col is not None else None
    keep = np.zeros(n, dtype=bool)
    labels = np.zeros(n, dtype=np.int64)
    splits: list = [None] * n
    ids = np.zeros(n, dtype=np.int64)
    ratings = np.zeros(n, dtype=np.int64)
    for i in range(n):
        place = f"data row {i + 1}"
        t = text[i]
        if not isinstance(t, str) or not t.strip():
            problems.add(place, "empty_review", "the review text is blank")
            continue
        if _SURROGATE_RE.search(t):
            problems.add(place, "undecodable", "the review holds bytes that are not UTF-8")
            continue
        v = _LABEL_VALUES.get(str(lab[i]).strip().lower())
        if v is None:
            problems.add(place, "unknown_label", f"{str(lab[i])!r} is not positive/negative")
            continue
        labels[i] = v
        if spl is not None:
            s = str(spl[i]).strip().lower()
            if s not in SPLITS:
                problems.add(place, "unknown_split", f"{str(spl[i])!r} is not train/test")
                continue
            splits[i] = s
        if fid is not None:
            try:
                ids[i] = int(str(fid[i]).strip())
            except ValueError:
                problems.add(place, "bad_file_id", f"{str(fid[i])!r} is not an integer")
                continue
        if rat is not None:
            try:
                r = int(str(rat[i]).strip())
            except ValueError:
                problems.add(place, "bad_rating", f"{str(rat[i])!r} is not an integer")
                continue
            bad = _rating_problem(r, v)
            if bad is not None:
                problems.add(place, "bad_rating", bad)
                continue
            ratings[i] = r
        keep[i] = True
    df = make_frame(
        text[keep],
        labels[keep],
        [s for s, k in zip(splits, keep) if k],
        ids[keep] if fid is not None else None,
        ratings[keep] if rat is not None else None,
    )
    return problems.attach(df)


# --------------------------------------------------------------------------------------------
# choosing a source
# --------------------------------------------------------------------------------------------
def resolve_source(source: str | os.PathLike | None = None) -> Path:
    """The path :func:`load_imdb` reads: ``source``, else ``$SCRATCH_RNN_IMDB``, else the first of
    the shared CSV and the local ``aclImdb/`` folders that exists. FileNotFoundError otherwise."""
    if source is None and os.environ.get(DATA_ENV):
        source, origin = os.environ[DATA_ENV], f"${DATA_ENV}"
    else:
        origin = "the argument"
    if source is not None:
        p = Path(source).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{p} (from {origin}) does not exist. {how_to_point_at_data()}")
        return p
    tried = [SHARED_CSV, *LOCAL_DIRS]
    for p in tried:
        if p.exists():
            return p
    raise FileNotFoundError(
        "IMDB data not found; looked at " + ", ".join(map(str, tried)) + ". " + how_to_point_at_data()
    )


def load_imdb(source: str | os.PathLike | None = None, *, on_error: OnError = "raise") -> pd.DataFrame:
    """Load the labelled IMDB reviews from ``source`` (see :func:`resolve_source`).

    A folder is read as the official layout (the ``aclImdb`` folder or its parent); a ``.csv`` /
    ``.csv.gz`` file as a review CSV. ``df.attrs["source"]`` names what was read.
    """
    p = resolve_source(source)
    if p.is_dir():
        if find_aclimdb_root(p) is not None:
            return read_aclimdb_dir(p, on_error=on_error)
        if (p / SHARED_CSV.name).is_file():
            return read_review_csv(p / SHARED_CSV.name, on_error=on_error, require_split=True)
        raise ValueError(
            f"{p}: a folder without the aclImdb layout (train|test/pos|neg/*.txt) "
            f"or {SHARED_CSV.name}. {how_to_point_at_data()}"
        )
    name = p.name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        raise ValueError(
            f"{p}: this is the archive; extract it (tar xzf {p.name}) and point at the "
            "aclImdb/ folder, or run `python -m experiments.sentiment.download`."
        )
    if name.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip")):
        return read_review_csv(p, on_error=on_error, require_split=(name == SHARED_CSV.name.lower()))
    raise ValueError(
        f"{p}: unrecognised data source (expected an aclImdb/ folder or a .csv/.csv.gz). " + how_to_point_at_data()
    )


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
def split_frames(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{"train": ..., "test": ...}`` by the ``split`` column (index reset, attrs kept).

    Raises ValueError when any row has no split: report test accuracy on the official split, and
    use :func:`random_split` only for sources without one (say so when reporting)."""
    if df["split"].isna().any():
        raise ValueError(
            f"{df['split'].isna().sum()} row(s) have no split (source "
            f"{df.attrs.get('source', '?')}); the official train/test split is needed "
            "for reported accuracy, see random_split() for sources without one"
        )
    return {s: df[df["split"] == s].reset_index(drop=True) for s in SPLITS if (df["split"] == s).any()}


def stratified_pick(labels, size, rng: np.random.Generator) -> np.ndarray:
    """Positions of a stratified sample of ``labels``: the project's one stratified sampler.

    ``size``: the total (split as evenly as possible over the labels, in sorted label order) or a
    dict label -> count. For each label in sorted order, its rows are permuted by ``rng`` and the
    first ``count`` taken. Returns the positions, label by label (sort them for the original order).
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if not isinstance(size, dict):
        size = {lab: size // len(classes) + (1 if i < size % len(classes) else 0) for i, lab in enumerate(classes)}
    picked = []
    for lab in classes:
        rows = np.flatnonzero(labels == lab)
        k = size.get(lab, 0)
        if k > len(rows):
            raise ValueError(f"size: asked for {k} rows of label {lab}, but it has only {len(rows)}")
        picked.append(rows[rng.permutation(len(rows))[:k]])
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)


def random_split(
    df: pd.DataFrame,
    *,
    test_fraction: float = 0.5,
    seed: int = 0,
    split_names: tuple[str, str] = ("train", "test"),
    only_missing: bool = True,
) -> pd.DataFrame:
    """A copy of ``df`` whose rows without a split get one at random, stratified by label.

    Also the way to carve a validation set out of the training split:
    ``random_split(train, test_fraction=0.1, split_names=("train", "valid"), only_missing=False)``.
    (The official train and test sets hold disjoint movies; a random split of one of them does not,
    so its accuracy is a little optimistic.)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    out = df.copy()
    todo = np.flatnonzero(np.ones(len(df), bool) if not only_missing else df["split"].isna().to_numpy())
    split = out["split"].to_numpy(dtype=object).copy()
    labels = out["label"].to_numpy()[todo]
    counts = {lab: int(round(test_fraction * np.sum(labels == lab))) for lab in np.unique(labels)}
    test = todo[stratified_pick(labels, counts, np.random.default_rng(seed))]
    split[todo] = split_names[0]
    split[test] = split_names[1]
    out["split"] = pd.Series(split, index=out.index, dtype=object)
    return out

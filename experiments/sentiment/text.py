"""The text pipeline: cleaning, NLTK tokenization, stopwords, vocabulary, encoding, bucketed batches.

It follows the original notebook (lowercase, keep letters only, ``nltk.word_tokenize``, drop NLTK's
English stopwords) with its two bugs fixed:

1. The notebook called ``re.sub(pattern, " ", text, re.I | re.A)``. The fourth positional argument
   of ``re.sub`` is ``count``, not ``flags``: ``re.I | re.A == 258``, so only the first 258 matches
   were replaced and every non-letter after them survived. Here the flags go by keyword.
2. The reviews hold HTML line breaks ``<br />``; keeping letters only turned each into a ``br``
   token (about 200,000 of them). Here HTML tags are removed (and entities unescaped) first.

Steps of :func:`clean_text` / :func:`tokenize`, each switchable in :class:`TextConfig`: strip HTML
tags -> fold accents to ASCII (``café`` -> ``cafe`` rather than ``caf``) -> lowercase -> replace every
run of non-letters by a space -> ``nltk.word_tokenize(text, preserve_line=True)`` (no punkt data
needed; on letters-only text it equals ``str.split`` except that it splits ``cannot`` -> ``can not``,
``gonna`` -> ``gon na`` and a few such) -> drop English stopwords (optionally keeping the negations).

Sequences are truncated to their *first* ``max_len`` tokens. The vocabulary is built from the
training split only; id 0 is ``<pad>``, id 1 is ``<unk>``.

Tokenizing the 50,000 reviews takes about half a minute, so :func:`preprocess` caches the token
ids on disk (``cache/sentiment/`` at the project root, git-ignored), keyed by a hash of the
tokenization settings, the tokenizing code, the NLTK version, the stopword list and the review
texts themselves.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import html
import json
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratch_rnn.fileio import atomic_write

from .data import PROJECT_ROOT

log = logging.getLogger(__name__)

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
#: The negations NLTK's English stopword list holds, kept by ``TextConfig(keep_negations=True)``.
NEGATIONS = ("not", "no", "nor")
#: What NLTK's ``n't`` stopwords become once only letters are kept (``didn't`` -> ``didn`` + ``t``);
#: also kept by ``keep_negations=True``. (``won`` and ``don`` are ambiguous: "won the award", "Don".)
NEGATED_FORMS = (
    "ain",
    "aren",
    "couldn",
    "didn",
    "doesn",
    "don",
    "hadn",
    "hasn",
    "haven",
    "isn",
    "mightn",
    "mustn",
    "needn",
    "shan",
    "shouldn",
    "wasn",
    "weren",
    "won",
    "wouldn",
)
#: The project's shared NLTK data, used when NLTK_DATA is unset.
SHARED_NLTK_DATA = PROJECT_ROOT.parent / "shared" / "nltk_data"
#: Default on-disk cache of token ids (``/cache/`` is git-ignored); ``$SCRATCH_RNN_CACHE`` overrides.
DEFAULT_CACHE_DIR = Path(os.environ.get("SCRATCH_RNN_CACHE", PROJECT_ROOT / "cache")) / "sentiment"
#: Bump when the pipeline's code changes what it produces, to invalidate old caches.
PIPELINE_VERSION = 1

TOKENIZERS = ("nltk", "split")
# HTML tags seen in IMDB reviews (<br />, <i>, <em>, <hr>, ...); pseudo-tags like <grin> or <SPOILER> and
# bare "<" (e.g. "<3", "a < b") are left to the letters-only step.
_HTML_TAG = re.compile(
    r"</?(?:a|b|br|div|em|font|h[1-6]|hr|i|li|ol|p|s|small|span|strong|sub|sup"
    r"|u|ul)\b[^<>]*>",
    flags=re.IGNORECASE,
)
_NON_LETTERS = re.compile(r"[^a-z]+", flags=re.IGNORECASE | re.ASCII)


@dataclass(frozen=True)
class TextConfig:
    """Settings of the text pipeline (hashable; part of the cache key).

    The defaults follow the notebook (lowercase, letters only, NLTK tokens, stopwords removed) with
    its bugs fixed. ``max_vocab`` counts every id, ``<pad>`` and ``<unk>`` included (so it is the row
    count of an embedding matrix); ``None`` keeps every token seen ``min_freq`` times in training.
    ``max_len`` keeps the first ``max_len`` tokens of a review (``None``: no truncation).
    """

    lowercase: bool = True
    strip_html: bool = True  # remove <br /> and other HTML tags, unescape &amp; etc.
    ascii_fold: bool = True  # café -> cafe before keeping ASCII letters
    letters_only: bool = True  # replace every non-letter by a space (flags= passed correctly)
    tokenizer: str = "nltk"  # "nltk": nltk.word_tokenize(preserve_line=True); "split": str.split
    remove_stopwords: bool = True  # NLTK's English list (198 words), as the notebook did
    keep_negations: bool = False  # keep not/no/nor and the n't forms (didn, isn, ...) when removing
    max_vocab: int | None = 20_000
    min_freq: int = 2
    max_len: int | None = 400

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, not {self.tokenizer!r}")
        if self.max_vocab is not None and self.max_vocab < 3:
            raise ValueError(f"max_vocab counts <pad> and <unk>, so it must be >= 3 (got {self.max_vocab})")
        if self.min_freq < 1:
            raise ValueError(f"min_freq must be >= 1 (got {self.min_freq})")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"max_len must be >= 1 or None (got {self.max_len})")

    def tokenization_fields(self) -> dict:
        """The settings that change the token sequences (the rest act on ids, cheaply)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("max_vocab", "min_freq", "max_len")}

    def replace(self, **changes) -> TextConfig:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------
# NLTK data
# --------------------------------------------------------------------------------------------
class NltkDataMissing(LookupError):
    """NLTK's stopword list (or another data package) cannot be found."""


def _nltk():
    import nltk

    if not os.environ.get("NLTK_DATA") and SHARED_NLTK_DATA.is_dir() and str(SHARED_NLTK_DATA) not in nltk.data.path:
        nltk.data.path.append(str(SHARED_NLTK_DATA))
    return nltk


def nltk_data_advice(package: str) -> str:
    return (
        f"NLTK data package '{package}' not found (searched: {_nltk().data.path}). In this project "
        f"set NLTK_DATA to the shared copy (from the project root: export NLTK_DATA=../shared/nltk_data; "
        f"used automatically when NLTK_DATA is unset and {SHARED_NLTK_DATA} exists); elsewhere run "
        "`python -m nltk.downloader stopwords punkt_tab`."
    )


@functools.cache
def english_stopwords() -> frozenset[str]:
    """NLTK's English stopword list; :class:`NltkDataMissing` with the fix when it is absent."""
    nltk = _nltk()
    try:
        root = nltk.data.find("corpora/stopwords")
    except LookupError as e:
        raise NltkDataMissing(nltk_data_advice("stopwords")) from e
    from nltk.corpus.reader import WordListCorpusReader

    try:
        words = WordListCorpusReader(root, ["english"]).words("english")
    except (OSError, LookupError) as e:
        raise NltkDataMissing(nltk_data_advice("stopwords") + f" ({e})") from e
    return frozenset(words)


def stopword_set(cfg: TextConfig) -> frozenset[str]:
    """The words ``cfg`` removes (empty when ``remove_stopwords`` is off)."""
    if not cfg.remove_stopwords:
        return frozenset()
    sw = english_stopwords()
    if cfg.keep_negations:
        sw = sw - set(NEGATIONS) - set(NEGATED_FORMS) - {w + "'t" for w in NEGATED_FORMS}
    return frozenset(sw)


# --------------------------------------------------------------------------------------------
# cleaning and tokenizing one review
# --------------------------------------------------------------------------------------------
def clean_text(text: str, cfg: TextConfig = TextConfig()) -> str:
    """HTML tags -> accents -> lowercase -> letters only, as ``cfg`` says."""
    if cfg.strip_html:
        text = html.unescape(_HTML_TAG.sub(" ", text))
    if cfg.ascii_fold and not text.isascii():
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
    if cfg.lowercase:
        text = text.lower()
    if cfg.letters_only:
        text = _NON_LETTERS.sub(" ", text)
    return text


def _word_tokenize(text: str) -> list[str]:
    """NLTK's Treebank tokenizer without sentence splitting (needs no punkt data)."""
    import nltk

    return nltk.word_tokenize(text, preserve_line=True)


def tokenize(text: str, cfg: TextConfig = TextConfig(), stopwords: frozenset[str] | None = None) -> list[str]:
    """One review -> its tokens (cleaned, tokenized, stopwords removed as ``cfg`` says)."""
    cleaned = clean_text(text, cfg)
    toks = _word_tokenize(cleaned) if cfg.tokenizer == "nltk" else cleaned.split()
    sw = stopword_set(cfg) if stopwords is None else stopwords
    return [t for t in toks if t not in sw] if sw else toks


_TOKENIZING_CODE = (clean_text, tokenize, _word_tokenize, stopword_set)


def _tokenize_chunk(args) -> list[list[str]]:
    texts, cfg, sw = args
    return [tokenize(t, cfg, sw) for t in texts]


def tokenize_corpus(
    texts: Sequence[str], cfg: TextConfig = TextConfig(), *, progress: bool = True, workers: int = 1, chunk: int = 500
) -> list[list[str]]:
    """Tokenize many reviews, with a tqdm bar; ``workers > 1`` forks that many processes."""
    from tqdm import tqdm

    sw = stopword_set(cfg)
    texts = list(texts)
    chunks = [(texts[i : i + chunk], cfg, sw) for i in range(0, len(texts), chunk)]
    out: list[list[str]] = []
    with tqdm(total=len(texts), desc="tokenizing", unit=" reviews", disable=not progress) as bar:
        if workers > 1 and len(chunks) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
                for res in ex.map(_tokenize_chunk, chunks):
                    out.extend(res)
                    bar.update(len(res))
        else:
            for c in chunks:
                res = _tokenize_chunk(c)
                out.extend(res)
                bar.update(len(res))
    return out


# --------------------------------------------------------------------------------------------
# a tokenized corpus, stored compactly (and cached)
# --------------------------------------------------------------------------------------------
@dataclass
class TokenizedCorpus:
    """Token sequences as ids into ``types`` (every distinct token, first-seen order), concatenated.

    Review ``i`` is ``types[token_ids[offsets[i]:offsets[i+1]]]``. These ids are *not* model ids:
    :func:`build_vocab` and :func:`encode_corpus` map them into a :class:`Vocab`.
    """

    types: list[str]
    token_ids: np.ndarray  # int32, all reviews concatenated
    offsets: np.ndarray  # int64, len(reviews) + 1
    config: TextConfig

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def tokens(self, i: int) -> list[str]:
        return [self.types[j] for j in self.token_ids[self.offsets[i] : self.offsets[i + 1]]]

    def token_lists(self) -> list[list[str]]:
        return [self.tokens(i) for i in range(len(self))]

    def counts(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Occurrences of each type over ``rows`` (all reviews by default)."""
        ids = self.token_ids if rows is None else self.token_ids[self.token_mask(rows)]
        return np.bincount(ids, minlength=len(self.types))

    def token_mask(self, rows) -> np.ndarray:
        """Boolean mask over ``token_ids`` selecting the tokens of ``rows`` (indices or a mask)."""
        sel = np.zeros(len(self), dtype=bool)
        sel[rows] = True
        return np.repeat(sel, self.lengths)

    @classmethod
    def from_token_lists(cls, token_lists: Iterable[Sequence[str]], config: TextConfig) -> TokenizedCorpus:
        index: dict[str, int] = {}
        ids: list[int] = []
        offsets = [0]
        for toks in token_lists:
            ids.extend(index.setdefault(t, len(index)) for t in toks)
            offsets.append(len(ids))
        return cls(list(index), np.asarray(ids, dtype=np.int32), np.asarray(offsets, dtype=np.int64), config)

    def save(self, path: str | os.PathLike, meta: Mapping | None = None) -> None:
        """Write an .npz atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        m = {"config": dataclasses.asdict(self.config), **(meta or {})}
        arrays = dict(
            token_ids=self.token_ids,
            offsets=self.offsets,
            types=np.frombuffer("\n".join(self.types).encode("utf-8"), dtype=np.uint8),
            meta=np.frombuffer(json.dumps(m).encode("utf-8"), dtype=np.uint8),
        )
        atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[TokenizedCorpus, dict]:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
            raw_types = z["types"].tobytes().decode("utf-8")
            types = raw_types.split("\n") if raw_types else []
            corpus = cls(types, z["token_ids"], z["offsets"], TextConfig(**meta["config"]))
        return corpus, meta


def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


@functools.cache
def _code_digest() -> str:
    """The source of the functions and patterns that make tokens, so that editing them (not just
    bumping PIPELINE_VERSION) invalidates old caches. (The functions as defined, not as patched.)"""
    import inspect

    parts = []
    for f in _TOKENIZING_CODE:
        try:
            parts.append(inspect.getsource(f))
        except (OSError, TypeError):  # no source file (frozen install): the bytecode will do
            parts.append(f.__code__.co_code.hex())
    parts += [_HTML_TAG.pattern, _NON_LETTERS.pattern, repr(NEGATIONS), repr(NEGATED_FORMS)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def cache_key(texts: Sequence[str], cfg: TextConfig) -> str:
    """Hash of what the tokens depend on: tokenization settings, the pipeline's code (version and
    source of the tokenizing functions), NLTK's version, the stopword list used, and the review
    texts (count, order and content)."""
    import nltk

    ident = {
        "pipeline_version": PIPELINE_VERSION,
        "code": _code_digest(),
        "nltk": nltk.__version__,
        "tokenization": cfg.tokenization_fields(),
        "stopwords": sorted(stopword_set(cfg)),
        "texts": _texts_digest(texts),
        "n_texts": len(texts),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def preprocess(
    texts: Sequence[str],
    cfg: TextConfig = TextConfig(),
    *,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    progress: bool = True,
    workers: int = 1,
) -> TokenizedCorpus:
    """Tokenize ``texts`` under ``cfg``, or load the result of an earlier identical call from
    ``cache_dir`` (``None``: no cache). The cache file is written atomically."""
    texts = list(texts)
    path = None
    if cache_dir is not None:
        key = cache_key(texts, cfg)
        path = Path(cache_dir) / f"tokens-{key[:32]}.npz"
        if path.is_file():
            try:
                corpus, meta = TokenizedCorpus.load(path)
                if meta.get("key") == key and len(corpus) == len(texts):
                    log.info("token cache hit: %s", path)
                    return dataclasses.replace(corpus, config=cfg)
                log.warning("token cache %s does not match; tokenizing again", path)
            except Exception as e:  # a truncated or foreign file: recompute, then overwrite
                log.warning("token cache %s unreadable (%s); tokenizing again", path, e)
    corpus = TokenizedCorpus.from_token_lists(tokenize_corpus(texts, cfg, progress=progress, workers=workers), cfg)
    if path is not None:
        try:
            corpus.save(path, meta={"key": key, "n_texts": len(texts)})
        except OSError as e:  # a read-only checkout: carry on without the cache
            log.warning("could not write the token cache %s (%s)", path, e)
    return corpus


# --------------------------------------------------------------------------------------------
# vocabulary
# --------------------------------------------------------------------------------------------
class Vocab:
    """Token <-> id. ``itos[0] == "<pad>"``, ``itos[1] == "<unk>"``, then tokens by count descending,
    ties broken by the token string (so the order is deterministic)."""

    def __init__(self, itos: Sequence[str], counts: Sequence[int] | None = None):
        itos = list(itos)
        if itos[:2] != [PAD, UNK]:
            raise ValueError(f"a Vocab starts with {PAD!r}, {UNK!r}; got {itos[:2]}")
        if len(set(itos)) != len(itos):
            raise ValueError("duplicate tokens in the vocabulary")
        self.itos = itos
        self.stoi = {t: i for i, t in enumerate(itos)}
        self.counts = list(counts) if counts is not None else None

    pad_id, unk_id = PAD_ID, UNK_ID

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], max_size: int | None = None, min_freq: int = 1) -> Vocab:
        """``max_size`` counts every id including ``<pad>`` and ``<unk>``."""
        if max_size is not None and max_size < 2:
            raise ValueError("max_size must leave room for <pad> and <unk>")
        items = [(t, c) for t, c in counts.items() if c >= min_freq and t not in (PAD, UNK)]
        items.sort(key=lambda tc: (-tc[1], tc[0]))
        if max_size is not None:
            items = items[: max_size - 2]
        return cls([PAD, UNK] + [t for t, _ in items], [0, 0] + [int(c) for _, c in items])

    @classmethod
    def build(cls, token_lists: Iterable[Iterable[str]], max_size: int | None = None, min_freq: int = 1) -> Vocab:
        """From token sequences: pass the *training* reviews only."""
        c: Counter = Counter()
        for toks in token_lists:
            c.update(toks)
        return cls.from_counts(c, max_size, min_freq)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} ids: {self.itos[:6]}...)"

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        get = self.stoi.get
        return np.fromiter((get(t, UNK_ID) for t in tokens), dtype=np.int64)

    def decode(self, ids: Iterable[int], *, strip_pad: bool = True) -> list[str]:
        return [self.itos[i] for i in ids if not (strip_pad and i == PAD_ID)]

    def lookup_table(self, types: Sequence[str]) -> np.ndarray:
        """``table[j]`` = this vocabulary's id of ``types[j]`` (``<unk>`` when absent)."""
        get = self.stoi.get
        return np.fromiter((get(t, UNK_ID) for t in types), dtype=np.int64, count=len(types))

    def save(self, path: str | os.PathLike) -> None:
        """JSON, written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": "scratch-rnn-vocab",
            "version": 1,
            "pad_id": PAD_ID,
            "unk_id": UNK_ID,
            "itos": self.itos,
            "counts": self.counts,
        }
        atomic_write(path, lambda f: json.dump(payload, f, ensure_ascii=False), binary=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        if payload.get("format") != "scratch-rnn-vocab":
            raise ValueError(f"{path}: not a scratch-rnn vocabulary file")
        return cls(payload["itos"], payload.get("counts"))


def build_vocab(corpus: TokenizedCorpus, train_rows, *, max_size: int | None = None, min_freq: int = 1) -> Vocab:
    """The vocabulary of the reviews ``train_rows`` (indices or mask) of ``corpus``: training only."""
    counts = corpus.counts(train_rows)
    seen = np.flatnonzero(counts >= min_freq)
    return Vocab.from_counts({corpus.types[j]: int(counts[j]) for j in seen}, max_size, min_freq)


# --------------------------------------------------------------------------------------------
# encoding and truncation
# --------------------------------------------------------------------------------------------
def encode_corpus(
    corpus: TokenizedCorpus | Sequence[Sequence[str]], vocab: Vocab, max_len: int | None = None, rows=None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Token sequences -> (list of int64 id arrays, lengths int64).

    Truncation keeps the *first* ``max_len`` tokens. A review left with no token (all stopwords)
    becomes the single id ``<unk>``, so that every length is >= 1 and ``h[length - 1]`` never
    indexes from the end.
    """
    if isinstance(corpus, TokenizedCorpus):
        table = vocab.lookup_table(corpus.types)
        all_ids = table[corpus.token_ids]
        idx = np.arange(len(corpus)) if rows is None else np.arange(len(corpus))[rows]
        seqs = [all_ids[corpus.offsets[i] : corpus.offsets[i + 1]] for i in idx]
    else:
        lists = list(corpus) if rows is None else [corpus[i] for i in np.arange(len(corpus))[rows]]
        seqs = [vocab.encode(t) for t in lists]
    out, empty = [], 0
    for s in seqs:
        if max_len is not None:
            s = s[:max_len]
        if len(s) == 0:
            s = np.array([UNK_ID], dtype=np.int64)
            empty += 1
        out.append(np.ascontiguousarray(s, dtype=np.int64))
    if empty:
        log.info("%d review(s) had no token left; encoded as a single <unk>", empty)
    return out, np.fromiter((len(s) for s in out), dtype=np.int64, count=len(out))


def pad_batch(seqs: Sequence[np.ndarray], pad_id: int = PAD_ID, length: int | None = None) -> np.ndarray:
    """Stack id arrays into (B, T) right-padded with ``pad_id``; T = the longest (or ``length``)."""
    T = max((len(s) for s in seqs), default=0) if length is None else length
    out = np.full((len(seqs), max(T, 1)), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s[:T]
    return out


def iterate_batches(
    ids: Sequence[np.ndarray],
    lengths,
    labels,
    batch_size: int,
    rng,
    bucket: bool = True,
    *,
    chunk_batches: int = 50,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One epoch of (padded ids (B, T_batch) int64 padded with 0, labels (B,), lengths (B,)): the
    project's batch order (x, y, lengths).

    ``rng`` is a ``numpy.random.Generator`` or a seed. The examples are shuffled; with ``bucket``,
    the shuffled order is cut into chunks of ``batch_size * chunk_batches`` examples, each chunk is
    sorted by length and cut into batches, and the batch order is shuffled, so each batch holds
    reviews of similar length (little padding) while the epoch stays random. Within a batch the rows
    are in descending length order (what ``torch.nn.utils.rnn.pack_padded_sequence`` expects by
    default). Every example appears exactly once per epoch (the last batch may be smaller, unless
    ``drop_last``). The same seed gives the same batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    lengths = np.asarray(lengths)
    labels = np.asarray(labels)
    n = len(ids)
    if not (len(lengths) == len(labels) == n):
        raise ValueError(f"ids, lengths, labels differ in length: {n}, {len(lengths)}, {len(labels)}")
    order = rng.permutation(n)
    batches: list[np.ndarray] = []
    if bucket:
        chunk = batch_size * max(1, chunk_batches)
        for start in range(0, n, chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
        batches = [batches[i] for i in rng.permutation(len(batches))]
    else:
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    for b in batches:
        if drop_last and len(b) < batch_size:
            continue
        b = b[np.argsort(-lengths[b], kind="stable")]
        yield pad_batch([ids[i] for i in b]), labels[b], lengths[b]


# --------------------------------------------------------------------------------------------
# the whole pipeline on a DataFrame from .data
# --------------------------------------------------------------------------------------------
@dataclass
class EncodedSplit:
    ids: list[np.ndarray]
    lengths: np.ndarray
    labels: np.ndarray
    rows: np.ndarray  # positions in the DataFrame

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, batch_size: int, rng, bucket: bool = True, **kw):
        return iterate_batches(self.ids, self.lengths, self.labels, batch_size, rng, bucket, **kw)


@dataclass
class PreparedData:
    vocab: Vocab
    splits: dict[str, EncodedSplit]
    config: TextConfig
    corpus: TokenizedCorpus

    def __getitem__(self, split: str) -> EncodedSplit:
        return self.splits[split]

    def summary(self) -> dict:
        """Sizes and lengths (before truncation) for a report."""
        out = {"vocab_size": len(self.vocab), "max_len": self.config.max_len}
        full = self.corpus.lengths
        for name, s in self.splits.items():
            st = length_stats(full[s.rows])
            n_trunc = int(np.sum(full[s.rows] > self.config.max_len)) if self.config.max_len else 0
            table = self.vocab.lookup_table(self.corpus.types)
            toks = table[self.corpus.token_ids[self.corpus.token_mask(s.rows)]]
            out[name] = {
                "reviews": len(s),
                **st,
                "truncated": n_trunc,
                "unk_share": float(np.mean(toks == UNK_ID)) if len(toks) else 0.0,
            }
        return out


def prepare(
    df,
    cfg: TextConfig = TextConfig(),
    *,
    cache_dir=DEFAULT_CACHE_DIR,
    progress: bool = True,
    workers: int = 1,
    train_split: str = "train",
) -> PreparedData:
    """Tokenize (cached) the reviews of ``df`` (see :mod:`.data`), build the vocabulary on the rows
    whose ``split`` is ``train_split``, and encode every split with truncation to ``cfg.max_len``."""
    split = df["split"].to_numpy(dtype=object)
    if any(s is None or s != s for s in split):  # None or NaN
        raise ValueError("some rows have no split; use data.random_split() (and say so) or the official split")
    names = [s for s in dict.fromkeys(split)]
    if train_split not in names:
        raise ValueError(f"no {train_split!r} rows to build the vocabulary from (splits: {names})")
    corpus = preprocess(df["review"].tolist(), cfg, cache_dir=cache_dir, progress=progress, workers=workers)
    vocab = build_vocab(corpus, split == train_split, max_size=cfg.max_vocab, min_freq=cfg.min_freq)
    labels = df["label"].to_numpy(dtype=np.int64)
    splits = {}
    for name in sorted(names, key=lambda s: (s != "train", s != "valid", s)):
        rows = np.flatnonzero(split == name)
        ids, lengths = encode_corpus(corpus, vocab, cfg.max_len, rows=rows)
        splits[name] = EncodedSplit(ids, lengths, labels[rows], rows)
    return PreparedData(vocab, splits, cfg, corpus)


# --------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------
def length_stats(lengths) -> dict:
    """Median, 90th / 99th percentile, mean and max of token counts."""
    x = np.asarray(lengths)
    if x.size == 0:
        return {"median": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0, "max": 0}
    return {
        "median": float(np.median(x)),
        "p90": float(np.percentile(x, 90)),
        "p99": float(np.percentile(x, 99)),
        "mean": float(x.mean()),
        "max": int(x.max()),
    }


def stopword_report(
    texts_or_corpus,
    cfg: TextConfig = TextConfig(),
    *,
    cache_dir=DEFAULT_CACHE_DIR,
    progress: bool = True,
    workers: int = 1,
    top: int = 15,
) -> dict:
    """What removing NLTK's English stopwords does to the tokens of ``cfg``'s pipeline.

    ``texts_or_corpus``: review texts, or a :class:`TokenizedCorpus` made with
    ``remove_stopwords=False``. Returns counts of tokens and reviews before/after, the share removed,
    how many occurrences of not/no/nor and of the n't forms are removed, how many tokens
    ``keep_negations=True`` would keep, the most removed words, and the reviews left empty.
    """
    if isinstance(texts_or_corpus, TokenizedCorpus):
        corpus = texts_or_corpus
        if corpus.config.remove_stopwords:
            raise ValueError("pass a corpus tokenized with remove_stopwords=False")
    else:
        corpus = preprocess(
            texts_or_corpus,
            cfg.replace(remove_stopwords=False, keep_negations=False),
            cache_dir=cache_dir,
            progress=progress,
            workers=workers,
        )
    sw = english_stopwords()
    counts = corpus.counts()
    is_sw = np.fromiter((t in sw for t in corpus.types), dtype=bool, count=len(corpus.types))
    tok_sw = is_sw[corpus.token_ids]
    row_of_token = np.repeat(np.arange(len(corpus)), corpus.lengths)
    per_review_removed = np.bincount(row_of_token, weights=tok_sw, minlength=len(corpus)).astype(np.int64)
    kept_after = corpus.lengths - per_review_removed
    type_count = {t: int(counts[j]) for j, t in enumerate(corpus.types) if is_sw[j]}
    neg = {w: type_count.get(w, 0) for w in NEGATIONS}
    negf = {w: type_count.get(w, 0) for w in NEGATED_FORMS if type_count.get(w, 0)}
    n_tokens = int(len(corpus.token_ids))
    n_removed = int(tok_sw.sum())
    neg_ids = [j for j, t in enumerate(corpus.types) if t in NEGATIONS]
    has_neg = np.isin(corpus.token_ids, neg_ids)
    reviews_with_neg = int(np.count_nonzero(np.bincount(row_of_token, weights=has_neg, minlength=len(corpus))))
    return {
        "reviews": len(corpus),
        "tokens": n_tokens,
        "removed": n_removed,
        "share_removed": n_removed / n_tokens if n_tokens else 0.0,
        "reviews_with_removal": int(np.count_nonzero(per_review_removed)),
        "reviews_emptied": int(np.count_nonzero((kept_after == 0) & (corpus.lengths > 0))),
        "length_before": length_stats(corpus.lengths),
        "length_after": length_stats(kept_after),
        "negations_removed": neg,
        "negations_removed_total": sum(neg.values()),
        "reviews_with_negation": reviews_with_neg,
        "negated_forms_removed": dict(sorted(negf.items(), key=lambda kv: -kv[1])),
        "negated_forms_removed_total": sum(negf.values()),
        "removed_with_keep_negations": n_removed - sum(neg.values()) - sum(negf.values()),
        "stopword_types": len(sw),
        "top_removed": sorted(type_count.items(), key=lambda kv: (-kv[1], kv[0]))[:top],
    }

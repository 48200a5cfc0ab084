"""docs/tour.ipynb runs from top to bottom (nbclient, a fresh kernel in this environment): it cannot rot.

It is committed without outputs; its own cells assert what they show (errors against torch, the finite
differences, the sentiment model beating chance). It needs the shared IMDB copy and NLTK's data, as the
sentiment tests do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tour.ipynb"


def test_the_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    assert all(
        not c.get("outputs") and c.get("execution_count") is None for c in nb["cells"] if c["cell_type"] == "code"
    )


def test_the_tour_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from experiments.sentiment import data as D
    from experiments.sentiment import text

    try:
        D.resolve_source(None)
        text.english_stopwords()
    except (FileNotFoundError, text.NltkDataMissing) as e:
        pytest.skip(f"IMDB data or NLTK stopwords unavailable: {e}")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # plots as outputs
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any failure
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs), (
        "the plots were not drawn"
    )

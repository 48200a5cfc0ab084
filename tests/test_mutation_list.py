"""The mutation harness's list stays current: every planted bug's line is found where the harness looks.

A reformat or a refactor that moves a mutant's line would otherwise make ``tests/mutation/run_mutants.py``
exit 2 (the list is stale) only when somebody next runs it; this keeps the list honest in every CI run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "mutation"))

from mutants import SETS  # noqa: E402

ALL = [(name, m) for name, ms in SETS.items() for m in ms]


@pytest.mark.parametrize("name,m", ALL, ids=[f"{name}-{m['id']}" for name, m in ALL])
def test_each_mutant_changes_one_line_that_exists(name, m):
    text = (ROOT / m["file"]).read_text()
    count = text.count(m["old"])
    if m.get("nth") is None:
        assert count == 1, f"{m['id']}: {m['old']!r} occurs {count} times in {m['file']} (expected once)"
    else:
        assert count >= m["nth"], f"{m['id']}: fewer than {m['nth']} occurrences of {m['old']!r} in {m['file']}"
    assert m["new"] != m["old"] and "\n" not in m["new"], m["id"]
    for test_file in m["tests"]:
        assert (ROOT / test_file).is_file(), f"{m['id']}: its test file {test_file} does not exist"


def test_the_ids_are_unique():
    ids = [m["id"] for _, m in ALL]
    assert len(ids) == len(set(ids))

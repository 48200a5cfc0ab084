"""Mutation harness: plant single-line bugs one at a time in a copy of the tree and see whether the tests fail.

Usage (from the repository root, with the project's Python):

    python tests/mutation/run_mutants.py                 # every mutant of the fresh set, targeted tests
    python tests/mutation/run_mutants.py --set gaps      # the issue-19 class-9 gaps, re-planted
    python tests/mutation/run_mutants.py --only m07 m21  # some mutants
    python tests/mutation/run_mutants.py --full          # survivors of the targeted run: the whole suite decides
    python tests/mutation/run_mutants.py --list          # the mutants, no runs

The working tree is never touched: its files (``git ls-files`` plus untracked, not ignored files) are
copied once into a temporary directory, each mutant rewrites one line there, the test command runs
with ``PYTHONPATH`` at the copy, and the line is restored. A mutant is *caught* when the test command
exits non-zero (a failing test, or an import error the mutant causes); a run past ``--timeout`` counts
as caught too (CI would fail it) and is reported as such. The test command is CI's
(``python -m pytest -x -q -n 2 -p no:cacheprovider``), restricted to each mutant's test files for
speed; ``--full`` reruns every survivor with the unrestricted command, and the report says which
command decided. The mutants themselves are in ``tests/mutation/mutants.py``. Exit status: 0 when the
score reaches ``--target`` (percent), 1 when it does not, 2 for a mutant whose line is not found
exactly once (the list is stale).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from mutants import SETS  # noqa: E402

BASE_COMMAND = ["-m", "pytest", "-x", "-q", "-n", "2", "-p", "no:cacheprovider"]


def tree_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def copy_tree(root: Path, dest: Path) -> None:
    for f in tree_files(root):
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, target)


def apply(copy: Path, m: dict) -> str:
    """Rewrite the mutant's line in the copy; returns the original text (for the restore)."""
    path = copy / m["file"]
    text = path.read_text()
    old, new = m["old"], m["new"]
    if "\n" in old or "\n" in new:
        raise ValueError(f"{m['id']}: a mutant is one line")
    nth = m.get("nth")
    count = text.count(old)
    if (count != 1 and nth is None) or (nth is not None and count < nth):
        raise LookupError(
            f"{m['id']}: {old!r} occurs {count} times in {m['file']} "
            f"(expected {'once' if nth is None else f'at least {nth} times'})"
        )
    at = -1
    for _ in range(nth or 1):
        at = text.index(old, at + 1)
    path.write_text(text[:at] + new + text[at + len(old) :])
    return text


def check_all(root: Path, mutants: list[dict]) -> None:
    """Every mutant's line is found (before anything runs): a stale list is reported at once."""
    for m in mutants:
        text = (root / m["file"]).read_text()
        count = text.count(m["old"])
        if (count != 1 and "nth" not in m) or count < m.get("nth", 1):
            raise LookupError(f"{m['id']}: {m['old']!r} occurs {count} times in {m['file']}")


def run_tests(copy: Path, tests: list[str] | None, timeout: float, workers: str) -> tuple[str, float, str]:
    cmd = [sys.executable, *BASE_COMMAND]
    if workers != "2":
        cmd[cmd.index("-n") + 1] = workers
    cmd += tests or []
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        return "caught (timeout)", time.perf_counter() - t0, ""
    took = time.perf_counter() - t0
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    last = tail[-1] if tail else ""
    if proc.returncode == 0:
        return "missed", took, last
    if proc.returncode == 5:
        raise RuntimeError(f"no tests collected by {' '.join(cmd)}: {last}")
    return "caught", took, last


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="fresh", choices=sorted(SETS))
    ap.add_argument("--only", nargs="*", default=None, help="mutant ids")
    ap.add_argument("--full", action="store_true", help="rerun every survivor with the whole suite")
    ap.add_argument("--full-only", action="store_true", help="skip the targeted run: the whole suite for every one")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per test command")
    ap.add_argument("--workers", default="2", help="pytest -n (CI: 2)")
    ap.add_argument("--target", type=float, default=95.0)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    mutants = [m for m in SETS[args.set] if args.only is None or m["id"] in args.only]
    if args.list:
        for m in mutants:
            print(f"{m['id']}  {m['file']}: {m['why']}\n      - {m['old'].strip()}\n      + {m['new'].strip()}")
        return 0
    check_all(ROOT, mutants)
    results = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        copy = Path(tmp)
        copy_tree(ROOT, copy)
        for m in mutants:
            original = apply(copy, m)
            try:
                verdict, took, last, decided = "missed", 0.0, "", "targeted"
                if not args.full_only:
                    verdict, took, last = run_tests(copy, m["tests"], args.timeout, args.workers)
                if verdict == "missed" and (args.full or args.full_only):
                    verdict, took2, last = run_tests(copy, None, args.timeout, args.workers)
                    took, decided = took + took2, "full suite"
            finally:
                (copy / m["file"]).write_text(original)
            results.append(
                dict(
                    id=m["id"],
                    file=m["file"],
                    why=m["why"],
                    verdict=verdict,
                    decided_by=decided,
                    seconds=round(took, 1),
                    last_line=last,
                )
            )
            print(f"{m['id']:>5}  {verdict:<16} {decided:<10} {took:6.1f}s  {m['file']}: {m['why']}", flush=True)
    caught = sum(r["verdict"].startswith("caught") for r in results)
    pct = 100.0 * caught / len(results) if results else 100.0
    scope = "the mutant's test files" + (" | the whole suite for survivors" if args.full else "")
    print(
        f"\n{caught} / {len(results)} caught ({pct:.1f} %), set {args.set!r}; command: python "
        f"{' '.join(BASE_COMMAND)} [{scope}]"
    )
    for r in results:
        if r["verdict"] == "missed":
            print(f"  missed {r['id']}: {r['file']}: {r['why']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(dict(set=args.set, caught=caught, total=len(results), percent=pct, results=results), indent=1)
        )
    return 0 if pct >= args.target else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LookupError as exc:
        print(f"run_mutants: {exc}", file=sys.stderr)
        sys.exit(2)

"""Run a grid of independent trials through an existing engine, resumably.

Local worker processes (``concurrent.futures.ProcessPoolExecutor``) by default; Dask distributed
when given a scheduler address (or a ``distributed.Client``), through ``Client.get_executor()``, the
same ``concurrent.futures`` interface. Each finished trial is appended to a JSON-lines result table
at once (one line, flushed and fsync'ed), keyed by the trial's id; a rerun skips every id already
there, so an interrupted sweep resumes where it stopped and never runs a finished trial twice. A
trial that raises stops the sweep (pending trials are cancelled) after the finished ones are saved.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
from tqdm.auto import tqdm


def trial_id(spec: dict) -> str:
    """A stable id: the spec's items in key order, ``k=v`` joined by ``|``."""
    return "|".join(f"{k}={spec[k]}" for k in sorted(spec))


def load_results(path: Path) -> list[dict]:
    """Every complete line of the table (a line cut by a crash is ignored and will be rerun)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_row(path: Path, row: dict) -> None:
    """Append one JSON line, flushed and fsync'ed (a cut last line is first closed)."""
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:  # a line cut by a crash must not swallow this row
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(row) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def _executor(workers: int, scheduler):
    if scheduler is None:
        return cf.ProcessPoolExecutor(max_workers=workers), None
    from distributed import Client  # optional dependency: dask[distributed]

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    own = None if isinstance(scheduler, Client) else client
    return client.get_executor(pure=False), own


def run_sweep(fn: Callable[[dict], dict], specs: Iterable[dict], table: Path, *, workers: int = 2,
              scheduler=None, progress: bool = True, desc: str = "trials") -> pd.DataFrame:
    """Run ``fn(spec)`` for every spec whose id is not yet in ``table``; returns the full table.

    fn must be importable by the workers (a module-level function) and return a flat dict of
    results; the row written is ``{"trial_id": ..., **spec, **result}``.
    """
    table = Path(table)
    table.parent.mkdir(parents=True, exist_ok=True)
    specs = list(specs)
    done = {row["trial_id"] for row in load_results(table)}
    todo = [s for s in specs if trial_id(s) not in done]
    if todo:
        executor, own_client = _executor(workers, scheduler)
        try:
            futures = {executor.submit(fn, s): s for s in todo}
            bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc=desc, disable=not progress)
            saved = set()

            def save(fut):
                append_row(table, {"trial_id": trial_id(futures[fut]), **futures[fut], **fut.result()})
                saved.add(fut)
                bar.update(1)

            try:
                for fut in cf.as_completed(futures):
                    save(fut)  # fut.result() raises for a failed trial: the sweep stops
            except BaseException:
                for f in futures:
                    f.cancel()
                # trials that finished meanwhile are kept (as_completed yields done futures in any order)
                for f in futures:
                    if f not in saved and f.done() and not f.cancelled() and f.exception() is None:
                        save(f)
                raise
            finally:
                bar.close()
        finally:
            if scheduler is None:
                executor.shutdown(wait=True, cancel_futures=True)
            else:
                executor.shutdown(wait=False)
            if own_client is not None:
                own_client.close()
    wanted = {trial_id(s) for s in specs}
    rows = [r for r in load_results(table) if r["trial_id"] in wanted]
    return pd.DataFrame(rows)

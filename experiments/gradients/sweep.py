"""Run a grid of independent trials through an existing engine, resumably.

Local worker processes (``concurrent.futures.ProcessPoolExecutor``) by default; Dask distributed
when given a scheduler address (or a ``distributed.Client``), through ``Client.get_executor()``, the
same ``concurrent.futures`` interface. Each finished trial is appended to a JSON-lines result table
at once (one line, flushed and fsync'ed), keyed by the trial's id; a rerun skips every id already
there, so an interrupted sweep resumes where it stopped and never runs a finished trial twice. A
trial that raises stops the sweep (pending trials are cancelled) after the finished ones are saved.
Ctrl-C (SIGINT to the sweep's process alone, or to its group) stops at once: every finished trial is
saved, the local workers' running trials are terminated (not waited for), and KeyboardInterrupt
propagates (exit 130 in the command line). A scheduler address is checked up front
(:func:`probe_scheduler`: ``tcp://`` only, one deadline for connecting and hearing a Dask
scheduler answer).

The table is read leniently: a line cut by a crash is ignored (and its trial rerun); a line that is
JSON but not a trial of this sweep (not an object, no ``trial_id``, or fields that differ from the
spec its id names) is skipped with a :class:`SkippedLineWarning` naming the file and line, and does
not count as done. Local workers die with the sweep's process (:func:`experiments.process.die_with_parent`):
a ``kill -9`` of the parent leaves no worker computing for nobody.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from experiments.process import die_with_parent


class SkippedLineWarning(UserWarning):
    """A line of a result table that is valid JSON but not a usable row (named by file and line)."""


def trial_id(spec: dict) -> str:
    """A stable id: the spec's items in key order, ``k=v`` joined by ``|``."""
    return "|".join(f"{k}={spec[k]}" for k in sorted(spec))


def _json_lines(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, value) of every line that parses as JSON; a line cut by a crash is left out."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError:
                continue


def _same(a, b) -> bool:
    return a == b or json.dumps(a) == json.dumps(b)  # NaN == NaN here


def _skip(path: Path, lineno: int, why: str, warn: bool) -> None:
    if warn:
        warnings.warn(f"{path}:{lineno}: skipped: {why}", SkippedLineWarning, stacklevel=3)


def load_results(path: Path, *, warn: bool = True) -> list[dict]:
    """Every complete line of the table that is a JSON object (a line cut by a crash is ignored and
    will be rerun; a line that is JSON but not an object is skipped with a warning)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for lineno, row in _json_lines(path):
        if isinstance(row, dict):
            rows.append(row)
        else:
            _skip(path, lineno, f"expected a JSON object, got {json.dumps(row)[:80]}", warn)
    return rows


def load_trials(path: Path, specs: Iterable[dict], *, warn: bool = True) -> dict[str, dict]:
    """The finished trials of ``specs`` in the table: {trial_id: row}, the first row of each id.

    A row counts only when it is an object with a string ``trial_id`` and, when that id is one of
    ``specs``, every field of that spec has the spec's value; other rows are skipped with a warning
    (rows of trials outside ``specs``, e.g. another protocol's, are left alone silently).
    """
    path = Path(path)
    wanted = {trial_id(s): json.loads(json.dumps(s, default=str)) for s in specs}
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    for lineno, row in _json_lines(path):
        if not isinstance(row, dict):
            _skip(path, lineno, f"expected a JSON object, got {json.dumps(row)[:80]}", warn)
            continue
        tid = row.get("trial_id")
        if not isinstance(tid, str):
            _skip(path, lineno, f"no trial_id (a string) in {json.dumps(row)[:80]}", warn)
            continue
        spec = wanted.get(tid)
        if spec is None or tid in done:
            continue
        wrong = [k for k in spec if k not in row or not _same(row[k], spec[k])]
        if wrong:
            _skip(path, lineno, f"fields {wrong} differ from the spec of trial {tid!r}", warn)
            continue
        done[tid] = row
    return done


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


SCHEDULER_TIMEOUT_S = 5.0  # the deadline of connecting to a --scheduler, handshake and identity reply included
DASK_DEFAULT_PORT = 8786


class SchedulerUnavailable(ValueError):
    """A scheduler address that is malformed, not tcp://, or no Dask scheduler within the deadline."""


def parse_scheduler_address(address) -> tuple[str, int]:
    """(host, port) of ``tcp://HOST[:PORT]`` (port 8786 when left out); SchedulerUnavailable for anything
    else: another transport (inproc://, ucx://, ws://, tls:// need settings this sweep does not take),
    no host, a port that is not a number in 1..65535."""
    if not isinstance(address, str):
        raise SchedulerUnavailable(f"expected an address like tcp://HOST:PORT, got {address!r}")
    scheme, sep, location = address.partition("://")
    if not sep:
        raise SchedulerUnavailable(f"expected an address like tcp://HOST:PORT, got {address!r} (no scheme)")
    if scheme != "tcp":
        raise SchedulerUnavailable(
            f"expected a tcp:// address (the only transport this sweep connects with), "
            f"got {address!r} (scheme {scheme!r})"
        )
    if location.startswith("["):  # [IPv6]:PORT
        host, bracket, rest = location[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise SchedulerUnavailable(f"expected tcp://[IPv6]:PORT, got {address!r}")
        port = rest[1:] if rest else str(DASK_DEFAULT_PORT)
    else:
        host, _, port = location.partition(":")
        port = port or str(DASK_DEFAULT_PORT)
    if not host or "/" in host:
        raise SchedulerUnavailable(f"expected an address like tcp://HOST:PORT, got {address!r} (no host, or a path)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SchedulerUnavailable(f"expected a port in 1..65535 in {address!r}, got {port!r}")
    return host, int(port)


def probe_scheduler(address: str, timeout: float = SCHEDULER_TIMEOUT_S) -> dict:
    """Connect to ``address``, ask it who it is, and return its identity; within ``timeout`` seconds in all.

    dask's own ``connect(timeout=...)`` and ``Client(timeout=...)`` bound the TCP connect, not the
    handshake: a port that accepts connections but speaks another protocol (an HTTP server, the
    dashboard's port) makes them wait for minutes. Here the whole exchange runs under one deadline.
    SchedulerUnavailable (naming the address and the reason) when it is not a Dask scheduler.
    """
    import asyncio

    host, port = parse_scheduler_address(address)
    try:
        from distributed.comm import connect
    except ImportError as exc:
        raise SchedulerUnavailable(
            f"running on a Dask cluster needs dask.distributed (pip install "
            f"'dask[distributed]'), which is not installed; got {address!r}"
        ) from exc

    try:  # a plain TCP connect first: a closed port is refused at once (dask would retry until the deadline)
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise SchedulerUnavailable(
            f"expected a reachable Dask scheduler, got {address!r}: cannot connect to "
            f"{host}:{port} ({why}; waited at most {timeout:g} s)"
        ) from exc

    async def ask():
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    try:
        reply = asyncio.run(asyncio.wait_for(ask(), timeout))
    except (asyncio.TimeoutError, TimeoutError) as exc:
        raise SchedulerUnavailable(
            f"no Dask scheduler answered at {address!r} within {timeout:g} s (something "
            f"that is not a Dask scheduler listens on {host}:{port}, or nothing answers)"
        ) from exc
    except OSError as exc:
        raise SchedulerUnavailable(f"cannot connect to {address!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - garbage instead of a Dask reply: whatever the decoder raised
        raise SchedulerUnavailable(
            f"{address!r} did not answer as a Dask scheduler ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        kind = reply.get("type") if isinstance(reply, dict) else type(reply).__name__
        raise SchedulerUnavailable(
            f"{address!r} is not a Dask scheduler (it answered as {kind!r}; give the "
            "scheduler's address, not a worker's)"
        )
    return reply


def _executor(workers: int, scheduler, timeout: float = SCHEDULER_TIMEOUT_S):
    if scheduler is None:
        return cf.ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent), None
    from distributed import Client  # optional dependency: dask[distributed]

    if isinstance(scheduler, Client):
        return scheduler.get_executor(pure=False), None
    if not (isinstance(scheduler, str) and "://" in scheduler and not scheduler.startswith("tcp://")):
        probe_scheduler(scheduler, timeout)  # a real deadline: Client() alone can wait for minutes
    # else another transport (an in-process LocalCluster's inproc://): given to dask as it is; the
    # command line accepts tcp:// only
    client = Client(scheduler, timeout=timeout)
    return client.get_executor(pure=False), client


def _stop_workers(executor) -> None:
    """Terminate a local pool's worker processes (their running trials are lost; finished ones are saved).

    ``ProcessPoolExecutor`` has no public way to stop a running task: its ``_processes`` (pid ->
    Process, in every CPython since 3.2) are the pool's own children, and nothing else is touched.
    """
    for proc in list((getattr(executor, "_processes", None) or {}).values()):
        try:
            proc.terminate()
        except (OSError, ValueError):  # already gone, or closed
            pass


def run_sweep(
    fn: Callable[[dict], dict],
    specs: Iterable[dict],
    table: Path,
    *,
    workers: int = 2,
    scheduler=None,
    scheduler_timeout: float = SCHEDULER_TIMEOUT_S,
    progress: bool = True,
    desc: str = "trials",
) -> pd.DataFrame:
    """Run ``fn(spec)`` for every spec whose id is not yet in ``table``; returns the full table.

    fn must be importable by the workers (a module-level function) and return a flat dict of
    results; the row written is ``{"trial_id": ..., **spec, **result}``. ``scheduler``: a
    ``distributed.Client``, or a ``tcp://HOST:PORT`` address reached within ``scheduler_timeout``
    seconds (:func:`probe_scheduler`; SchedulerUnavailable otherwise).
    """
    table = Path(table)
    table.parent.mkdir(parents=True, exist_ok=True)
    specs = list(specs)
    done = load_trials(table, specs)
    todo = list({trial_id(s): s for s in specs if trial_id(s) not in done}.values())  # each trial once
    interrupted = False
    if todo:
        executor, own_client = _executor(workers, scheduler, scheduler_timeout)
        try:
            futures = {executor.submit(fn, s): s for s in todo}
            total = len({trial_id(s) for s in specs})
            bar = tqdm(total=total, initial=total - len(todo), desc=desc, disable=not progress)
            saved = set()

            def save(fut):
                append_row(table, {"trial_id": trial_id(futures[fut]), **futures[fut], **fut.result()})
                saved.add(fut)
                bar.update(1)

            try:
                for fut in cf.as_completed(futures):
                    save(fut)  # fut.result() raises for a failed trial: the sweep stops
            except BaseException as exc:
                interrupted = isinstance(exc, KeyboardInterrupt)
                for f in futures:
                    f.cancel()
                if interrupted and scheduler is None:
                    _stop_workers(executor)  # Ctrl-C: do not wait minutes for trials nobody will read
                # trials that finished meanwhile are kept (as_completed yields done futures in any order), each
                # once: the table itself says what is in it (a Ctrl-C between a row's write and `saved.add`
                # must not write that row twice)
                present = set(load_trials(table, specs, warn=False))
                for f in futures:
                    if f in saved or trial_id(futures[f]) in present:
                        continue
                    if f.done() and not f.cancelled() and f.exception() is None:
                        save(f)
                raise
            finally:
                bar.close()
        finally:
            if scheduler is None:
                executor.shutdown(wait=not interrupted, cancel_futures=True)
            else:
                executor.shutdown(wait=False)
            if own_client is not None:
                own_client.close()
    done = load_trials(table, specs, warn=False)  # warned above
    return pd.DataFrame([done[i] for i in dict.fromkeys(trial_id(s) for s in specs) if i in done])

"""Child processes die with their parent: call :func:`die_with_parent` first thing in every worker.

A worker whose parent was killed (``kill -9``, the OOM killer: no ``finally`` runs) would otherwise
keep computing its current task, for minutes, and nobody reads its result. On Linux the kernel
does the work: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` asks for SIGKILL when the parent dies. Two
catches, both handled or documented here:

- the request only covers a death *after* it: a parent that died between the fork and the call is
  caught by checking, right after the call, that the parent is still the one we started with and
  still alive;
- "the parent" is the *thread* that forked this process: start workers from a thread that lives as
  long as they should (``ProcessPoolExecutor`` starts them from the thread that calls ``submit``).
  The setting is not inherited by this process's own children: they call this function too.

Elsewhere (no prctl) a daemon thread polls every ``poll_interval`` seconds and kills this process
once its parent is gone.

Usage: ``ProcessPoolExecutor(initializer=die_with_parent)``, or the first line of a
``multiprocessing.Process`` target. A child started by ``subprocess`` should be given its parent's
pid (``die_with_parent(parent_pid)``), so that a parent that died before the call is noticed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time

from scratch_rnn.runlock import pid_alive  # the one liveness check (re-exported here)

__all__ = ["die_with_parent", "pid_alive"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _logical_parent(parent_pid: int | None) -> int | None:
    """The process this one must not outlive: the given pid, else multiprocessing's parent."""
    if parent_pid is not None:
        return int(parent_pid)
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else None


def _orphaned(kernel_parent: int, logical_parent: int | None) -> bool:
    if os.getppid() != kernel_parent:  # reparented: the parent died
        return True
    return logical_parent is not None and logical_parent != os.getpid() and not pid_alive(logical_parent)


def _die() -> None:
    try:
        os.kill(os.getpid(), signal.SIGKILL)
    finally:  # pragma: no cover - platforms without SIGKILL
        os._exit(1)


def _prctl_pdeathsig(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return (
            libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
            == 0
        )
    except (OSError, AttributeError):
        return False


def _watch(kernel_parent: int, logical_parent: int | None, poll_interval: float) -> None:
    while True:
        time.sleep(poll_interval)
        if _orphaned(kernel_parent, logical_parent):
            _die()


def die_with_parent(parent_pid: int | None = None, *, poll_interval: float = 0.5) -> str:
    """Make this process die (SIGKILL) when its parent dies; returns the mechanism, "prctl" or "poll".

    parent_pid: the process this one must not outlive, when known (default: multiprocessing's
    parent process, else the parent at the time of the call). When it has already died, this
    process kills itself at once.
    """
    kernel_parent = os.getppid()
    logical_parent = _logical_parent(parent_pid)
    mechanism = "prctl" if sys.platform.startswith("linux") and _prctl_pdeathsig(signal.SIGKILL) else "poll"
    if _orphaned(kernel_parent, logical_parent):  # it died before the request took effect
        _die()
    if mechanism == "poll":
        threading.Thread(
            target=_watch, args=(kernel_parent, logical_parent, poll_interval), daemon=True, name="die-with-parent"
        ).start()
    return mechanism

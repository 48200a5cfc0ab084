"""A run folder that appears whole or not at all, and never takes an earlier run with it.

A run writes into ``.<name>.partial-<pid>-<random>`` beside its folder; :func:`replace_dir` swaps the
finished folder in for the old one in one step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two
renames, the first undone if the second fails). What a killed process can leave behind is cleaned
by :func:`recover`, which every run calls first: a partial folder of a process that is gone is
removed (one of a live run of the same name is left alone), and an old run moved aside by an
interrupted fallback swap is put back.

A run name is owned by one run at a time: :func:`claim` takes the lock ``.<name>.lock`` beside the
folder (:mod:`scratch_rnn.runlock`) before the run looks at the folder and holds it until the
folder has been swapped in, so that two runs of one name (with or without ``--overwrite``) can
never both write it, nor one replace the other while it runs.
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import tempfile
from pathlib import Path

from scratch_rnn.fileio import current_umask
from scratch_rnn.runlock import RunLock, beside_lock_path

from .process import pid_alive

__all__ = ["make_partial_dir", "replace_dir", "recover", "claim"]

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _pattern(target: Path, kind: str) -> str:
    return str(target.parent / f".{glob.escape(target.name)}.{kind}-*")


def claim(target, what: str | None = None) -> RunLock:
    """Own the run folder ``target`` (its lock ``.<name>.lock`` beside it), or raise
    :class:`~scratch_rnn.runlock.RunInUse` naming the run that owns it. Release it when done."""
    target = Path(target)
    return RunLock(beside_lock_path(target), what or f"the run folder {str(target)!r}").acquire()


def make_partial_dir(target) -> Path:
    """A new, empty folder beside ``target`` for the run to write into (the mode ``mkdir`` would give)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    os.chmod(work, 0o777 & ~current_umask())  # mkdtemp makes 0700 folders
    return work


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2); False where the system has no such call."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system cannot; fall back
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new, target) -> None:
    """Put the finished folder ``new`` in place of ``target``; the old ``target`` (if any) is then removed."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):  # target now holds the new run, ``new`` the old one
        shutil.rmtree(new, ignore_errors=True)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)  # undo: the old run stays where it was
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover(target) -> None:
    """Clean up after killed runs of ``target``: remove dead processes' partial folders; put back an old
    run moved aside by an interrupted swap (or remove it when the new run did arrive)."""
    target = Path(target)
    for path in glob.glob(_pattern(target, "partial")):
        pid = Path(path).name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        if not pid.isdigit() or not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
    for path in sorted(glob.glob(_pattern(target, "old"))):
        if target.exists():
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.rename(path, target)

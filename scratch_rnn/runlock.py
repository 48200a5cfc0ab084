"""One run at a time: the lock that makes a run folder (or any file a run writes) one run's own.

The rule: a run writes only into folders and files it owns, and it owns one by holding its lock.
:class:`RunLock` is that lock, on a lock file of the caller's choosing (``<folder>/.lock`` for a
folder written in place, ``.<name>.lock`` beside a file or beside a folder that is replaced
whole: :func:`folder_lock_path`, :func:`beside_lock_path`).

- It is the kernel's lock (``fcntl.flock``, exclusive, non-blocking): of two processes that try at
  the same instant exactly one gets it, and the kernel lets go when its holder exits, however it
  exits (``kill -9`` included). Two opens of one lock file conflict even inside one process, so two
  trainers of one process cannot share a folder either.
- The file names its holder (pid, host, start time, command): the run that is refused gets
  :class:`RunInUse` (a ``FileExistsError``) saying who holds it.
- A lock file whose holder died without releasing it (``kill -9`` runs no ``finally``) is *stale*:
  the kernel lock is free, so the next run takes it over and says so (:class:`StaleLockWarning`,
  naming the dead holder).
- :meth:`RunLock.release` removes the file, then lets go. A process that opened the file before
  the removal and got the lock afterwards sees that the path no longer names the file it locked,
  and tries again: two processes never both hold the lock of one path.

Where ``flock`` is unavailable (a file system without locks) taking the lock fails with an
``OSError`` naming the lock file; nothing falls back to a weaker check.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
import weakref
from pathlib import Path

__all__ = [
    "RunInUse",
    "RunLock",
    "StaleLockWarning",
    "beside_lock_path",
    "describe_owner",
    "folder_lock_path",
    "pid_alive",
]


class RunInUse(FileExistsError):
    """Another run holds the lock: the message names it (pid, host, start time, command)."""

    def __init__(self, message: str, owner: dict | None):
        super().__init__(message)
        self.owner = owner


class StaleLockWarning(UserWarning):
    """A lock left by a run that is gone was taken over."""


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def folder_lock_path(folder) -> Path:
    """The lock of a folder a run writes in place: ``<folder>/.lock``."""
    return Path(folder) / ".lock"


def beside_lock_path(path) -> Path:
    """The lock of a file (or of a folder replaced whole): ``.<name>.lock`` beside it."""
    p = Path(os.path.abspath(path))
    return p.parent / f".{p.name}.lock"


def describe_owner(owner: dict | None) -> str:
    """``pid 123 on host h, since 2024-05-01 12:00:00 (python -m ...)`` (or what is known of it)."""
    if not owner:
        return "another process (which has not written its name yet)"
    parts = [f"pid {owner.get('pid')}"]
    if owner.get("host"):
        parts.append(f"on host {owner['host']}")
    text = " ".join(parts)
    if owner.get("started"):
        text += f", since {owner['started']}"
    if owner.get("command"):
        text += f" ({owner['command']})"
    return text


def _read_owner(fd: int) -> dict | None:
    try:
        raw = os.pread(fd, 1 << 16, 0)
    except OSError:
        return None
    try:
        owner = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


def _make_parents(folder: Path) -> list[str]:
    """Create ``folder`` and its missing parents; returns those created, deepest first."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return [str(m) for m in missing]


def _let_go(fd: int, path: str, pid: int, created: list[str]) -> None:
    """Remove the lock file and the folders made for it, if empty (only in the process that took the lock:
    a forked child shares it), then close."""
    if os.getpid() == pid:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        for folder in created:
            try:
                os.rmdir(folder)
            except OSError:  # not empty (the run's files), or already gone
                break
    os.close(fd)


class RunLock:
    """An exclusive, non-blocking lock on ``path``, naming its holder; ``what`` names the thing it guards.

    ``acquire()`` (or ``with RunLock(...)``) takes it or raises :class:`RunInUse`; ``release()``
    gives it back (also done when the object is collected and at interpreter exit). The lock
    file's folder is created when missing, and removed again on release if it is still empty.
    """

    def __init__(self, path, what: str | None = None):
        self.path = Path(os.path.abspath(path))
        self.what = what or str(self.path)
        self.took_over: dict | None = None  # the stale holder this lock was taken from, if any
        self._fd: int | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        created: list[str] = []
        while True:
            created = _make_parents(self.path.parent) or created
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except FileNotFoundError:  # its folder was removed by a holder letting go: make it again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise OSError(
                        exc.errno, f"cannot lock {self.what} ({exc.strerror}; lock file {self.path})"
                    ) from exc
                owner = self._wait_for_name(fd)
                os.close(fd)
                holder = (
                    f"this process (pid {os.getpid()}) already holds it: another trainer or run of the same process"
                    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()
                    else describe_owner(owner)
                )
                raise RunInUse(
                    f"{self.what} is in use by another run: {holder}; wait for it to finish, or "
                    "stop it, or choose another",
                    owner,
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # released (and removed) between our open and our lock: try again
        previous = _read_owner(fd)
        if previous and previous.get("pid") is not None:
            self.took_over = previous
            gone = (
                "no longer runs"
                if previous.get("host") == socket.gethostname() and not pid_alive(int(previous["pid"]))
                else "no longer holds it"
            )
            warnings.warn(
                f"{self.what}: taking over the lock left by {describe_owner(previous)}, which {gone} "
                f"(a stale lock: that run was killed before it could release it)",
                StaleLockWarning,
                stacklevel=2,
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
        os.fsync(fd)
        self._fd = fd
        self._finalizer = weakref.finalize(self, _let_go, fd, str(self.path), os.getpid(), created)
        return self

    @staticmethod
    def _wait_for_name(fd: int, timeout: float = 0.5) -> dict | None:
        """The holder's name (a holder that has just taken the lock writes it an instant later)."""
        deadline = time.monotonic() + timeout
        while True:
            owner = _read_owner(fd)
            if owner or time.monotonic() > deadline:
                return owner
            time.sleep(0.02)

    def release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._fd = None
        self._finalizer = None

    def __enter__(self) -> RunLock:  # noqa: PYI034 (Python 3.10: no typing.Self)
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.path)!r}, held={self.held})"

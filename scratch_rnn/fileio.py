"""The one way this project writes a file that must never be seen half-written.

:func:`atomic_write` writes into a temporary file beside the target (``.<name>.<random>.tmp``),
flushes and fsyncs it, gives it the mode ``open()`` would (0666 & ~umask: ``mkstemp`` alone makes
0600 files), renames it over the target and fsyncs the directory. A crash at any point leaves the
previous file (or none), never a mix. Temporary files left by a writer that was killed
(``kill -9`` cannot run a ``finally``) are removed by :func:`remove_stale_temporaries`, which the
checkpoint writer calls before each save and before a resume.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "current_umask",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_bytes",
    "remove_stale_temporaries",
    "temp_pattern",
]


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it races with threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:  # pragma: no cover - no procfs
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def temp_pattern(path) -> str:
    """The glob of the temporary files :func:`atomic_write` makes for ``path``."""
    path = Path(path)
    return str(path.parent / f".{glob.escape(path.name)}.*.tmp")


def atomic_write(path, write: Callable, *, binary: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it over ``path``.

    ``f`` is opened in binary mode (or text, UTF-8, with ``binary=False``). The folder is created
    when missing. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(str(directory))
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def remove_stale_temporaries(path) -> list[str]:
    """Delete the temporary files a killed :func:`atomic_write` of ``path`` left; returns their names.

    Only call this where no other process is writing ``path`` at the same moment (a run folder has
    one writer).
    """
    removed = []
    for tmp in glob.glob(temp_pattern(path)):
        try:
            os.unlink(tmp)
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed

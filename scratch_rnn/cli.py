"""What every command line of the project shares: one exit-code table and the up-front checks.

=====  ===========================================================================================
code   meaning
=====  ===========================================================================================
0      done
1      stopped: training met NaN/inf or diverged, a cross-check found a mismatch, a child failed
2      bad input: an option, a file or a field is wrong; found before any work starts, and the
       message names it, what was expected and what was received
3      crashed: an error the program did not expect (a bug; the traceback is printed)
130    interrupted (Ctrl-C)
=====  ===========================================================================================

A command's ``main(argv)`` is written as ``return run_main(_main, argv)``: ``_main`` raises
:class:`BadInput` (or argparse exits 2 itself) for bad input and a :class:`Stopped` subclass when
the work stopped, and returns normally when done.

The checks below are what every command needs before it starts: an input file that exists and is
a file, an output file whose folder can be written and that is not a folder, an output folder
that is not a file.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "EXIT_DONE",
    "EXIT_STOPPED",
    "EXIT_BAD_INPUT",
    "EXIT_CRASHED",
    "EXIT_INTERRUPTED",
    "BadInput",
    "Stopped",
    "run_main",
    "input_file",
    "output_file",
    "output_dir",
    "as_bad_input",
]

EXIT_DONE, EXIT_STOPPED, EXIT_BAD_INPUT, EXIT_CRASHED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class BadInput(ValueError):
    """An option, file or field is wrong (exit 2). The message names it, the expected and the received."""


class Stopped(RuntimeError):
    """The work ran but stopped short: non-finite values, divergence, a mismatch (exit 1)."""


def run_main(
    fn: Callable[[list[str] | None], int | None], argv: list[str] | None = None, *, prog: str | None = None
) -> int:
    """Run ``fn(argv)`` under the exit-code table; returns the code (``fn`` returning an int returns it)."""
    name = prog or Path(sys.argv[0]).name
    try:
        code = fn(argv)
    except BadInput as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Stopped as exc:
        print(f"{name}: stopped: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # argparse: 2 for bad options, 0 for --help
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except Exception:  # noqa: BLE001 - anything else is a bug, not "stopped" (1) nor "bad input" (2)
        traceback.print_exc()
        print(f"{name}: crashed (exit {EXIT_CRASHED}): an unexpected error, please report it", file=sys.stderr)
        return EXIT_CRASHED
    return EXIT_DONE if code is None else int(code)


# ----------------------------------------------------------------------------------------------
# up-front checks (each raises BadInput naming the option)
# ----------------------------------------------------------------------------------------------
def input_file(option: str, path) -> Path:
    """An existing, readable regular file."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{option}: expected an existing file, got {str(path)!r} (no such file)")
    if not p.is_file():
        raise BadInput(f"{option}: expected a file, got {str(path)!r} (a {'folder' if p.is_dir() else 'special file'})")
    if not os.access(p, os.R_OK):
        raise BadInput(f"{option}: expected a readable file, got {str(path)!r} (permission denied)")
    return p


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def output_dir(option: str, path) -> Path:
    """A folder that exists or can be created (nothing is created here)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BadInput(f"{option}: expected a folder, got {str(path)!r}, which is a file")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise BadInput(f"{option}: expected a folder, got {str(path)!r}: {str(base)!r} on its path is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise BadInput(f"{option}: expected a writable folder, got {str(path)!r} ({str(base)!r} is not writable)")
    return p


def output_file(option: str, path) -> Path:
    """A file path that can be written: not a folder, its folder a folder (or creatable)."""
    p = Path(path)
    if p.is_dir():
        raise BadInput(f"{option}: expected a file path, got {str(path)!r}, which is a folder")
    output_dir(f"{option} (its folder)", p.parent if str(p.parent) else Path("."))
    if p.exists() and not os.access(p, os.W_OK):
        raise BadInput(f"{option}: expected a writable file, got {str(path)!r} (permission denied)")
    return p


def new_output_file(option: str, path, overwrite: bool, alternative: str = "") -> Path:
    """:func:`output_file` that refuses an existing file unless ``overwrite`` (the ``--overwrite`` flag);
    ``alternative`` (", or ...") is appended to the advice."""
    p = output_file(option, path)
    if p.exists() and not overwrite:
        raise BadInput(
            f"{option}: expected a new file, got {str(path)!r}, which exists (an earlier run?); "
            f"pass --overwrite to replace it{alternative}"
        )
    return p


@contextmanager
def as_bad_input():
    """Inside the block, a ValueError/TypeError of a config's validation becomes :class:`BadInput`.

    Use it around the up-front checks only (building configs, reading option values), never around
    the work itself: an error there is a bug or a stop, not bad input.
    """
    try:
        yield
    except BadInput:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise BadInput(str(exc).strip("'\"")) from exc

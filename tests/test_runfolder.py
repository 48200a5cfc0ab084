"""Run folders appear whole or not at all, and a killed run never takes an earlier one with it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from experiments import runfolder


def _folder(path, text):
    path.mkdir()
    (path / "config.json").write_text(text)
    (path / "metrics.json").write_text(text)
    return path


def test_replace_swaps_the_finished_folder_in(tmp_path):
    target = _folder(tmp_path / "run", "old")
    new = runfolder.make_partial_dir(target)
    (new / "metrics.json").write_text("new")
    runfolder.replace_dir(new, target)
    assert (target / "metrics.json").read_text() == "new" and not (target / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_fallback_swap_undoes_itself_when_the_second_rename_fails(tmp_path, monkeypatch):
    target = _folder(tmp_path / "run", "old")
    new = runfolder.make_partial_dir(target)
    monkeypatch.setattr(runfolder, "_exchange", lambda a, b: False)  # a system without renameat2
    real = os.rename

    def failing(src, dst):
        if str(src) == str(new):
            raise OSError("disk trouble")
        return real(src, dst)

    monkeypatch.setattr(runfolder.os, "rename", failing)
    with pytest.raises(OSError, match="disk trouble"):
        runfolder.replace_dir(new, target)
    assert (target / "metrics.json").read_text() == "old"


def test_recover_puts_back_an_old_run_a_killed_swap_left_aside(tmp_path):
    target = tmp_path / "run"
    _folder(tmp_path / f".run.old-{2**22 + 1}", "old")  # killed between the two renames: no target
    runfolder.recover(target)
    assert (target / "metrics.json").read_text() == "old"
    _folder(tmp_path / ".run.old-7", "stale")
    runfolder.recover(target)  # the target exists: the leftover is removed, the run kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_recover_removes_dead_runs_partials_only_and_escapes_the_name(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    target = tmp_path / "seed[0-9]"
    (tmp_path / f".seed[0-9].partial-{dead_pid}-abc").mkdir()
    live = tmp_path / f".seed[0-9].partial-{os.getpid()}-def"
    live.mkdir()
    other = tmp_path / f".seed1.partial-{dead_pid}-ghi"  # another run whose name the glob would match
    other.mkdir()
    runfolder.recover(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_partial_folders_get_the_normal_mode(tmp_path):
    work = runfolder.make_partial_dir(tmp_path / "run")
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(work).st_mode & 0o777) == 0o777 & ~mask

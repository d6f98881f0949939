"""The one atomic writer (lit_align.runs.atomic): whole or not at all, and what killed writers leave is tidied."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lit_align.generation.records import write_jsonl
from lit_align.runs import atomic
from lit_align.runs.atomic import WRITE_DELAY_ENV, atomic_file, atomic_folder, host_tag
from lit_align.runs.folder import write_record


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "run.json"
    write_record(target, {"run_id": "a"})
    with pytest.raises(RuntimeError):
        with atomic_file(target, "w") as handle:
            handle.write('{"run_id": "b"')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text())["run_id"] == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


@pytest.mark.parametrize("write", [
    lambda path: write_record(path, {"run_id": "x"}),
    lambda path: write_jsonl(path, [{"index": 0}]),
])
def test_every_writer_removes_the_temporaries_of_dead_writers_on_this_host_only(tmp_path, write):
    target = tmp_path / "out.json"
    dead = tmp_path / f".out.json.write-{host_tag()}-{_dead_pid()}-0123abcd.tmp"
    alive = tmp_path / f".out.json.write-{host_tag()}-{os.getpid()}-0123abcd.tmp"
    other_host = tmp_path / f".out.json.write-ffffffff-{_dead_pid()}-0123abcd.tmp"
    for leftover in (dead, alive, other_host):
        leftover.write_text("half")
    write(target)
    assert target.exists() and not dead.exists()
    assert alive.exists() and other_host.exists()


def test_the_write_delay_hook_pauses_the_writes_it_names(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_writes", atomic.Counter())
    slept = []
    monkeypatch.setattr(atomic.time, "sleep", slept.append)
    monkeypatch.setenv(WRITE_DELAY_ENV, "7:2:*.jsonl")
    for _ in range(3):
        write_jsonl(tmp_path / "predictions.jsonl", [{"index": 0}])
        write_record(tmp_path / "run.json", {"run_id": "x"})  # not named: neither paused nor counted
    assert slept == [7.0]


def test_a_folder_killed_between_its_renames_is_put_back(tmp_path):
    target = tmp_path / "hf_model"
    with atomic_folder(target) as temp:
        (temp / "config.json").write_text("{}")
    aside = tmp_path / f".hf_model.old-{host_tag()}-{_dead_pid()}-0123abcd"
    os.rename(target, aside)  # what a writer killed between moving the old folder aside and renaming leaves
    with pytest.raises(RuntimeError):
        with atomic_folder(target):
            assert (target / "config.json").exists()  # restored before the new write starts
            raise RuntimeError("failed")
    assert (target / "config.json").exists() and not aside.exists()

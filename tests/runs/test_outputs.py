"""Outputs that never lie: a debug run leaves a run folder's checkpoint and export alone, an export appears whole
or not at all (also when the process is killed in the middle of it), and one fit at a time holds a run folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from support.cli import fit_args, run_main
from lit_align.policy.export import export_policy
from lit_align.runs.outputs import DiskWriteError, atomic_directory
from lit_align.runs.lock import LOCK_NAME, RunFolderLockedError, RunLock

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS = {"config.json": b'{"previous": true}', "model.safetensors": b"previous weights",
            "tokenizer.json": b'{"previous": "tokenizer"}'}


def _previous_run(folder: Path) -> dict[Path, bytes]:
    """Stand-ins for an earlier run's ``last.ckpt`` and complete ``hf_model/``: what must survive."""
    files = {folder / "checkpoints" / "last.ckpt": b"the real run's checkpoint"}
    files.update({folder / "hf_model" / name: data for name, data in PREVIOUS.items()})
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_fast_dev_run_writes_under_debug_and_leaves_the_run_outputs_alone(run_dir, caplog):
    files = _previous_run(run_dir / "runs/test")
    args = fit_args("dpo.yaml", "--data.val_split=null", "--trainer.fast_dev_run=true",
                    "--export.dirpath=runs/test/hf_model", steps=1)
    assert run_main(args) == 0
    for path, data in files.items():
        assert path.read_bytes() == data, path
    debug = run_dir / "runs/test/debug"
    assert (debug / "checkpoints" / "last.ckpt").is_file() and (debug / "hf_model" / "tokenizer.json").is_file()
    assert ("fast_dev_run: a debug run writes under runs/test/debug (and export.dirpath with it), never into the "
            "outputs of runs/test") in caplog.text


# -- the export: whole or not at all ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_policy():
    from lit_align.policy.with_reference import PolicyWithReference

    return PolicyWithReference("tiny", reference="copy")


def _perturb(model) -> None:
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.5)


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_failed_export_keeps_the_previous_one_and_leaves_no_temporary(tmp_path, tiny_policy, monkeypatch):
    target = tmp_path / "hf_model"
    export_policy(tiny_policy, target)
    before = _listing(target)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(before)

    def fail(*args, **kwargs):
        raise RuntimeError("tokenizer writer failed")

    _perturb(tiny_policy.policy)  # the failed export's weights differ, so a half-written one would show
    monkeypatch.setattr(type(tiny_policy.tokenizer), "save_pretrained", fail)
    with pytest.raises(RuntimeError, match="tokenizer writer failed"):
        export_policy(tiny_policy, target)
    assert _listing(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_model"]


def test_export_on_a_full_disk_is_one_error_naming_the_folder(tmp_path, tiny_policy, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(tiny_policy.tokenizer), "save_pretrained", full)
    with pytest.raises(DiskWriteError) as caught:
        export_policy(tiny_policy, tmp_path / "hf_model")
    assert str(caught.value) == (f"No space left on device writing {tmp_path / 'hf_model'}: free space there or "
                                 "write the run elsewhere (--trainer.default_root_dir)")
    assert not list(tmp_path.iterdir())


def test_export_refuses_to_replace_a_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="refusing to replace .*: it is not a model export"):
        with atomic_directory(tmp_path):
            pass
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_reward_model_export_replaces_the_previous_one_whole(tmp_path, monkeypatch):
    from lit_align.objectives.offline.reward import RewardModeling

    reward = RewardModeling("tiny")
    target = tmp_path / "reward_model"
    reward.export_hf(target)
    before = _listing(target)
    _perturb(reward.scorer)
    monkeypatch.setattr(type(reward.scorer.tokenizer), "save_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        reward.export_hf(target)
    assert _listing(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["reward_model"]


KILLED_EXPORT = textwrap.dedent("""
    import sys, time
    from transformers import PreTrainedTokenizerBase
    from lit_align.cli.app import main

    def stall(self, *args, **kwargs):  # the weights are written; the kill lands before the tokenizer
        open("exporting", "w").close()
        time.sleep(600)

    PreTrainedTokenizerBase.save_pretrained = stall
    main(sys.argv[1:])
""")


def test_kill_during_export_leaves_the_previous_complete_export(run_dir, tiny_policy):
    files = _previous_run(run_dir / "runs/test")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = fit_args("dpo.yaml", "--data.val_split=null", steps=1)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, *args], cwd=run_dir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "exporting").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the run never reached its export"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    export = run_dir / "runs/test/hf_model"
    assert {p.name: p.read_bytes() for p in export.iterdir()} == PREVIOUS  # untouched, not half replaced
    leftovers = [p for p in export.parent.iterdir() if p.name.startswith(".hf_model.")]
    assert leftovers  # the killed writer's temporary; the next export on this host removes it
    export_policy(tiny_policy, export)
    assert (export / "tokenizer.json").is_file() and (export / "model.safetensors").read_bytes() != PREVIOUS[
        "model.safetensors"]
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".hf_model.")]


# -- one fit per run folder -----------------------------------------------------------------------------------


HOLDER = textwrap.dedent("""
    import sys, time
    from lit_align.runs.lock import RunLock

    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def test_second_fit_on_a_locked_run_folder_refuses_and_a_dead_holders_lock_is_taken_over(run_dir, capsys, caplog):
    folder = run_dir / "runs/test"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = json.loads((folder / LOCK_NAME).read_text())["started"]
        args = fit_args("dpo.yaml", "--data.val_split=null", steps=1)
        assert run_main(args) == 2
        line = capsys.readouterr().err.strip().splitlines()[-2]
        assert line == (
            f"lit-align: error: the run folder runs/test is locked: lit-align pid {holder.pid} on host "
            f"{socket.gethostname()}, started {started} is using it. Wait for that run to end, or give this one "
            f"another --trainer.default_root_dir; if that run is gone, delete {os.path.join('runs/test', LOCK_NAME)}")
        assert not (folder / "checkpoints").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its record is still there, its flock is gone.
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid
    assert run_main(args) == 0
    assert (f"run folder runs/test: taking over the lock of a run that ended without releasing it (lit-align pid "
            f"{holder.pid} on host {socket.gethostname()}, started {started})") in caplog.text
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert not (folder / LOCK_NAME).exists()  # released at the end of the fit


def test_lock_refuses_a_second_holder_and_respects_another_hosts_record(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderLockedError, match=f"pid {os.getpid()} on host"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "2026-01-01T00:00:00"}))
    with pytest.raises(RunFolderLockedError, match="pid 1 on host elsewhere, started 2026-01-01T00:00:00 may be "
                                                   "using it"):
        RunLock(tmp_path).acquire()


@pytest.mark.slow
@pytest.mark.extended
def test_two_process_fit_locks_once_from_rank_zero(run_dir):
    """Under DDP the second process starts the CLI again (LOCAL_RANK=1): it must join the run rank 0 locked,
    not refuse it."""
    from support.launch import launch

    args = fit_args("dpo.yaml", "--data.val_split=null", "--data.batch_size=4", "--export.enabled=false",
                    "--trainer.strategy=ddp", "--trainer.devices=2", steps=1)
    output = launch(args, timeout=180)
    assert "is locked" not in output
    assert (run_dir / "runs/test/checkpoints/last.ckpt").is_file()
    assert not (run_dir / "runs/test" / LOCK_NAME).exists()


def test_a_previous_export_a_killed_writer_left_moved_aside_is_put_back(tmp_path):
    """Killed between its two renames, a writer leaves the old export under a hidden name and no target: the next
    write on this host puts it back before anything else (here the next write fails, and the old one remains)."""
    from lit_align.runs.atomic import host_tag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".hf_model.old-{host_tag()}-{dead.pid}-0123abcd"
    aside.mkdir()
    (aside / "config.json").write_text('{"old": true}')
    with pytest.raises(RuntimeError, match="stop"):
        with atomic_directory(tmp_path / "hf_model"):
            raise RuntimeError("stop")
    assert (tmp_path / "hf_model" / "config.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_model"]

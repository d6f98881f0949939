"""Crashes lose nothing: real ``lit-align fit`` processes killed with real signals, resumed with ``--ckpt_path last``.

One chain of runs on the tiny default (64 rows, batches of 16: 4 steps an epoch, 8 steps in all, ``last.ckpt``
every 2 steps), each interruption resumed by the next run:

1. SIGKILL in the middle of step 3 (after its forward, before its backward)  -> ``last.ckpt`` holds step 2;
2. resumed, then SIGKILL while the step-6 checkpoint is half-written        -> ``last.ckpt`` still holds step 4,
   intact, next to the partial temporary file;
3. resumed, then SIGTERM during step 5                                       -> step 5 finishes, ``last.ckpt``
   holds step 6, exit status 143, no traceback;
4. resumed to the end.

The weights at the end must equal those of one uninterrupted run, exactly (CPU, one thread, no dropout).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_align.runs.checkpoint_io import WRITE_DELAY_ENV, load_checkpoint_file

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # the default suite stays under 15 minutes

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = os.path.join(os.path.dirname(sys.executable), "lit-align")


def command(root_dir: Path, *extra: str) -> list[str]:
    return [
        SCRIPT, "fit", "--config", str(ROOT / "configs" / "dpo.yaml"),
        "--trainer.max_steps=8", "--trainer.max_epochs=-1", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=0", "--trainer.val_check_interval=null", "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={root_dir}", "--data.limit_rows=64", "--data.val_split=null",
        "--checkpoint.every_n_train_steps=2", "--export.enabled=false", *extra,
    ]


def pause_at(step: int, marker: Path, seconds: float) -> list[str]:
    return ["--trainer.callbacks+=support.crash.PauseMidStep", f"--trainer.callbacks.step={step}",
            f"--trainer.callbacks.marker={marker}", f"--trainer.callbacks.seconds={seconds}"]


def env(**extra: str) -> dict:
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    base.pop(WRITE_DELAY_ENV, None)
    return {**base, **extra}


def run(args: list[str], **extra_env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env(**extra_env), capture_output=True, text=True, timeout=240)
    return done


def start(args: list[str], **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(args, env=env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def paused_write(partial) -> bool:
    """A temporary file that is still there 2 s later: the paused write (an ordinary one takes milliseconds)."""
    before = partial()
    if not before:
        return False
    time.sleep(2.0)
    return bool(set(before) & set(partial()))


def test_killed_and_preempted_runs_resume_to_the_same_weights(tmp_path):
    reference_dir, chain_dir = tmp_path / "uninterrupted", tmp_path / "interrupted"
    last = chain_dir / "checkpoints" / "last.ckpt"

    done = run(command(reference_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = load_checkpoint_file(reference_dir / "checkpoints" / "last.ckpt")
    assert expected["global_step"] == 8

    # 1. SIGKILL in the middle of step 3.
    marker = tmp_path / "paused-3"
    proc = start(command(chain_dir, *pause_at(3, marker, 120)))
    wait_for(marker.exists, proc, "step 3")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert load_checkpoint_file(last)["global_step"] == 2

    # 2. Resumed; SIGKILL while the second checkpoint of this process (step 6) is being written.
    proc = start(command(chain_dir, "--ckpt_path=last"), **{WRITE_DELAY_ENV: "120:2"})
    partial = lambda: [p for p in last.parent.glob(".ckpt-write-*.tmp") if p.stat().st_size > 0]  # noqa: E731
    wait_for(lambda: paused_write(partial), proc, "the step-6 checkpoint write")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert partial(), "the half-written temporary file should be what the kill left behind"
    survivor = load_checkpoint_file(last)
    assert survivor["global_step"] == 4  # the previous checkpoint, whole
    assert all(torch.isfinite(v).all() for v in survivor["state_dict"].values())

    # 3. Resumed; SIGTERM during step 5: the step finishes, step 6 is saved, exit status 143.
    marker = tmp_path / "paused-5"
    proc = start(command(chain_dir, "--ckpt_path=last", *pause_at(5, marker, 3)))
    wait_for(marker.exists, proc, "step 5")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "stopped by SIGTERM after saving last.ckpt; resume with --ckpt_path last" in stderr
    assert load_checkpoint_file(last)["global_step"] == 6
    assert not list(last.parent.glob(".ckpt-write-*.tmp")), "stale temporaries of killed writers are removed"

    # 4. Resumed to the end: the same weights as the uninterrupted run.
    done = run(command(chain_dir, "--ckpt_path=last"))
    assert done.returncode == 0, done.stderr[-3000:]
    final = load_checkpoint_file(last)
    assert final["global_step"] == 8
    assert final["state_dict"].keys() == expected["state_dict"].keys()
    for name, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], value), name

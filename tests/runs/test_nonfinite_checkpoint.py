"""A run stopped by a non-finite loss says which checkpoint is the last good one, or that none has been written:
never "the last checkpoint is still good" when there is none."""

from __future__ import annotations

from support.cli import fit_args, run_main

NAN = ["--model=support.crash.NaNLossDPO", "--data.val_split=null", "--export.enabled=false",
       "--data.init_args.limit_rows=24", "--data.init_args.batch_size=4"]
LAST = "runs/test/checkpoints/last.ckpt"


def _error_line(capsys) -> str:
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-align: error:")]
    return line


def test_nan_before_any_checkpoint_says_none_has_been_written(run_dir, capsys):
    # configs/dpo.yaml checkpoints every 32 steps: nothing is on disk at step 1
    assert run_main(fit_args("dpo.yaml", *NAN, "--model.nan_step=1", steps=4)) == 2
    line = _error_line(capsys)
    assert line.startswith("lit-align: error: non-finite loss (nan) at step 1 (epoch 0, batch 1); training stopped "
                           "before the update; no checkpoint has been written yet. Lower the learning rate")
    assert "still good" not in line
    assert not (run_dir / "runs/test/checkpoints").exists()


def test_nan_names_the_last_checkpoint_written_or_resumed_from(run_dir, capsys):
    assert run_main(fit_args("dpo.yaml", *NAN, "--model.nan_step=2", "--checkpoint.every_n_train_steps=1",
                             steps=4)) == 2
    assert (f"at step 2 (epoch 0, batch 2); training stopped before the update; the last good checkpoint is {LAST} "
            f"(step 2): resume from it with --ckpt_path {LAST}. Lower the learning rate") in _error_line(capsys)

    # Resumed from it, failing at step 3 before this run wrote a checkpoint: the one it resumed from is named.
    assert run_main(fit_args("dpo.yaml", *NAN, "--model.nan_step=3", "--ckpt_path=last", steps=5)) == 2
    assert (f"at step 3 (epoch 0, batch 3); training stopped before the update; the last good checkpoint is {LAST} "
            "(step 2)") in _error_line(capsys)

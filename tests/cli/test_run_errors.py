"""Settings and disk failures a user fixes end ``lit-align`` with ONE line naming the setting or file and the fix
(exit status 2), not a traceback or a page of type errors. Each case is a real run of the console entry point."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from support.cli import fit_args, run_main

ROOT = Path(__file__).resolve().parents[2]
NOT_WRITABLE = "/sys/lit-align-test-run"  # refused even to root (sysfs), unlike a chmod-ed folder


def _error_line(capsys) -> str:
    """The message of the run's last two lines: ``lit-align: error: <message>`` and the LIT_ALIGN_DEBUG hint."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == "(set LIT_ALIGN_DEBUG=1 to see the traceback)", lines[-30:]
    assert lines[-2].startswith("lit-align: error: "), lines[-30:]
    return lines[-2][len("lit-align: error: "):]


@pytest.mark.parametrize("extra, expected", [
    (["--trainer.default_root_dir=a_file"],
     "trainer.default_root_dir a_file is a file, not a folder: choose a folder for the run's checkpoints, logs and "
     "export"),
    (["--trainer.max_steps=-5"],
     "trainer.max_steps=-5: use a number of optimizer steps (0 or more), or -1 for no limit (the epochs then decide)"),
    (["--trainer.precision=bogus"],
     "trainer.precision=bogus is not a precision Lightning knows; use one of: 64, 32, 16, transformer-engine, "
     "transformer-engine-float16, 16-true, 16-mixed, bf16-true, bf16-mixed, 32-true, 64-true, bf16"),
    (["--trainer.plugins=lightning.pytorch.plugins.precision.MixedPrecision"],
     "trainer.plugins: 'lightning.pytorch.plugins.precision.MixedPrecision': the following arguments are required: "
     "precision, device"),
], ids=["root-is-a-file", "max-steps-below-minus-one", "unknown-precision", "precision-plugin-without-arguments"])
def test_bad_trainer_setting_is_one_line(extra, expected, run_dir, capsys):
    (run_dir / "a_file").write_text("not a folder")
    assert run_main(fit_args("dpo.yaml", "--data.val_split=null", *extra, steps=1)) == 2
    assert _error_line(capsys) == expected
    assert not (run_dir / "runs").exists()  # refused before anything was written


def test_unwritable_run_folder_is_one_line(run_dir, capsys):
    try:
        os.mkdir(NOT_WRITABLE)
    except OSError:
        pass
    else:
        os.rmdir(NOT_WRITABLE)
        pytest.skip(f"{NOT_WRITABLE} can be created here")
    assert run_main(fit_args("dpo.yaml", f"--trainer.default_root_dir={NOT_WRITABLE}", steps=1)) == 2
    line = _error_line(capsys)
    assert line.startswith("trainer.default_root_dir cannot be used: ") and f"writing {NOT_WRITABLE}: " in line
    assert "(--trainer.default_root_dir)" in line


def test_precision_whose_package_is_missing_is_one_line(run_dir, capsys):
    try:
        import transformer_engine  # noqa: F401
        pytest.skip("transformer_engine is installed")
    except ImportError:
        pass
    assert run_main(fit_args("dpo.yaml", "--trainer.precision=transformer-engine", steps=1)) == 2
    line = _error_line(capsys)
    assert line.startswith("trainer: a setting needs a package that is not installed: Requirement "
                           "'transformer_engine"), line


def test_full_disk_while_checkpointing_is_one_line_and_releases_the_run_folder(run_dir, capsys, monkeypatch):
    """ENOSPC from the writer (as a full disk raises it mid-file) names the checkpoint being written."""
    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"PK")  # a few bytes reach the temporary file first, as on a real disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("lit_align.runs.checkpoint_io.torch.save", full_disk)
    assert run_main(fit_args("dpo.yaml", "--data.val_split=null", "--export.enabled=false", steps=1)) == 2
    line = _error_line(capsys)
    assert line == (f"No space left on device writing {os.path.join('runs/test/checkpoints', 'last.ckpt')}: free "
                    "space there or write the run elsewhere (--trainer.default_root_dir)")
    checkpoints = run_dir / "runs/test/checkpoints"
    assert not list(checkpoints.iterdir())  # neither a truncated last.ckpt nor the temporary
    assert not (run_dir / "runs/test/.lit-align.lock").exists()  # the lock went with the failed run


def test_missing_judge_key_is_one_line(run_dir, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    code = run_main([
        "evaluate", "--config", str(ROOT / "configs" / "dpo.yaml"), "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", "--trainer.default_root_dir=runs/eval",
        "--trainer.limit_predict_batches=1", "--judge=LLMJudge", "--judge.base_url=http://127.0.0.1:9/v1",
        "--judge.model=m", "--judge.api_key_env=NO_SUCH_JUDGE_KEY", "--output_dir=report",
    ])
    assert code == 2
    assert _error_line(capsys) == (
        "the judge needs an API key: set the environment variable NO_SUCH_JUDGE_KEY to the API key of "
        "http://127.0.0.1:9/v1 (judge.api_key_env), or set judge.api_key_env to null for an endpoint without "
        "authentication")


def test_full_disk_under_the_logger_is_one_line(run_dir, capsys, monkeypatch):
    """A writer that names no file (the CSV logger's metrics) still ends in one line saying what happened."""
    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("lightning.fabric.loggers.csv_logs._ExperimentWriter.save", full_disk)
    assert run_main(fit_args("dpo.yaml", "--data.val_split=null", "--export.enabled=false", steps=1)) == 2
    assert _error_line(capsys) == (
        "No space left on device while writing the run's logs or samples: free space on the run folder's file "
        "system or write the run elsewhere (--trainer.default_root_dir)")

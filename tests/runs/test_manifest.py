"""The run manifest: every checkpoint says what run wrote it, and a resume into a different run is refused with one
line naming each difference (or allowed on request); CLI arguments given with --ckpt_path are honoured.

One short DPO fit (16 rows in batches of 4, 2 steps) is shared by the module; each test resumes a copy of its
checkpoint directory in its own working directory.
"""

from __future__ import annotations

import shutil

import lightning
import pytest
import torch
import transformers

import lit_align
from support.cli import fit_args, fit_in, run_main
from lit_align.runs.checkpoint_io import CHECKSUM_KEY, load_checkpoint_file
from lit_align.cli.app import build_cli
from lit_align.runs.manifest import MANIFEST_KEY, ManifestComparison

LAST = "runs/test/checkpoints/last.ckpt"
QUIET = ["--data.val_split=null", "--export.enabled=false", "--trainer.limit_val_batches=0"]
SMALL = ["--data.init_args.limit_rows=16", "--data.init_args.batch_size=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The checkpoint directory of a 2-step DPO fit (beta 0.1, 16 rows, batches of 4)."""
    return fit_in(tmp_path_factory.mktemp("trained"), *QUIET, *SMALL, steps=2)


@pytest.fixture
def resumable(run_dir, trained, monkeypatch):
    monkeypatch.setenv("LIT_ALIGN_CACHE", str(run_dir / ".cache"))
    shutil.copytree(trained, run_dir / "runs/test/checkpoints")
    return run_dir


def test_every_checkpoint_carries_the_manifest_of_its_run(trained):
    manifest = load_checkpoint_file(trained / "last.ckpt")[MANIFEST_KEY]
    assert manifest["objective"] == "lit_align.objectives.offline.dpo.DPO"
    assert manifest["batch_size"] == 4 and manifest["accumulate_grad_batches"] == 1 and manifest["world_size"] == 1
    assert manifest["data"]["train_rows"] == 16 and len(manifest["data"]["train"]) == 64  # hex SHA-256
    assert manifest["lengths"] == {"max_length": 64, "max_prompt_length": 32}  # configs/dpo.yaml
    assert manifest["max_steps"] == 2
    assert manifest["versions"] == {"lit_align": lit_align.__version__, "torch": torch.__version__,
                                    "transformers": transformers.__version__, "lightning": lightning.__version__}


@pytest.mark.parametrize("change, expected", [
    (["--data.init_args.batch_size=2"], "batch size 4 -> 2"),
    (["--data.init_args.limit_rows=12"], "data train content changed (16 -> 12 rows)"),
    (["--data.init_args.max_length=48"], "max_length 64 -> 48"),
    (["--trainer.accumulate_grad_batches=2"], "accumulate_grad_batches 1 -> 2"),
    # another data order replays some rows and skips others from the saved position (9 of 32 before)
    (["--data.init_args.seed=1"], "data.seed (the data order) 0 -> 1"),
    (["--seed_everything=1"], "data.seed (the data order) 0 -> 1"),
], ids=["batch-size", "data", "length", "accumulation", "data-seed", "seed-everything"])
def test_resume_into_other_data_or_batching_is_refused_naming_the_change(resumable, capsys, change, expected):
    assert run_main(fit_args("dpo.yaml", *QUIET, *SMALL, *change, "--ckpt_path=last", steps=4)) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("lit-align: error:"))
    assert line == (f"lit-align: error: cannot resume {LAST}: {expected}; "
                    "pass --checkpoint.resume_changes allow to resume anyway")


@pytest.mark.parametrize("config, objective", [
    ("ipo.yaml", "lit_align.objectives.offline.dpo.IPO"),
    ("sft.yaml", "lit_align.objectives.offline.sft.SFT"),
    ("pmle.yaml", "lit_align.objectives.offline.pmle.PMLE"),
])
def test_a_dpo_checkpoint_is_refused_by_another_objective(resumable, capsys, config, objective):
    assert run_main(fit_args(config, *QUIET, f"--ckpt_path={LAST}", steps=4)) == 2
    err = capsys.readouterr().err
    assert f"lit-align: error: cannot resume {LAST}: objective lit_align.objectives.offline.dpo.DPO -> {objective}" in err


def test_resume_changes_allow_resumes_anyway_with_a_warning(resumable):
    with pytest.warns(UserWarning, match=r"different run \(checkpoint.resume_changes=allow\): batch size 4 -> 2"):
        cli = build_cli(fit_args("dpo.yaml", *QUIET, *SMALL, "--data.init_args.batch_size=2",
                                 "--checkpoint.resume_changes=allow", "--ckpt_path=last", steps=3))
    assert cli.trainer.global_step == 3
    assert load_checkpoint_file(resumable / LAST)[MANIFEST_KEY]["batch_size"] == 2


def test_cli_arguments_given_with_ckpt_path_win_over_the_checkpoints_hyperparameters(resumable):
    # Lightning's LightningCLI loads the file's hyperparameters over the parsed config: beta would be 0.1 again.
    with pytest.warns(UserWarning, match=r"resuming .*last\.ckpt: model\.beta 0\.1 -> 0\.5"):
        cli = build_cli(fit_args("dpo.yaml", *QUIET, *SMALL, "--model.init_args.beta=0.5", f"--ckpt_path={LAST}",
                                 steps=3))
    assert cli.model.hparams.beta == 0.5 and cli.model.beta == 0.5
    assert cli.trainer.global_step == 3  # it did resume (from step 2)
    assert load_checkpoint_file(resumable / LAST)["hyper_parameters"]["beta"] == 0.5


def test_checkpoint_without_a_manifest_resumes_with_a_warning(resumable):
    checkpoint = load_checkpoint_file(resumable / LAST)
    del checkpoint[MANIFEST_KEY]
    torch.save(checkpoint, resumable / LAST)  # as an older lit-align wrote it: no manifest, no checksum
    assert CHECKSUM_KEY not in checkpoint
    with pytest.warns(UserWarning, match=r"last\.ckpt has no run manifest"):
        cli = build_cli(fit_args("dpo.yaml", *QUIET, *SMALL, "--ckpt_path=last", steps=3))
    assert cli.trainer.global_step == 3


def test_comparison_refuses_run_changes_warns_on_versions_and_notes_longer_runs():
    saved = {"objective": "a.DPO", "data": {"train": "x", "train_rows": 512, "val": "v", "val_rows": 8},
             "batch_size": 16, "accumulate_grad_batches": 1, "world_size": 2, "lengths": {"max_length": 64},
             "max_steps": 100, "max_epochs": 1, "versions": {"torch": "2.12.0", "lightning": "2.6.6"}}
    current = {**saved, "data": {"train": "y", "train_rows": 480, "val": "w", "val_rows": 8}, "batch_size": 8,
               "world_size": 2, "max_steps": 200, "versions": {"torch": "2.13.0", "lightning": "2.6.6"}}
    result = ManifestComparison(saved, current, {"beta": 0.1, "lr": 1e-3}, {"beta": 0.1, "lr": 5e-4})
    assert result.refusals == ["data train content changed (512 -> 480 rows)", "batch size 16 -> 8"]
    assert result.warnings == ["data val content changed (8 -> 8 rows)", "torch 2.12.0 -> 2.13.0",
                               "model.lr 0.001 -> 0.0005"]
    assert result.notes == ["max_steps 100 -> 200"]
    same = ManifestComparison(saved, saved, {"beta": 0.1}, {"beta": 0.1})
    assert same.refusals == same.warnings == same.notes == []

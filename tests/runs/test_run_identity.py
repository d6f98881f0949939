"""Run state known by its content: pi_0, seeds, the run a folder holds, exports, evaluation rows, plots, secrets.

Each test is a case that used the wrong state without a word before: pi_0 rebuilt from a rewritten model folder,
seeds that changed nothing, a fresh fit over another run's folder, a zero-step fit replacing a finished export,
two evaluations into one folder keeping one row, plots joining unrelated runs, a hub token in a written config.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from support.cli import fit_args, run_main
from lit_align.data.chat import ChatRenderer
from lit_align.evaluation.report import update_report, update_samples
from lit_align.models.loading import load_causal_lm, load_tokenizer
from lit_align.runs.plot import read_run
from lit_align.policy.with_reference import PolicyWithReference
from lit_align.policy.reference import ReferenceChangedError
from lit_align.policy.reference_cache import ReferenceCacheError
from lit_align.runs.folder import LOG_RECORD_NAME
from lit_align.runs.seeds import GLOBAL_SEED_ENV

QUIET = ["--data.val_split=null", "--trainer.limit_val_batches=0", "--data.init_args.limit_rows=8",
         "--data.init_args.batch_size=4"]


def _save_tiny(folder: Path, seed: int) -> Path:
    load_causal_lm("tiny", seed=seed).save_pretrained(folder)
    load_tokenizer("tiny").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("reference", ["copy", "lora", "cache"])
def test_pi0_rebuilt_from_a_rewritten_model_folder_is_refused(tmp_path, reference):
    folder = _save_tiny(tmp_path / "sft", seed=0)
    checkpoint: dict = {}
    PolicyWithReference(str(folder), reference=reference, reference_cache_dir=str(tmp_path)).reference.save_state(
        checkpoint)
    # the same files again (a copy, a touch): the same pi_0
    PolicyWithReference(str(folder), reference=reference, reference_cache_dir=str(tmp_path)).reference.check_state(
        checkpoint, "last.ckpt")
    _save_tiny(folder, seed=1)  # an SFT re-run into the same folder: same names, same sizes, other weights
    rebuilt = PolicyWithReference(str(folder), reference=reference, reference_cache_dir=str(tmp_path))
    with pytest.raises((ReferenceChangedError, ReferenceCacheError), match="another (pi_0|reference)"):
        rebuilt.reference.check_state(checkpoint, "last.ckpt")


@pytest.mark.extended
def test_resuming_after_the_model_folder_was_rewritten_is_refused_in_one_line(run_dir, capsys):
    folder = _save_tiny(run_dir / "sft", seed=0)
    model = f"--model.init_args.policy.init_args.model={folder}"
    assert run_main(fit_args("dpo.yaml", *QUIET, model, "--export.enabled=false", steps=1)) == 0
    _save_tiny(folder, seed=1)  # an SFT re-run into the same folder
    assert run_main(fit_args("dpo.yaml", *QUIET, model, "--export.enabled=false", "--ckpt_path=last", steps=2)) == 2
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-align: error:"))
    assert "was trained against another pi_0" in line and "restore the model the run started from" in line


def test_seed_everything_drives_every_seed_unless_one_is_given(monkeypatch):
    from lit_align.data import PreferenceDataModule
    from lit_align.objectives.onpolicy.reward_stage import RewardStage

    weights = {}
    for seed in (0, 1):
        monkeypatch.setenv(GLOBAL_SEED_ENV, str(seed))
        policy = PolicyWithReference("tiny", reference="none")
        weights[seed] = next(policy.policy.parameters()).detach().clone()
        assert policy.seed == seed and PreferenceDataModule().seed == seed and RewardStage().effective_seed == seed
    assert not torch.equal(weights[0], weights[1])
    assert PreferenceDataModule(seed=5).seed == 5 and PolicyWithReference("tiny", reference="none", seed=0).seed == 0


def test_templates_that_write_today_render_the_same_every_day():
    tokenizer = load_tokenizer("tiny")
    tokenizer.chat_template = ("{{ strftime_now('%d %b %Y') }}{% for m in messages %}<|im_start|>{{ m['content'] }}"
                               "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>{% endif %}")
    renderer = ChatRenderer(tokenizer)
    prompt, _ = renderer.render([{"role": "user", "content": "Hi"}], [[{"role": "assistant", "content": "Yo"}]],
                                ("chosen",), "rows", 0)
    assert prompt.startswith("26 Jul 2024")


@pytest.mark.extended
def test_a_fresh_fit_never_replaces_another_run_and_a_zero_step_fit_never_exports(run_dir, capsys, caplog):
    assert run_main(fit_args("dpo.yaml", *QUIET, steps=1)) == 0
    weights = run_dir / "runs/test/hf_model/model.safetensors"
    exported = weights.read_bytes()
    # "just validate" in the finished folder: the same run, no optimizer step, so no export of the untrained pi_0
    with caplog.at_level("INFO"):
        assert run_main(fit_args("dpo.yaml", *QUIET, "--trainer.limit_train_batches=0", steps=1)) == 0
    assert "no optimizer step was taken in this fit: nothing exported" in caplog.text
    assert "seeds: seed_everything 0 -> data order 0, model init 0" in caplog.text
    assert weights.read_bytes() == exported
    # another run (a README variant) into the same folder: refused with the two ways out
    assert run_main(fit_args("dpo.yaml", *QUIET, "--model.init_args.beta=0.05", steps=1)) == 2
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-align: error:"))
    assert line.startswith("lit-align: error: runs/test holds another run (model.beta 0.1 -> 0.05")
    assert "--ckpt_path last" in line and "--trainer.default_root_dir runs/test-2" in line
    assert weights.read_bytes() == exported


@pytest.mark.extended
def test_a_resume_with_changed_hyperparameters_stays_one_run_for_plot(run_dir):
    # resuming with another beta is allowed (a warning): its logger version is still this run's, so plot joins it
    assert run_main(fit_args("dpo.yaml", *QUIET, "--export.enabled=false", "--trainer.log_every_n_steps=1",
                             steps=1)) == 0
    assert run_main(fit_args("dpo.yaml", *QUIET, "--export.enabled=false", "--trainer.log_every_n_steps=1",
                             "--model.init_args.beta=0.05", "--ckpt_path=last", steps=2)) == 0
    ids = {json.loads(path.read_text())["run_id"] for path in (run_dir / "runs/test/logs").glob(f"*/{LOG_RECORD_NAME}")}
    assert len(ids) == 1
    assert [step for step, _ in read_run(run_dir / "runs/test")["train/loss"]] == [0, 1]


def test_export_over_the_model_the_run_reads_is_refused(tmp_path):
    from lit_align.callbacks import HFExport
    from lit_align.errors import UserError

    folder = _save_tiny(tmp_path / "sft", seed=0)

    class Module:
        policy = type("P", (), {"model_name": str(folder)})()

    with pytest.raises(UserError, match="is the model this run reads"):
        HFExport(dirpath=str(folder)).setup(L.Trainer(logger=False, enable_checkpointing=False), Module(), "fit")


def test_two_evaluations_into_one_folder_keep_a_row_and_samples_each(tmp_path):
    base = {"method": "DPO", "prompts": 1, "samples": 1, "win_rate": 50.0, "win_prob": 50.0, "reward": 0.0,
            "reference_reward": 0.0, "kl": 0.0, "kl_std": 0.0, "length": 3.0, "ended": 100.0}
    for model, win in (("aaaa", 40.0), ("bbbb", 60.0), ("bbbb", 65.0)):  # pi_0, trained, trained again
        update_report(tmp_path, {**base, "model": model, "win_rate": win})
        update_samples(tmp_path / "samples.jsonl", [{"index": 0, "response": model}], "DPO", model)
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [(r["model"], float(r["win_rate"])) for r in rows] == [("aaaa", 40.0), ("bbbb", 65.0)]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").open()]
    assert sorted(s["model"] for s in samples) == ["aaaa", "bbbb"]


def test_plot_joins_the_versions_of_one_run_never_another_run_of_the_folder(tmp_path):
    for version, run, rows in ((0, "a", [(0, 0.69), (99, 0.04)]), (1, "b", [(0, 0.69)]), (2, "b", [(1, 0.5)])):
        folder = tmp_path / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / LOG_RECORD_NAME).write_text(json.dumps({"run_id": run}))
        (folder / "metrics.csv").write_text("step,train/loss\n" + "".join(f"{s},{v}\n" for s, v in rows))
    assert read_run(tmp_path)["train/loss"] == [(0, 0.69), (1, 0.5)]


def test_plot_after_a_validate_into_the_folder_still_draws_the_fit(tmp_path):
    # validate writes a logger version with no run identity: it must not hide the fit's versions
    for version, run, rows in ((0, "a", [(0, 0.69), (99, 0.04)]), (1, None, [(99, 0.05)])):
        folder = tmp_path / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        if run is not None:
            (folder / LOG_RECORD_NAME).write_text(json.dumps({"run_id": run}))
        (folder / "metrics.csv").write_text("step,train/loss\n" + "".join(f"{s},{v}\n" for s, v in rows))
    assert read_run(tmp_path)["train/loss"] == [(0, 0.69), (99, 0.04)]


@pytest.mark.extended
def test_a_token_given_as_a_config_value_is_masked_in_every_written_file(run_dir, capsys):
    token = "hf_" + "q" * 30
    folder = _save_tiny(run_dir / "sft", seed=0)
    args = fit_args("dpo.yaml", *QUIET, "--export.enabled=false", f"--model.init_args.policy.init_args.model={folder}",
                    f'--model.init_args.policy.init_args.model_kwargs={{"token": "{token}"}}', steps=1)
    assert run_main(args + ["--print_config"]) == 0
    assert token not in capsys.readouterr().out
    assert run_main(args) == 0
    captured = capsys.readouterr()
    assert token not in captured.out + captured.err
    for path in (run_dir / "runs").rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".json", ".csv", ".ckpt"):
            assert token.encode() not in path.read_bytes(), path


def test_the_reward_stage_knows_its_backbone_by_weights_not_by_path(tmp_path):
    from types import SimpleNamespace

    from lit_align.objectives.onpolicy.reward_stage import RewardStage

    folder = _save_tiny(tmp_path / "sft", seed=0)
    objective = SimpleNamespace(policy=SimpleNamespace(model_name="tiny", reference=None))
    data = SimpleNamespace(hparams={"batch_size": 4})
    stage = RewardStage(model=str(folder))
    before = stage.fingerprint(objective, data)
    assert stage.fingerprint(objective, data) == before  # the same files: reused
    _save_tiny(folder, seed=1)  # rewritten in place: same path, other weights -> retrained
    assert stage.fingerprint(objective, data) != before


@pytest.mark.extended
def test_validate_with_another_objectives_checkpoint_is_one_line(run_dir, capsys):
    assert run_main(fit_args("dpo.yaml", *QUIET, "--export.enabled=false", steps=1)) == 0
    root = Path(__file__).resolve().parents[2]
    args = ["validate", "--config", str(root / "configs" / "sft.yaml"), "--trainer.accelerator=cpu",
            "--trainer.default_root_dir=runs/other", "--ckpt_path=runs/test/checkpoints/last.ckpt"]
    assert run_main(args) == 2
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-align: error:"))
    assert "runs/test/checkpoints/last.ckpt was written by lit_align.objectives.offline.dpo.DPO, not " in line


def test_a_resume_scored_by_a_rewritten_reward_model_folder_is_refused(tmp_path):
    from types import SimpleNamespace

    from lit_align.runs.manifest import ManifestComparison, build_manifest

    folder = _save_tiny(tmp_path / "reward", seed=0)
    trainer = SimpleNamespace(datamodule=None, accumulate_grad_batches=1, world_size=1, max_steps=2, max_epochs=1)
    module = SimpleNamespace(reward_model=SimpleNamespace(source=str(folder)))
    saved = build_manifest(trainer, module)
    assert ManifestComparison(saved, build_manifest(trainer, module)).refusals == []
    _save_tiny(folder, seed=1)
    refusals = ManifestComparison(saved, build_manifest(trainer, module)).refusals
    assert len(refusals) == 1 and refusals[0].startswith("reward model weights ")

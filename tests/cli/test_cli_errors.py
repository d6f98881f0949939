"""Errors after start-up in one line: misspelt class names, on-policy objectives with Lightning's accumulation and
clipping switches, a missing optional extra, a checkpoint of another objective."""

from __future__ import annotations

import importlib.util

import pytest

from support.cli import fit_args, run_main
from lit_align.cli.app import build_cli

#: A fast on-policy run: a reward function instead of the reward stage, short samples, one update per batch.
FAST_ONPOLICY = ["--model.reward_model=test_cli_errors.length_reward", "--model.sampling.max_new_tokens=4",
                 "--model.epochs_per_batch=1", "--data.batch_size=2", "--data.limit_rows=8",
                 "--trainer.limit_val_batches=0", "--export.enabled=false", "--trainer.logger=false"]


def length_reward(prompts, responses):
    return [float(len(response)) for response in responses]


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("(set LIT_ALIGN_DEBUG=1"), lines[-5:]
    return lines[-2]


def test_a_misspelt_class_name_is_one_line_with_the_nearest(run_dir, capsys):
    assert run_main(["fit", "--config", "dpo", "--model", "DPOO"]) == 2
    line = _error_line(capsys)
    assert line.startswith("lit-align: error: --model DPOO: no objective named 'DPOO'; did you mean 'DPO'"), line
    assert run_main(["fit", "--config", "dpo", "--data", "PreferenceDataModul"]) == 2
    assert "did you mean 'PreferenceDataModule'" in _error_line(capsys)
    assert run_main(["fit", "--config", "dpo", "--model", "nowhere_module.HingeDPO"]) == 2
    assert "no module named 'nowhere_module'" in _error_line(capsys)


def test_onpolicy_accumulation_is_refused_naming_its_own_settings(run_dir, capsys):
    assert run_main(fit_args("pdistill.yaml", "--trainer.accumulate_grad_batches=2", steps=1)) == 2
    line = _error_line(capsys)
    assert "trainer.accumulate_grad_batches=2" in line
    assert "--model.micro_batches" in line and "--data.batch_size" in line
    clip_by_value = ["--trainer.gradient_clip_val=0.5", "--trainer.gradient_clip_algorithm=value"]
    assert run_main(fit_args("pdistill.yaml", *clip_by_value, steps=1)) == 2
    assert "use --model.max_grad_norm 0.5" in _error_line(capsys)


def test_lightnings_refusals_after_start_are_one_line():
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lit_align.errors import UserError
    from lit_align.cli.errors import mapped_error

    mapped = mapped_error(MisconfigurationException("`Trainer(foo=1)` is not\n supported."))
    assert isinstance(mapped, UserError) and str(mapped) == "trainer: `Trainer(foo=1)` is not supported."
    assert mapped_error(RuntimeError("CUDA error: device-side assert")) is None  # a bug keeps its traceback


@pytest.mark.extended  # two short fits
@pytest.mark.parametrize("config", ["dpo.yaml", "rloo.yaml"])
def test_gradient_clip_val_is_the_objectives_own_clipping(run_dir, config):
    """Offline and on-policy alike: ``trainer.gradient_clip_val`` becomes ``model.max_grad_norm`` (an on-policy
    objective optimises by hand, where Lightning refuses its own clipping with a traceback)."""
    extra = FAST_ONPOLICY if config == "rloo.yaml" else ["--data.limit_rows=8", "--data.batch_size=4",
                                                          "--export.enabled=false", "--trainer.logger=false"]
    cli = build_cli(fit_args(config, "--trainer.gradient_clip_val=0.25", *extra, steps=1))
    assert cli.model.max_grad_norm == 0.25 and cli.trainer.gradient_clip_val is None
    assert cli.trainer.global_step == 1


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_generation_without_vllm_is_refused_at_construction():
    from lit_align import PolicyWithReference
    from lit_align.errors import UserError

    with pytest.raises(UserError, match=r"pip install 'lit-align\[vllm\]'"):
        PolicyWithReference(generation="vllm")


@pytest.mark.extended  # a fit and a predict
def test_a_checkpoint_that_does_not_fit_is_one_line_naming_what_differs(run_dir, capsys):
    """The same objective with another policy layout (LoRA adapters here): torch's page of missing and unexpected
    keys becomes one line with the counts and an example of each."""
    steps = ["--trainer.limit_val_batches=0", "--export.enabled=false", "--data.limit_rows=4", "--data.batch_size=4",
             "--trainer.logger=false", "--trainer.default_root_dir=runs/dpo"]
    assert run_main(fit_args("dpo.yaml", *steps, steps=1)) == 0
    status = run_main(["predict", "--config", "dpo", "--ckpt_path", "runs/dpo/checkpoints/last.ckpt",
                       "--model.policy.init_args.lora", "{r: 4}", "--data.limit_rows=2",
                       "--trainer.enable_progress_bar=false"])
    line = _error_line(capsys)
    assert status == 2 and "runs/dpo/checkpoints/last.ckpt does not fit DPO:" in line and "missing" in line, line

"""Every shipped config runs under DDP and under FSDP2 with two CPU processes, its monitors and a sample logger on.

The validation prompts are chosen so that the two ranks' shares have different widths: rank 0 holds the long
prompts, rank 1 the short ones. Every collective on per-rank tensors (the sample logger's gather of prompts, the
monitors' reductions, the reference cache, the reward stage's barrier, the export) must then still line up;
before this was handled, gloo aborted in ``on_train_start``. Each case is a real two-process ``lit-align fit``
launch (``launch`` kills both ranks on a hang). These launches take most of a minute each on two cores, so they
carry the ``extended`` marker and run as their own step of ``.ci/run``.
"""

from __future__ import annotations

import json
import os

import pytest

from support.launch import CONFIGS, launch

pytestmark = [pytest.mark.slow, pytest.mark.extended]

PAIRED = ["dpo.yaml", "ipo.yaml", "pmle.yaml", "reward.yaml", "sft.yaml"]
ON_POLICY = ["pdistill.yaml", "rebel.yaml", "rlhf.yaml", "rkl.yaml"]
STRATEGIES = {
    "ddp": ["--trainer.strategy=ddp"],
    "fsdp2": ["--config", os.path.join(CONFIGS, "strategy", "fsdp2.yaml"),
              "--trainer.strategy.init_args.mixed_precision=null"],
}
SAMPLE_LOGGER = {"class_path": "lit_align.callbacks.SampleLogger",
                 "init_args": {"every_n_steps": 1, "num_prompts": 4, "num_samples": 2,
                               "sampling": {"max_new_tokens": 4}}}


def _uneven_validation(path: str) -> None:
    """Four prompts; the probe's rank split (rows 0, 2 | 1, 3) puts the long ones on rank 0, the short on rank 1."""
    long = "Tell me about the old stone bridge over the river near the village at night, please."
    rows = [(long, "It is calm.", "No."), ("Hi.", "Hello there.", "Go."),
            (long + " Slowly.", "It is quiet.", "Bad."), ("Rain?", "It is wet.", "Dry.")]
    with open(path, "w", encoding="utf-8") as handle:
        for prompt, chosen, rejected in rows * 2:
            handle.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")


def _args(config: str, strategy: str, root: str, val_path: str | None) -> list[str]:
    args = [
        "fit", "--config", os.path.join(CONFIGS, config), *STRATEGIES[strategy],
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=1", "--trainer.val_check_interval=null", "--trainer.num_sanity_val_steps=1",
        f"--trainer.default_root_dir={root}",
    ]
    if config != "reward.yaml":  # a reward model has no policy to sample from
        args.append(f"--trainer.callbacks+={json.dumps(SAMPLE_LOGGER)}")
    if val_path is not None:
        args += [f"--data.init_args.val_path={val_path}", "--data.init_args.limit_rows=64"]
    if config in ON_POLICY:
        args += ["--model.init_args.reward_stage.epochs=1"]
    return args


def _check_samples(root: str) -> None:
    with open(os.path.join(root, "logs", "version_0", "samples.jsonl"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    # step 0 and each of the optimizer steps measured: 4 prompts x 2 samples each time, gathered from both ranks
    assert rows and len(rows) % 8 == 0, len(rows)
    assert {row["prompt"].strip() for row in rows[:8]} >= {"Hi.", "Rain?"}  # rank 1's short prompts came through


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("config", PAIRED + ON_POLICY + ["oracle_dpo.yaml"])
def test_shipped_config_runs_on_two_processes(run_dir, config, strategy):
    val_path = None
    if config != "oracle_dpo.yaml":  # the oracle task makes its own prompts, all of one width
        val_path = str(run_dir / "uneven_val.jsonl")
        _uneven_validation(val_path)
    root = str(run_dir / "run")
    launch(_args(config, strategy, root, val_path), timeout=420)
    assert os.path.isdir(os.path.join(root, "checkpoints"))
    if val_path is not None and config != "reward.yaml":
        _check_samples(root)

"""Reward-model training (Bradley-Terry, ``RewardModeling``) sharded with FSDP2 on two CPU processes.

The scorer's backbone blocks (the sequence-classification model's ``_no_split_modules``) are sharded one by one
and the scorer itself is the root unit around embeddings, final norm and score head. Two processes with 4 pairs
each see the same global batch of 8 as one process, gradients are averaged over ranks, so the loss curves agree
to float32 round-off; the export gathers full weights once, on rank 0.
"""

from __future__ import annotations

import glob
import os

import pytest
import torch

from lit_align.cli.app import build_cli
from support.launch import CONFIGS, FSDP2, launch, metrics_by_run

pytestmark = pytest.mark.slow

TOLERANCE = 2e-4  # float32 sums in another order differ by ~1e-7; a wrong gradient average by far more


def _args(root: str, *extra: str) -> list[str]:
    return [
        "fit", "--config", os.path.join(CONFIGS, "reward.yaml"), "--trainer.max_steps=4",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={root}", "--model.init_args.lr_schedule=constant",
        "--model.init_args.warmup_ratio=0", *extra,
    ]


def test_reward_model_fsdp2_matches_one_process_and_exports_full_weights(run_dir):
    """Four steps on two ranks give the one-process losses; the sharded checkpoint holds one shard per rank; the
    export is a loadable one-label ``AutoModelForSequenceClassification`` with full-size weights equal to the
    one-process export (so it scores pairs the same)."""
    from transformers import AutoModelForSequenceClassification

    build_cli(_args("single", "--data.init_args.batch_size=8"))
    launch(_args("sharded", "--data.init_args.batch_size=4", *FSDP2), timeout=180)

    single, (sharded,) = metrics_by_run("single", "train/loss")[0], metrics_by_run("sharded", "train/loss")
    assert sorted(sharded) == sorted(single) == [0, 1, 2, 3]
    for step, value in single.items():
        assert sharded[step] == pytest.approx(value, abs=TOLERANCE), (step, single, sharded)
    assert single[0] - single[3] > 100 * TOLERANCE  # the reward model learns: matching means something

    assert len(glob.glob(os.path.join("sharded", "checkpoints", "last.ckpt", "*.distcp"))) == 2

    exported = AutoModelForSequenceClassification.from_pretrained(os.path.join("sharded", "hf_model"))
    expected = AutoModelForSequenceClassification.from_pretrained(os.path.join("single", "hf_model"))
    assert exported.config.num_labels == 1
    weights, reference = exported.state_dict(), expected.state_dict()
    assert weights.keys() == reference.keys()
    for key, value in reference.items():
        assert weights[key].shape == value.shape, key  # consolidated, not one rank's shard
        assert torch.allclose(weights[key], value, atol=1e-3), key
    assert not torch.allclose(reference["score.weight"], _untrained_head(), atol=1e-3)  # trained, not initial


def _untrained_head() -> torch.Tensor:
    from lit_align.rewards.model import build_reward_scorer

    return build_reward_scorer("tiny", seed=0).model.score.weight.detach()  # RewardModeling's default seed

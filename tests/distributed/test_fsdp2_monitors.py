"""The sampling monitors under FSDP2 on two CPU processes, through a sharded checkpoint and a resume.

Every forward pass of a sharded model is a collective, so a monitor that makes one rank generate (or call any
other collective, such as ``trainer.log_dir``) while the other is elsewhere deadlocks the run; ``launch`` fails
the test after a timeout instead of hanging. With top-1 sampling (greedy responses; the KL and entropy monitors
refuse temperature 0, which has no distribution to score) the probe samples are deterministic, so the
two-process values (each rank measures half of the prompts, sums and counts are reduced over ranks) must equal
those of one process measuring all of them.
"""

from __future__ import annotations

import json
import os

import pytest

from lit_align.cli.app import build_cli
from support.launch import CONFIGS, FSDP2, launch, metrics_by_run

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # the default suite stays under 15 minutes

PROBE = {"every_n_steps": 2, "num_prompts": 4, "num_samples": 2,
         "sampling": {"max_new_tokens": 6, "top_k": 1}}  # top-1 (greedy) responses: the same samples in every run
CALLBACKS = json.dumps([{"class_path": f"lit_align.callbacks.{name}", "init_args": PROBE}
                        for name in ("KLMonitor", "EntropyMonitor", "ModeCollapseMonitor", "SampleLogger")])
METRICS = ["monitor/kl_k1", "monitor/kl_k3", "monitor/kl_token", "monitor/entropy", "monitor/sequence_entropy",
           "monitor/entropy_data", "collapse/distinct_1", "collapse/distinct_2", "collapse/unique_fraction",
           "collapse/mean_length", "collapse/length_drift", "collapse/entropy", "samples/sample_length"]
# Float32 sums in another order and over other padding widths differ by ~1e-6; a rank that measures the wrong
# prompts, a count not reduced over ranks or a stale reference moves these values by far more.
TOLERANCE = 1e-4


def _args(root: str, steps: int, *extra: str) -> list[str]:
    return [
        "fit", "--config", os.path.join(CONFIGS, "dpo.yaml"), f"--trainer.max_steps={steps}",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={root}", f"--trainer.callbacks={CALLBACKS}", "--export.enabled=false",
        # a large constant rate, so the policy moves away from pi_0 within four steps and a resumed run follows
        # the same schedule as an uninterrupted one
        "--model.init_args.learning_rate=0.01", "--model.init_args.lr_schedule=constant",
        "--model.init_args.warmup_ratio=0",
        # the resumed run starts from the checkpoint written in the loop at step 2: the extra last.ckpt written at
        # the end of fit marks the epoch as finished, so a resume from it would start the next epoch's batches
        "--checkpoint.every_n_train_steps=2", *extra,
    ]


def test_monitors_under_fsdp2_resume_and_match_one_process(run_dir):
    """Steps 1-2 sharded, a sharded checkpoint, steps 3-4 resumed from it; the monitors measure at steps 0, 2
    (at the end of the first run and again at the start of the resumed one) and 4. Every value equals the
    one-process run's, and SampleLogger wrote the samples of both ranks."""
    build_cli(_args("single", 4, "--data.init_args.batch_size=8"))
    single = {name: metrics_by_run("single", name)[0] for name in METRICS}

    launch(_args("sharded", 2, "--data.init_args.batch_size=4", *FSDP2), timeout=180)
    launch(_args("sharded", 4, "--data.init_args.batch_size=4", *FSDP2, "--ckpt_path=last"), timeout=180)
    for name in METRICS:
        first, resumed = metrics_by_run("sharded", name)
        assert sorted(first) == [0, 2] and sorted(resumed) == [2, 4], (name, first, resumed)
        assert sorted(single[name]) == [0, 2, 4], (name, single[name])
        for step, value in [*first.items(), *resumed.items()]:
            assert value == pytest.approx(single[name][step], abs=TOLERANCE), (name, step, single[name], first, resumed)

    kl = single["monitor/kl_token"]
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[4] > 100 * TOLERANCE  # pi = pi_0 at first, then it moves
    for run in ("version_0", "version_1"):
        with open(os.path.join("sharded", "logs", run, "samples.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        assert len(rows) == 2 * 4 * 2  # two measurements of 4 prompts x 2 samples, gathered from both ranks
        assert len({row["prompt"] for row in rows}) == 4

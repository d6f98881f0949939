"""``lit-align evaluate`` (a predict run with the ``PredictionWriter`` and the evaluation report) under FSDP2 on two
CPU processes, with a prompt count that does not divide across ranks.

5 prompts, 2 ranks, batches of 2: Lightning's own predict sampler would give rank 0 three prompts (2 batches) and
rank 1 two (1 batch), and rank 0's second generation, a collective under sharding, would wait forever. The data
module pads every rank's share to 3 prompts (the 6th repeats the 1st) and the writers drop the repeat. With greedy
decoding every response must equal the one-process run's.
"""

from __future__ import annotations

import csv
import json
import os

import pytest

from lit_align.cli.app import build_cli
from support.launch import CONFIGS, FSDP2, ROOT, launch

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # the default suite stays under 15 minutes

PROMPTS = 5


def _args(root: str) -> list[str]:
    return [
        "evaluate", "--config", os.path.join(CONFIGS, "dpo.yaml"), "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]", f"--trainer.default_root_dir={root}",
        "--data.init_args.path=prompts.jsonl", "--data.init_args.val_split=null",
        "--data.init_args.eval_batch_size=2", "--predictions.sampling.max_new_tokens=6",
        "--predictions.sampling.temperature=0", f"--predictions.path={root}/predictions.jsonl",
        f"--output_dir={root}/report",
    ]


def _read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_evaluate_and_predictions_fsdp2_with_uneven_prompt_count(run_dir):
    with open(os.path.join(ROOT, "lit_align", "assets", "data", "tiny_preferences_val.jsonl")) as f:
        rows = [next(f) for _ in range(PROMPTS)]
    with open("prompts.jsonl", "w") as f:
        f.writelines(rows)

    build_cli(_args("single"))
    launch([*_args("sharded"), *FSDP2], timeout=180)

    for name in ("predictions.jsonl", os.path.join("report", "samples.jsonl")):
        single, sharded = _read(os.path.join("single", name)), _read(os.path.join("sharded", name))
        assert [r["index"] for r in sharded] == list(range(PROMPTS)), name  # each prompt once: the repeat dropped
        assert [r["prompt"] for r in sharded] == [r["prompt"] for r in single], name
        assert [r["response"] for r in sharded] == [r["response"] for r in single], name
        assert any(r["response"] for r in sharded), name  # something was generated
    with open(os.path.join("sharded", "report", "report.csv")) as f:
        (report,) = list(csv.DictReader(f))
    assert int(report["prompts"]) == PROMPTS and int(report["samples"]) == PROMPTS

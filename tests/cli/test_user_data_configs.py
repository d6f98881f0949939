"""Every shipped config runs, as shipped, on a small data file of the user's own: 32 rows, a quarter held out.

The tiny configs validate by fraction of an epoch and take their probe prompts from whatever validation rows
there are, so nothing in them assumes the embedded data's size (a fixed ``val_check_interval: 16`` failed on any
data with fewer than 16 batches). Each case is a real in-process ``lit-align fit`` of one epoch.
"""

from __future__ import annotations

import json
import os

import pytest

from support.cli import run_main

pytestmark = [pytest.mark.slow, pytest.mark.extended]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = ["dpo.yaml", "ipo.yaml", "pmle.yaml", "reward.yaml", "sft.yaml", "pdistill.yaml", "rebel.yaml",
           "rlhf.yaml", "rkl.yaml"]
SUBJECTS = ["kettle", "garden", "ferry", "violin", "glacier", "bakery", "compass", "harbour"]


def _user_file(path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(32):
            subject = SUBJECTS[i % len(SUBJECTS)]
            row = {"prompt": f"Tell me one thing about a {subject} ({i}).", "chosen": f"A {subject} is useful.",
                   "rejected": f"{subject}?"}
            handle.write(json.dumps(row) + "\n")


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_config_runs_on_a_32_row_user_file(run_dir, config, capsys):
    _user_file(run_dir / "mine.jsonl")
    code = run_main([
        "fit", "--config", os.path.join(ROOT, "configs", config), "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1", "--trainer.max_steps=-1", "--trainer.enable_progress_bar=false",
        "--data.init_args.path=mine.jsonl", "--data.init_args.val_split=null", "--data.init_args.val_fraction=0.25",
        "--trainer.default_root_dir=run",
    ])
    assert code == 0, capsys.readouterr().err[-3000:]
    from lit_align.runs.checkpoint_io import load_checkpoint_file
    from lit_align.runs.manifest import MANIFEST_KEY

    manifest = load_checkpoint_file(run_dir / "run" / "checkpoints" / "last.ckpt")[MANIFEST_KEY]
    # it trained on the user's rows, a quarter held out: 24 training and 8 validation rows
    assert (manifest["data"]["train_rows"], manifest["data"]["val_rows"]) == (24, 8)

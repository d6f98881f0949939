"""A sampling monitor on an objective that has no policy to sample says so in one line at start-up."""

from __future__ import annotations

import json

from support.cli import fit_args, run_main


def test_sample_logger_on_a_reward_model_is_refused_in_one_line(run_dir, capsys):
    callbacks = json.dumps([{"class_path": "lit_align.callbacks.SampleLogger", "init_args": {"num_prompts": 2}}])
    code = run_main(fit_args("reward.yaml", f"--trainer.callbacks={callbacks}", steps=1))
    err = capsys.readouterr().err
    assert code == 2
    assert "lit-align: error: SampleLogger samples responses from a policy, and RewardModeling trains no policy" in err
    assert "Traceback" not in err

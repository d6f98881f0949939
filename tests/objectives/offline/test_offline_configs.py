"""Every config of configs/offline trains two steps through the CLI on the tiny default."""

import math
from pathlib import Path

import pytest
import torch
from support.cli import fit_args

from lit_align.cli.app import build_cli

ROOT = Path(__file__).resolve().parents[3]
OFFLINE = sorted((ROOT / "configs" / "offline").glob("*.yaml"))


def test_every_pairwise_objective_has_a_config():
    names = {p.read_text().split("class_path: lit_align.objectives.")[1].split()[0] for p in OFFLINE}
    assert names >= {"SimPO", "ORPO", "Hinge", "RobustDPO", "BCOPair", "APOZero", "APODown", "NCAPair", "EXOPair",
                     "SPPOHard", "DiscoPOP", "AOT", "LengthNormalizedDPO", "LDDPO", "WPO", "RPO", "CombinedPairLoss"}


# Two configs in the default suite (the combination and a reference-free one); every one in the extended step.
QUICK = {"mpo", "simpo"}


@pytest.mark.parametrize("config", [p if p.stem in QUICK else pytest.param(p, marks=pytest.mark.extended)
                                    for p in OFFLINE], ids=lambda p: p.stem)
def test_offline_config_trains_two_steps(config, run_dir):
    text = config.read_text()
    assert text.startswith("#") and f"lit-align fit --config configs/offline/{config.name}" in text
    cli = build_cli(fit_args(f"offline/{config.name}", "--data.limit_rows=16", "--data.batch_size=8",
                             "--export.enabled=false", "--trainer.callbacks=[]", "--trainer.log_every_n_steps=1",
                             steps=2))
    assert cli.trainer.global_step == 2
    assert math.isfinite(cli.trainer.logged_metrics["train/loss"].item())
    policy = cli.model.policy
    if policy.reference.weights is not None:  # trained away from a bit-identical reference
        reference = policy.reference.weights.state_dict()
        trained = policy.policy.state_dict()
        assert any(not torch.equal(trained[k], reference[k]) for k in reference)
    if config.stem == "mpo":
        assert {"train/loss/sigmoid", "train/loss/bco_pair", "train/loss/sft"} <= set(cli.trainer.logged_metrics)

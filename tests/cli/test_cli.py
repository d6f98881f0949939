"""The ``lit-align`` CLI in-process: shipped configs, --print_config, repeated --config, short names, user classes."""

import csv
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from support.cli import fit_args

from lit_align.cli.app import build_cli
from lit_align.data import PreferenceDataModule
from lit_align.objectives import DPO, IPO

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def _is_overlay(path: Path) -> bool:
    return path.read_text().lstrip().startswith("# overlay")


@pytest.mark.parametrize("config, cls", [("dpo.yaml", DPO), ("ipo.yaml", IPO)])
def test_fit_shipped_config_changes_policy_keeps_reference_and_writes_outputs(run_dir, config, cls):
    from lit_align import PolicyWithReference

    initial = PolicyWithReference("tiny", reference="none").policy.state_dict()
    cli = build_cli(fit_args(config, "--trainer.log_every_n_steps=1", "--data.limit_rows=32", "--data.batch_size=8",
                             steps=3))
    assert type(cli.model) is cls and cli.trainer.global_step == 3
    policy, reference = cli.model.policy.policy.state_dict(), cli.model.policy.reference.weights.state_dict()
    assert any(not torch.equal(policy[k], initial[k]) for k in initial)  # the policy trained
    assert all(torch.equal(reference[k], initial[k]) for k in initial)  # the reference is bit-identical
    out = run_dir / "runs/test"
    assert (out / "checkpoints/last.ckpt").is_file()
    (metrics,) = out.glob("logs/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    for name in ("train/loss", "train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins",
                 "train/rewards/accuracies", "train/logps/chosen", "train/logps/rejected"):
        assert any(row.get(name) for row in rows), name


def test_print_config(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_cli(["fit", "--config", str(ROOT / "configs/dpo.yaml"), "--model.init_args.beta=0.3", "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lit_align.objectives.DPO"
    assert printed["model"]["init_args"]["beta"] == 0.3
    assert printed["data"]["init_args"]["max_length"] == 64
    assert "learning_rate" in printed["model"]["init_args"] and "export" in printed


def test_repeated_config_later_file_overrides(run_dir):
    override = run_dir / "override.yaml"
    override.write_text("model:\n  init_args:\n    beta: 0.25\ndata:\n  init_args:\n    batch_size: 4\n")
    cli = build_cli(["--config", str(ROOT / "configs/dpo.yaml"), "--config", str(override)], run=False)
    assert isinstance(cli.model, DPO) and cli.model.beta == 0.25
    assert cli.datamodule.hparams.batch_size == 4 and cli.datamodule.hparams.max_length == 64  # the rest is kept


def test_short_names(run_dir):
    cli = build_cli(["--model", "DPO", "--model.beta", "0.2", "--data", "PreferenceDataModule",
                     "--data.batch_size", "4"], run=False)
    assert type(cli.model) is DPO and cli.model.beta == 0.2
    assert type(cli.datamodule) is PreferenceDataModule and cli.datamodule.hparams.batch_size == 4
    cli = build_cli(["--model", "IPO", "--model.tau", "0.5", "--data", "PreferenceDataModule"], run=False)
    assert type(cli.model) is IPO and cli.model.tau == 0.5


def test_user_subclass_from_their_own_module(run_dir, monkeypatch):
    (run_dir / "my_objectives.py").write_text(textwrap.dedent('''
        from lit_align.losses import dpo_loss
        from lit_align.objectives import DPO

        CALLS = []


        class ScaledDPO(DPO):
            """DPO with the loss scaled.

            Args:
                scale: Multiplies the loss.
            """

            def __init__(self, scale: float = 1.0, **kwargs):
                super().__init__(**kwargs)
                self.scale = scale

            def pair_loss(self, chosen, rejected, batch):
                CALLS.append(self.scale)
                out = dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, self.beta)
                return out._replace(losses=out.losses * self.scale)
    '''))
    monkeypatch.syspath_prepend(str(run_dir))
    cli = build_cli(fit_args("dpo.yaml", "--model=my_objectives.ScaledDPO", "--model.scale=3.0",
                             "--model.beta=0.2", "--data.limit_rows=16", "--data.batch_size=8",
                             "--export.enabled=false", steps=2))
    user_module = sys.modules["my_objectives"]
    assert type(cli.model) is user_module.ScaledDPO and cli.model.scale == 3.0 and cli.model.beta == 0.2
    assert user_module.CALLS and set(user_module.CALLS) == {3.0}
    assert cli.trainer.global_step == 2


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_every_config_parses(config, capsys):
    """Each shipped config parses, with every class_path resolved; an overlay (first line ``# overlay``) parses on
    top of configs/dpo.yaml, the way it is meant to be used."""
    args = ["fit", "--config", str(config)]
    if _is_overlay(config):
        args = ["fit", "--config", str(ROOT / "configs/dpo.yaml"), "--config", str(config)]
    assert config.read_text().lstrip().startswith("#"), "a shipped config starts with a comment"
    with pytest.raises(SystemExit) as exit_:
        build_cli([*args, "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]

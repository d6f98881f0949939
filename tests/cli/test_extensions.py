"""Extensions written as a user writes them (``tests/extensions``), each trained through the command line.

Each subclasses a public base and implements its one hook, without overriding anything private: a new pair loss
and a new on-policy objective (each a loss function, a thin class and a config: the recipes docs/architecture.md
shows, checked here to be these very files), SimPO as a hook on offline rows, KTO on a labelled data file, a
reference-free GRPO, and a per-step callback.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
import torch.nn.functional as F

from extensions.callback import StepJournal
from extensions.grpo import GRPO
from extensions.kto import KTO
from extensions.margin_dpo import MarginDPO
from extensions.margin_loss import margin_dpo_loss
from extensions.reinforce import GroupREINFORCE
from extensions.simpo import SimPO
from lit_align.cli.app import build_cli
from lit_align.losses import dpo_loss
from lit_align.models.logprobs import sequence_logprobs
from lit_align.objectives import OfflineObjective, OfflinePairObjective, OnPolicyObjective

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "extensions")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--export.enabled=false"]


def _fit(config: str, *extra: str):
    return build_cli(["fit", "--config", os.path.join(HERE, config), *QUIET, *extra])


@pytest.mark.parametrize("cls, base, hooks", [
    (MarginDPO, OfflinePairObjective, {"pair_loss"}),
    (SimPO, OfflinePairObjective, {"pair_loss"}),
    (KTO, OfflineObjective, {"rows_loss"}),
    (GRPO, OnPolicyObjective, {"experience_loss"}),
    (GroupREINFORCE, OnPolicyObjective, {"experience_loss"}),
])
def test_each_extension_is_one_hook_on_a_public_base(cls, base, hooks):
    defined = {name for name, value in vars(cls).items() if callable(value) and name != "__init__"}
    assert issubclass(cls, base) and defined == hooks
    assert not [name for name in vars(cls) if name.startswith("_") and not name.startswith("__")]


def test_a_new_pair_loss_trains_from_its_config(run_dir):
    cli = _fit("margin_dpo.yaml")
    module = cli.model
    assert cli.trainer.global_step == 2 and module.policy.reference.name == "copy"  # its pair_loss reads pi_0
    batch = next(iter(cli.datamodule.train_dataloader()))
    with torch.no_grad():
        loss, metrics = module.compute_loss(batch, "val")
        rows = module.row_logps(batch).blocks(2)
        reference = module.row_logps(batch, "reference").blocks(2)
    logps = rows[0].policy, rows[1].policy, reference[0].policy, reference[1].policy
    dpo = dpo_loss(*logps, beta=0.1)
    torch.testing.assert_close(margin_dpo_loss(*logps, beta=0.1, margin=0.0).losses, dpo.losses)
    expected = -F.logsigmoid(dpo.chosen_rewards - dpo.rejected_rewards - 1.0)
    torch.testing.assert_close(loss, expected.mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metrics["rewards/chosen"], dpo.chosen_rewards, atol=1e-5, rtol=1e-5)


def test_a_new_onpolicy_objective_trains_from_its_config(run_dir):
    cli = _fit("reinforce.yaml")
    module = cli.model
    assert cli.trainer.global_step == 2 and module.policy.reference.name == "none"
    batch = next(iter(cli.datamodule.train_dataloader()))
    exp = module.make_experience(batch)
    loss, metrics = module.experience_loss(exp)
    with torch.no_grad():  # independently: each response's summed log-prob and its reward less its group's mean
        logps, mask = module.policy.completion_logps(exp.input_ids, exp.attention_mask, exp.completion_mask,
                                                     exp.temperature)
    rewards = exp.scores.view(-1, 4)
    advantages = (rewards - rewards.mean(-1, keepdim=True)).view(-1)
    torch.testing.assert_close(loss.detach(), -(advantages * (logps * exp.response_mask).sum(-1)).mean())
    torch.testing.assert_close(metrics["reinforce/advantage_abs"], advantages.abs())


def test_the_architecture_doc_shows_these_very_files():
    """Every block of docs/architecture.md headed ``# tests/extensions/<file>`` is that file, as it is trained here."""
    doc = open(os.path.join(os.path.dirname(HERE), os.pardir, "docs", "architecture.md")).read()
    shown = re.findall(r"^```\w*\n# (tests/extensions/[\w.]+)\n(.*?)^```", doc, flags=re.S | re.M)
    recipes = {f"tests/extensions/{name}" for name in ("margin_loss.py", "margin_dpo.py", "margin_dpo.yaml",
                                                       "reinforce_loss.py", "reinforce.py", "reinforce.yaml")}
    assert recipes <= {path for path, _ in shown}
    for path, body in shown:
        with open(os.path.join(os.path.dirname(HERE), os.pardir, path)) as f:
            assert f.read() == body, f"docs/architecture.md shows another {path} than the one tested"


def test_simpo_trains_from_its_own_module_with_no_reference(run_dir):
    cli = _fit("simpo.yaml")
    module = cli.model
    assert module.policy.reference.name == "none" and module.policy.reference.weights is None
    batch = next(iter(cli.datamodule.train_dataloader()))
    n = batch["index"].numel()
    with torch.no_grad():
        loss, metrics = module.compute_loss(batch, "val")
        # independently: length-normalised log-likelihoods of separate (unpacked) rows
        logits = module.policy(batch["input_ids"], batch["attention_mask"])
        logps = sequence_logprobs(logits, batch["input_ids"], batch["completion_mask"])
        lengths = batch["completion_mask"][:, 1:].sum(-1)
        margin = 2.0 * (logps[:n] / lengths[:n] - logps[n:] / lengths[n:]) - 0.5
    torch.testing.assert_close(loss, -F.logsigmoid(margin).mean(), atol=1e-5, rtol=1e-5)
    assert metrics["rewards/accuracies"].shape == (n,)
    assert "train/loss" in cli.trainer.logged_metrics


def test_kto_reads_the_label_column_of_a_labelled_file(run_dir):
    cli = _fit("kto.yaml", f"--data.path={os.path.join(os.path.dirname(HERE), 'fixtures', 'unpaired.jsonl')}")
    module = cli.model
    assert cli.trainer.global_step == 6
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch["label"].dtype == torch.bool and batch["label"].shape == batch["index"].shape
    assert batch["input_ids"].shape[0] == batch["index"].numel()  # one row per example
    with torch.no_grad():
        for p in module.policy.policy.parameters():  # move off pi_0 so that the log-ratios are not all 0
            p.add_(0.02 * torch.randn_like(p))
        loss, _ = module.compute_loss(batch, "val")
        flipped, _ = module.compute_loss({**batch, "label": ~batch["label"]}, "val")
        policy = sequence_logprobs(module.policy(batch["input_ids"], batch["attention_mask"]), batch["input_ids"],
                                   batch["completion_mask"])
        reference = sequence_logprobs(module.policy.reference_logits(batch["input_ids"], batch["attention_mask"]),
                                      batch["input_ids"], batch["completion_mask"])
    ratio = policy - reference
    z0 = ratio.mean().clamp(min=0)
    expected = torch.where(batch["label"], 1 - torch.sigmoid(0.1 * (ratio - z0)), 1 - torch.sigmoid(0.1 * (z0 - ratio)))
    torch.testing.assert_close(loss, expected.mean(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(loss, flipped)  # the label decides the loss


def test_grpo_runs_without_any_reference(run_dir, monkeypatch):
    cli = _fit("grpo.yaml", "--trainer.max_steps=2")
    module = cli.model
    assert module.policy.reference.name == "none" and not module.policy.reference.live
    assert cli.trainer.global_step == 2
    batch = next(iter(cli.datamodule.train_dataloader()))
    monkeypatch.setattr(module.policy, "reference_logits", lambda *a, **k: pytest.fail("a reference forward ran"))
    exp = module.make_experience(batch)
    assert exp.ref_logps is None and exp.input_ids.shape[0] == 4 * batch["index"].numel()
    expected_scores = ((exp.input_ids == 10) & exp.attention_mask.bool()).float().sum(-1)
    torch.testing.assert_close(exp.scores, expected_scores)
    loss, metrics = module.experience_loss(exp)
    assert torch.isfinite(loss) and "objective/kl" not in module.experience_metrics(exp)


def test_a_step_callback_sees_every_optimizer_step(run_dir):
    journal = run_dir / "journal.jsonl"
    callback = json.dumps([{"class_path": "extensions.callback.StepJournal", "init_args": {"path": str(journal)}}])
    cli = _fit("simpo.yaml", f"--trainer.callbacks={callback}")
    assert any(isinstance(c, StepJournal) for c in cli.trainer.callbacks)
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(r["reference"] == "none" and r["loss"] > 0 for r in records)
    assert records[-1]["lr"] < records[0]["lr"] <= cli.model.hparams.learning_rate  # the linear decay

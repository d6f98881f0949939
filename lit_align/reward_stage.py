"""The reward-model stage of an on-policy run that is given no reward model.

Preference distillation, REBEL, RLHF and reverse KL need a reward model R(x, a). When ``reward_model`` is not
set, ``RewardStage`` trains one at the start of ``fit`` on the preference pairs of the run's own training data,
with the ``RewardModel`` objective's Bradley-Terry loss (PAPER 2b), reports its accuracy on the validation pairs,
saves it in Hugging Face format (``<default_root_dir>/reward_model``, a one-label
``AutoModelForSequenceClassification``) and hands it back frozen. It is the same two-stage recipe as training
``RewardModel`` first and passing its directory as ``reward_model``, in one command.

A later run with the same settings and the same data (a resumed run, or the next ``validate``/``test``) loads the
saved model instead of training again. What it was trained on is recorded next to it: the stage settings, the
backbone, the data settings and a digest of the content of the training and validation pairs
(``lit_align.fingerprints``), so an edited data file, another backbone or another stage setting trains a new one
and says why ("reward stage: retraining: the data changed (...)" or "... settings changed: <keys>").

The defaults are the paper's reward model (PAPER 2b: lr 3e-6, cosine decay, 1 epoch), which a pretrained backbone
can take; the tiny random model of the shipped configs needs a far larger rate and sets its own.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lit_align.data.sources import DataError
from lit_align.outputs import atomic_directory
from lit_align.fingerprints import datamodule_digest
from lit_align.schedules import Schedule, warmup_then_decay

#: The settings a saved reward model was trained with, next to its weights.
FINGERPRINT_FILE = "lit_align_reward_stage.json"


@dataclass
class RewardStage:
    """Trains the reward model of an on-policy objective when none is given.

    Args:
        dirpath: Where the reward model is saved; defaults to ``<trainer.default_root_dir>/reward_model``.
        model: Backbone of the reward model; defaults to the policy's model (the tokenizers must match).
        epochs: Passes over the training pairs (PAPER 2b: 1).
        learning_rate: Peak AdamW learning rate (PAPER 2b: 3e-6, a rate a pretrained backbone survives).
        lr_schedule: Decay of the rate over the stage's updates, ``cosine`` (PAPER 2b), ``linear`` or ``constant``.
        warmup_ratio: Fraction of the updates spent warming up linearly from zero (the paper names none: 0).
        batch_size: Pairs per update; defaults to the data module's batch size (PAPER 2b uses 64).
        freeze_backbone: Train the score head only.
        seed: Seed of the head's initialisation and of the shuffling.
        reuse: Load the model saved in ``dirpath`` by an earlier run with identical settings instead of training.
    """

    dirpath: str | None = None
    model: str | None = None
    epochs: int = 1
    learning_rate: float = 3e-6
    lr_schedule: Schedule = "cosine"
    warmup_ratio: float = 0.0
    batch_size: int | None = None
    freeze_backbone: bool = False
    seed: int = 0
    reuse: bool = True

    def provide(self, objective, trainer, train: bool = True) -> torch.nn.Module:
        """The frozen reward model for ``objective``: loaded from ``dirpath`` if it matches, else trained there."""
        from lit_align.reward_model import load_reward_model

        directory = Path(self.dirpath or Path(trainer.default_root_dir) / "reward_model")
        fingerprint = self.fingerprint(objective, trainer.datamodule)
        saved = _saved_fingerprint(directory)
        if not train and saved is not None:  # validate/test may load no training rows: compare the splits it has
            fingerprint = {**fingerprint, "content": {**saved.get("content", {}), **fingerprint["content"]}}
        if not (self.reuse and saved == fingerprint):
            if not train:
                reason = "" if saved is None else f" ({_why_retrain(saved, fingerprint)})"
                raise ValueError(f"no reward model: set model.reward_model (none matching this run was found in "
                                 f"{directory}{reason})")
            if saved is not None:
                reason = _why_retrain(saved, fingerprint) if saved != fingerprint else "reuse is off"
                rank_zero_info(f"reward stage: retraining: {reason}")
            if trainer.is_global_zero:
                self.train(objective, trainer, directory, fingerprint)
            trainer.strategy.barrier("reward_stage")
        rank_zero_info(f"reward model: {directory}")
        return load_reward_model(str(directory))

    def fingerprint(self, objective, datamodule) -> dict[str, Any]:
        """What the saved model depends on: stage settings, backbone, data settings and the pairs' content."""
        # where the model goes and whether to reuse it do not change what is trained
        stage = {k: v for k, v in asdict(self).items() if k not in ("dirpath", "reuse")}
        # the path is left out because the content digest covers what it holds: a moved file is the same data
        data = {k: v for k, v in dict(getattr(datamodule, "hparams", {})).items()
                if k not in ("num_workers", "eval_batch_size", "tokenizer", "path")}
        record = {"stage": stage, "backbone": self.backbone(objective), "data": data,
                  "content": datamodule_digest(datamodule)}
        return json.loads(json.dumps(record, default=str))

    def backbone(self, objective) -> str:
        return self.model or objective.policy.model_name

    # -- training ----------------------------------------------------------------------------------------------

    def train(self, objective, trainer, directory: Path, fingerprint: dict[str, Any]) -> None:
        from lit_align.objectives.reward import RewardModel

        datamodule = trainer.datamodule
        train_pairs, val_pairs = _pairs(datamodule, "train_examples"), _pairs(datamodule, "val_examples")
        device = trainer.strategy.root_device
        rank_zero_info(f"reward stage: no reward_model given, training one on {len(train_pairs)} preference pairs "
                       f"of the training data ({self.epochs} epochs, lr {self.learning_rate:g} {self.lr_schedule})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            reward = RewardModel(model=self.backbone(objective), freeze_backbone=self.freeze_backbone, seed=self.seed,
                                 learning_rate=self.learning_rate).to(device)
            optimizer = torch.optim.AdamW(reward.scorer.trainable_parameters(), lr=self.learning_rate)
            loader = DataLoader(train_pairs, batch_size=self.batch_size or datamodule.hparams.batch_size,
                                shuffle=True, collate_fn=datamodule.collator())
            total = self.epochs * len(loader)
            scheduler = warmup_then_decay(optimizer, total, int(self.warmup_ratio * total), self.lr_schedule)
            reward.train()
            for epoch in range(self.epochs):
                losses = []
                for batch in loader:
                    loss, _ = reward.compute_loss(_to(batch, device), "train")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    losses.append(loss.item())
                accuracy = self.accuracy(reward, val_pairs, datamodule, device)
                rank_zero_info(f"reward stage: epoch {epoch + 1}/{self.epochs} train loss "
                               f"{sum(losses) / len(losses):.4f} validation accuracy {_fmt(accuracy)}")
        # Weights and record are moved into place together: a kill mid-write never leaves new weights under the
        # previous model's record (reused as if they matched) or a record without its weights.
        with atomic_directory(directory) as temp:
            reward.scorer.save_pretrained(temp)
            (temp / FINGERPRINT_FILE).write_text(json.dumps({**fingerprint, "val_accuracy": accuracy}, indent=2))
        if trainer.logger is not None and not math.isnan(accuracy):
            trainer.logger.log_metrics({"reward_stage/val_accuracy": accuracy}, step=0)

    @torch.no_grad()
    def accuracy(self, reward, pairs: list, datamodule, device) -> float:
        """Fraction of pairs where the chosen response scores higher (NaN without validation pairs)."""
        if not pairs:
            return math.nan
        reward.eval()
        hits = []
        for batch in DataLoader(pairs, batch_size=datamodule.hparams.batch_size, collate_fn=datamodule.collator()):
            hits.append(reward.compute_loss(_to(batch, device), "val")[1]["rewards/accuracies"])
        reward.train()
        return torch.cat(hits).mean().item()


def _pairs(datamodule, attribute: str) -> list:
    examples = list(getattr(datamodule, attribute, None) or [])
    if examples and len(examples[0].completion_ids) != 2:
        raise DataError("the reward stage trains on preference pairs, but this data has no chosen/rejected "
                        "completions: set model.reward_model to a trained reward model")
    if attribute == "train_examples" and not examples:
        raise DataError("the reward stage found no training pairs: set model.reward_model to a trained reward model")
    return examples


def _saved_fingerprint(directory: Path) -> dict[str, Any] | None:
    """The record of the model saved in ``directory`` (None when there is none or it cannot be read)."""
    path = directory / FINGERPRINT_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    saved.pop("val_accuracy", None)
    return saved


def _why_retrain(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    """``the data changed (...)`` and/or ``settings changed: <keys>``, from the saved and the wanted record."""
    reasons = []
    old, new = saved.get("content", {}), wanted["content"]
    if old != new:
        changed = [f"{split} pairs: {old.get(f'{split}_rows', 0)} -> {new.get(f'{split}_rows', 0)} rows, content "
                   f"{str(old.get(split, 'unknown'))[:12]} -> {str(new.get(split, 'none'))[:12]}"
                   for split in ("train", "val") if old.get(split) != new.get(split)]
        reasons.append(f"the data changed ({'; '.join(changed)})")
    settings = sorted(_flat({k: v for k, v in saved.items() if k != "content"}).items()
                      ^ _flat({k: v for k, v in wanted.items() if k != "content"}).items())
    if settings:
        reasons.append(f"settings changed: {', '.join(sorted({key for key, _ in settings}))}")
    return "; ".join(reasons) or "the saved record differs"


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"stage.epochs": "2", ...}``: nested settings as dotted keys (values as JSON, so they can be compared)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
    return out


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _fmt(value: float) -> str:
    return "n/a (no validation pairs)" if math.isnan(value) else f"{value:.3f}"

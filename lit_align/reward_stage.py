"""The reward-model stage of an on-policy run that is given no reward model.

Preference distillation, REBEL, RLHF and reverse KL need a reward model R(x, a). When ``reward_model`` is not
set, ``RewardStage`` trains one at the start of ``fit`` on the preference pairs of the run's own training data,
with the ``RewardModel`` objective's Bradley-Terry loss (PAPER 2b), reports its accuracy on the validation pairs,
saves it in Hugging Face format (``<default_root_dir>/reward_model``, a one-label
``AutoModelForSequenceClassification``) and hands it back frozen. It is the same two-stage recipe as training
``RewardModel`` first and passing its directory as ``reward_model``, in one command.

A later run with the same settings (a resumed run, or the next ``validate``/``test``) loads the saved model
instead of training again; a change of data, backbone or stage settings trains a new one.
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

#: The settings a saved reward model was trained with, next to its weights.
FINGERPRINT_FILE = "lit_align_reward_stage.json"


@dataclass
class RewardStage:
    """Trains the reward model of an on-policy objective when none is given.

    Args:
        dirpath: Where the reward model is saved; defaults to ``<trainer.default_root_dir>/reward_model``.
        model: Backbone of the reward model; defaults to the policy's model (the tokenizers must match).
        epochs: Passes over the training pairs.
        learning_rate: Constant AdamW learning rate.
        batch_size: Pairs per update; defaults to the data module's batch size.
        freeze_backbone: Train the score head only.
        seed: Seed of the head's initialisation and of the shuffling.
        reuse: Load the model saved in ``dirpath`` by an earlier run with identical settings instead of training.
    """

    dirpath: str | None = None
    model: str | None = None
    epochs: int = 2
    learning_rate: float = 1e-3
    batch_size: int | None = None
    freeze_backbone: bool = False
    seed: int = 0
    reuse: bool = True

    def provide(self, objective, trainer, train: bool = True) -> torch.nn.Module:
        """The frozen reward model for ``objective``: loaded from ``dirpath`` if it matches, else trained there."""
        from lit_align.reward_model import load_reward_model

        directory = Path(self.dirpath or Path(trainer.default_root_dir) / "reward_model")
        fingerprint = self.fingerprint(objective, trainer.datamodule)
        if not (self.reuse and _saved_with(directory, fingerprint)):
            if not train:
                raise ValueError(f"no reward model: set model.reward_model (none was found in {directory})")
            if trainer.is_global_zero:
                self.train(objective, trainer, directory, fingerprint)
            trainer.strategy.barrier("reward_stage")
        rank_zero_info(f"reward model: {directory}")
        return load_reward_model(str(directory))

    def fingerprint(self, objective, datamodule) -> dict[str, Any]:
        data = dict(getattr(datamodule, "hparams", {}))
        data = {k: v for k, v in data.items() if k not in ("num_workers", "eval_batch_size", "tokenizer")}
        return json.loads(json.dumps({"stage": asdict(self), "backbone": self.backbone(objective), "data": data},
                                     default=str))

    def backbone(self, objective) -> str:
        return self.model or objective.policy.model_name

    # -- training ----------------------------------------------------------------------------------------------

    def train(self, objective, trainer, directory: Path, fingerprint: dict[str, Any]) -> None:
        from lit_align.objectives.reward import RewardModel

        datamodule = trainer.datamodule
        train_pairs, val_pairs = _pairs(datamodule, "train_examples"), _pairs(datamodule, "val_examples")
        device = trainer.strategy.root_device
        rank_zero_info(f"reward stage: no reward_model given, training one on {len(train_pairs)} preference pairs "
                       f"of the training data ({self.epochs} epochs)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            reward = RewardModel(model=self.backbone(objective), freeze_backbone=self.freeze_backbone, seed=self.seed,
                                 learning_rate=self.learning_rate).to(device)
            optimizer = torch.optim.AdamW(reward.scorer.trainable_parameters(), lr=self.learning_rate)
            loader = DataLoader(train_pairs, batch_size=self.batch_size or datamodule.hparams.batch_size,
                                shuffle=True, collate_fn=datamodule.collator())
            reward.train()
            for epoch in range(self.epochs):
                losses = []
                for batch in loader:
                    loss, _ = reward.compute_loss(_to(batch, device), "train")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                accuracy = self.accuracy(reward, val_pairs, datamodule, device)
                rank_zero_info(f"reward stage: epoch {epoch + 1}/{self.epochs} train loss "
                               f"{sum(losses) / len(losses):.4f} validation accuracy {_fmt(accuracy)}")
        reward.scorer.save_pretrained(directory)
        (directory / FINGERPRINT_FILE).write_text(json.dumps({**fingerprint, "val_accuracy": accuracy}, indent=2))
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


def _saved_with(directory: Path, fingerprint: dict[str, Any]) -> bool:
    path = directory / FINGERPRINT_FILE
    if not path.is_file():
        return False
    saved = json.loads(path.read_text())
    saved.pop("val_accuracy", None)
    return saved == fingerprint


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _fmt(value: float) -> str:
    return "n/a (no validation pairs)" if math.isnan(value) else f"{value:.3f}"

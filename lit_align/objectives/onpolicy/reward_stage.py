"""The reward-model stage of an on-policy run that is given no reward model.

Preference distillation, REBEL, RLHF and reverse KL need a reward model R(x, a). When ``reward_model`` is not
set, ``RewardStage`` trains one at the start of ``fit`` on the preference pairs of the run's own training data,
with the ``RewardModeling`` objective (Bradley-Terry, PAPER 2b), reports its accuracy on the validation pairs,
saves it in Hugging Face format (``<default_root_dir>/reward_model``, a one-label
``AutoModelForSequenceClassification``) and hands it back frozen. It is the same two-stage recipe as training
``RewardModeling`` first and passing its directory as ``reward_model``, in one command.

A later run with the same settings and the same data (a resumed run, or the next ``validate``/``test``) loads the
saved model instead of training again. What it was trained on is recorded next to it: the stage settings, the
backbone, the data settings and a digest of the content of the training and validation pairs
(``lit_align.runs.fingerprints``), so an edited data file, another backbone or another stage setting trains a new one
and says why ("reward stage: retraining: the data changed (...)" or "... settings changed: <keys>").

The training is a nested ``lightning.Trainer``: ``fit`` of ``RewardModeling`` on the training pairs, then
``validate`` on the validation pairs for the accuracy. It runs on each rank's own device with no strategy of its
own: every rank fits the same pairs with the same seed, rank 0 saves its model, and after a barrier every rank
loads that one, so all hold the same weights (a GPU's run-to-run noise cannot set them apart). Every rank fits,
not rank 0 alone, because the objective's logged means sum over the process group whenever one is running
(``lit_align.objectives.metrics.StageMeans``): a fit on rank 0 alone would wait in a collective that the other ranks, idle at
a barrier, never enter. In step, the same fit on every rank makes the same collectives, and no rank waits longer
than one step (a rank-0-only stage longer than the process group's timeout would also have failed the others).
A nested Trainer on the outer strategy is not used: that strategy (DDP, FSDP2) belongs to the outer Trainer, whose
launcher, process group and device mesh are set up for the run in progress and bound to its LightningModule, so a
second fit through it would set them up again in the middle of the first.

The nested fit leaves the outer run as it was: the global random state is forked (and nothing is seeded globally,
no ``seed_everything``), it writes no logs or checkpoints, and Lightning's info lines about it are hidden, since
they would read as the outer run's.

The defaults are the paper's reward model (PAPER 2b: lr 3e-6, cosine decay, 1 epoch), which a pretrained backbone
can take; the tiny random model of the shipped configs needs a far larger rate and sets its own.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader

from lit_align.data.sources import DataError
from lit_align.runs.fingerprints import datamodule_digest
from lit_align.runs.identity import source_digest
from lit_align.models.loading import is_embedded
from lit_align.objectives.offline.reward import RewardModeling
from lit_align.runs.outputs import atomic_directory
from lit_align.rewards.model import load_reward_model
from lit_align.objectives.schedules import Schedule
from lit_align.runs.seeds import resolve_seed

#: The settings a saved reward model was trained with, next to its weights.
FINGERPRINT_FILE = "lit_align_reward_stage.json"
#: What ``validate`` reports as the fraction of pairs ranked right (``AlignmentModule`` logs ``val/<metric>``).
ACCURACY_METRIC = "val/rewards/accuracies"


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
        batch_size: Pairs per update; defaults to the run's global batch (the data module's batch size times the
            number of processes), so that the reward model does not depend on how many processes train it (every
            rank fits the same pairs). PAPER 2b uses 64.
        freeze_backbone: Train the score head only.
        seed: Seed of the head's initialisation and of the shuffling; by default the run's ``seed_everything``
            (``lit_align.runs.seeds``).
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
    seed: int | None = None
    reuse: bool = True

    @property
    def effective_seed(self) -> int:
        """``seed``, else the run's ``seed_everything``."""
        return resolve_seed(self.seed)

    def provide(self, objective, trainer, train: bool = True) -> nn.Module:
        """The frozen reward model for ``objective``: loaded from ``dirpath`` if it matches, else trained there."""
        directory = Path(self.dirpath or Path(trainer.default_root_dir) / "reward_model")
        fingerprint = self.fingerprint(objective, trainer.datamodule)
        # rank 0's record decides for every rank: all of them fit, or none (see the module docstring)
        saved = trainer.strategy.broadcast(_saved_fingerprint(directory))
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
            start = time.monotonic()
            self.train(objective, trainer, directory, fingerprint)  # every rank: see the module docstring
            trainer.strategy.barrier("reward_stage")
            self.train_seconds = time.monotonic() - start  # the run's summary reports it (RunSummary)
        rank_zero_info(f"reward model: {directory}")
        return load_reward_model(str(directory))

    def pairs_per_update(self, trainer, datamodule) -> int:
        """``batch_size``, else the run's global batch: the same reward model on one process or many."""
        return self.batch_size or datamodule.hparams.batch_size * trainer.world_size

    def fingerprint(self, objective, datamodule) -> dict[str, Any]:
        """What the saved model depends on: stage settings, backbone, data settings and the pairs' content."""
        # where the model goes and whether to reuse it do not change what is trained
        stage = {k: v for k, v in asdict(self).items() if k not in ("dirpath", "reuse")}
        stage["seed"] = self.effective_seed
        # the path is left out because the content digest covers what it holds: a moved file is the same data
        data = {k: v for k, v in dict(getattr(datamodule, "hparams", {})).items()
                if k not in ("num_workers", "eval_batch_size", "tokenizer", "path", "seed")}
        # the name says where the backbone is read from, its digest what it holds (a rewritten folder retrains)
        record = {"stage": stage, "backbone": self.backbone(objective),
                  "backbone_weights": self.backbone_digest(objective), "data": data,
                  "content": datamodule_digest(datamodule)}
        return json.loads(json.dumps(record, default=str))

    def backbone(self, objective) -> str:
        return self.model or objective.policy.model_name

    def backbone_digest(self, objective) -> str:
        """What the backbone holds (``lit_align.runs.identity``): the policy's pi_0 digest when the backbone is the
        policy's model, else the digest of the named folder (the embedded model: its name; its seed is the stage's)."""
        name = self.backbone(objective)
        policy = objective.policy
        digest = getattr(getattr(policy, "reference", None), "digest", None)
        if name == policy.model_name and digest is not None:
            return digest
        return f"embedded:{name}" if is_embedded(name) else source_digest(name)

    # -- training ----------------------------------------------------------------------------------------------

    def train(self, objective, trainer, directory: Path, fingerprint: dict[str, Any]) -> None:
        """Fit ``RewardModeling`` on the training pairs with a nested Trainer on this process's device, validate
        it, and (on rank 0) save it with its record in ``directory``. Under several ranks every rank calls it."""
        datamodule = trainer.datamodule
        train_pairs, val_pairs = _pairs(datamodule, "train"), _pairs(datamodule, "val")
        collate = datamodule.collator()
        rank_zero_info(f"reward stage: no reward_model given, training one on {len(train_pairs)} preference pairs "
                       f"of the training data ({self.epochs} epochs, lr {self.learning_rate:g} {self.lr_schedule})")
        with torch.random.fork_rng(devices=[]), _nested_fit_quiet():
            torch.manual_seed(self.effective_seed)  # a pretrained backbone's new score head and the shuffling
            # No clipping, as the stage has always trained; the schedule is the objective's own, over the stage's
            # updates (estimated_stepping_batches of the nested fit).
            reward = RewardModeling(model=self.backbone(objective), freeze_backbone=self.freeze_backbone,
                                    seed=self.effective_seed, learning_rate=self.learning_rate,
                                    lr_schedule=self.lr_schedule, warmup_ratio=self.warmup_ratio, max_grad_norm=None)
            nested = _nested_trainer(trainer.strategy.root_device, self.epochs)
            nested.fit(reward, DataLoader(train_pairs, batch_size=self.pairs_per_update(trainer, datamodule),
                                          shuffle=True, collate_fn=collate))
            accuracy = math.nan
            if val_pairs:
                loader = DataLoader(val_pairs, batch_size=datamodule.hparams.batch_size, collate_fn=collate)
                accuracy = float(nested.validate(reward, loader, verbose=False)[0][ACCURACY_METRIC])
        rank_zero_info(f"reward stage: validation accuracy {_fmt(accuracy)}")
        if not trainer.is_global_zero:
            return
        # Weights and record are moved into place together: a kill mid-write never leaves new weights under the
        # previous model's record (reused as if they matched) or a record without its weights.
        with atomic_directory(directory) as temp:
            reward.scorer.save_pretrained(temp)
            (temp / FINGERPRINT_FILE).write_text(json.dumps({**fingerprint, "val_accuracy": accuracy}, indent=2))
        if trainer.logger is not None and not math.isnan(accuracy):
            trainer.logger.log_metrics({"reward_stage/val_accuracy": accuracy}, step=0)


def _nested_trainer(device: torch.device, epochs: int) -> L.Trainer:
    """A one-device Trainer for the stage: no strategy, logger, checkpoint, progress bar or model table."""
    return L.Trainer(
        accelerator=device.type, devices=[device.index] if device.index is not None else 1, max_epochs=epochs,
        # the outer run's cluster (torchrun, SLURM) describes its ranks, not this one-process fit; SLURM's would
        # also install its own requeue signal handler
        plugins=[LightningEnvironment()],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[_EpochLoss(epochs)],
    )


class _EpochLoss(L.Callback):
    """Says the mean training loss of each epoch of the stage."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        mean = torch.stack(self.losses).mean().item() if self.losses else math.nan
        self.losses.clear()
        rank_zero_info(f"reward stage: epoch {trainer.current_epoch + 1}/{self.epochs} train loss {mean:.4f}")


class _HideLightningInfo(logging.Filter):
    """Drops Lightning's info lines (devices, "`Trainer.fit` stopped"); the stage's own pass (same logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or str(record.getMessage()).startswith("reward stage")


@contextmanager
def _nested_fit_quiet() -> Iterator[None]:
    hide = _HideLightningInfo()
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    # records of child loggers are filtered at the handlers they propagate to, not at the parent logger
    targets = [*loggers, *(handler for logger in loggers for handler in logger.handlers)]
    for target in targets:
        target.addFilter(hide)
    try:
        with warnings.catch_warnings():
            # fit has no validation loader on purpose: the accuracy comes from validate, once, at the end
            warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`")
            yield
    finally:
        for target in targets:
            target.removeFilter(hide)


def _pairs(datamodule, split: Literal["train", "val"]) -> list:
    # a data module of the user's own, without lit-align's examples(), offers no pairs to train on
    examples = list(datamodule.examples(split)) if hasattr(datamodule, "examples") else []
    if examples and len(examples[0].completion_ids) != 2:
        raise DataError("the reward stage trains on preference pairs, but this data has no chosen/rejected "
                        "completions: set model.reward_model to a trained reward model")
    if split == "train" and not examples:
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


def _fmt(value: float) -> str:
    return "n/a (no validation pairs)" if math.isnan(value) else f"{value:.3f}"

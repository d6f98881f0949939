"""Checkpointing defaults for resumable runs."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class AlignCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that always keeps ``last.ckpt`` in a fixed place and the best by ``val/loss``.

    Checkpoints go to ``<trainer.default_root_dir>/checkpoints`` unless ``dirpath`` is set, so ``--ckpt_path
    last`` finds them again (the logger's versioned folders would change on every run). Without validation
    data there is no best checkpoint to keep and only ``last.ckpt`` is written. Every argument is
    ``ModelCheckpoint``'s.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        if self.monitor is not None and not _has_validation(trainer):
            self.monitor, self.save_top_k = None, 0
        super().setup(trainer, pl_module, stage)


def _has_validation(trainer: L.Trainer) -> bool:
    if trainer.limit_val_batches == 0:
        return False
    datamodule = trainer.datamodule
    return bool(getattr(datamodule, "val_examples", True)) if datamodule is not None else True

"""Checkpointing defaults for resumable runs."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class AlignCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that always keeps ``last.ckpt`` in a fixed place and the best by ``val/loss``.

    Checkpoints go to ``<trainer.default_root_dir>/checkpoints`` unless ``dirpath`` is set, so ``--ckpt_path
    last`` finds them again (the logger's versioned folders would change on every run). Without validation
    data there is no best checkpoint to keep and only ``last.ckpt`` is written. Every argument is
    ``ModelCheckpoint``'s.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._default_dirpath(trainer)
        if self.monitor is not None and not _has_validation(trainer):
            self.monitor, self.save_top_k = None, 0
        super().setup(trainer, pl_module, stage)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # SIGTERM (preemption, SLURM time limit): Lightning stops at the next step boundary by raising
        # SIGTERMException; keep that step in last.ckpt so `--ckpt_path last` loses nothing.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit" and self.save_last:
            path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
            trainer.save_checkpoint(path, self.save_weights_only)
            self.last_model_path = path
            rank_zero_info(f"received SIGTERM: saved step {trainer.global_step} to {path}; "
                           "resume with --ckpt_path last")
        super().on_exception(trainer, pl_module, exception)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        # The step that reaches max_steps is kept even when it is not a multiple of every_n_train_steps. It is
        # written here, inside the loop, so the checkpoint records the position within the epoch: one written
        # after the loop ended would record the epoch as finished, and a resume with a larger max_steps would
        # start the next epoch's data order instead of continuing this one.
        if self.save_last and 0 < trainer.max_steps <= trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _default_dirpath(self, trainer: L.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        # `--ckpt_path last` is resolved before `setup`: without this it would search the logger's new version folder
        self._default_dirpath(trainer)
        return super()._find_last_checkpoints(trainer)


def _has_validation(trainer: L.Trainer) -> bool:
    if trainer.limit_val_batches == 0:
        return False
    datamodule = trainer.datamodule
    return bool(getattr(datamodule, "val_examples", True)) if datamodule is not None else True

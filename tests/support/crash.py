"""Test-only pieces loaded by class path in `lit-align fit` runs (tests put this folder on PYTHONPATH)."""

from __future__ import annotations

import os
import time

import lightning as L
import torch

from lit_align.objectives.offline.dpo import DPO


class NaNLossDPO(DPO):
    """DPO whose training loss is NaN at optimizer step ``nan_step`` (and only there).

    Args:
        nan_step: The global step whose loss is replaced by NaN.
    """

    def __init__(self, nan_step: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_step = nan_step

    def compute_loss(self, batch, stage):
        loss, metrics = super().compute_loss(batch, stage)
        if stage == "train" and self.global_step == self.nan_step:
            loss = loss * torch.tensor(float("nan"))
        return loss, metrics


class PauseMidStep(L.Callback):
    """At ``step``, after the forward pass and before the backward, write ``marker`` and sleep (to be killed).

    Args:
        step: Global step at which to pause.
        marker: File created when the pause begins.
        seconds: How long to sleep.
    """

    def __init__(self, step: int, marker: str, seconds: float = 120.0) -> None:
        self.step, self.marker, self.seconds = step, marker, seconds

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step == self.step:
            with open(self.marker, "w") as handle:
                handle.write(str(os.getpid()))
            time.sleep(self.seconds)

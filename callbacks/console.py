"""What a ``lit-align`` run shows on the console: a one-line summary of the run and a progress bar of its metrics."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_info

from lit_align.policy import PolicyWithReference


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class RunSummary(L.Callback):
    """One line at the start of fit instead of Lightning's model table: objective, model, parameter counts,
    reference, devices and precision. (``--trainer.enable_model_summary true`` brings the table back.)"""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = list(pl_module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        policy = getattr(pl_module, "policy", None)
        model = getattr(policy, "model_name", None) or getattr(policy, "source", None) or "?"
        reference = policy.reference.name if isinstance(policy, PolicyWithReference) else "none"
        devices = f"{trainer.world_size} x {trainer.strategy.root_device.type}"
        rank_zero_info(
            f"run: {type(pl_module).__name__} on {model} ({_count(trainable)} trainable, {_count(frozen)} frozen "
            f"parameters; reference: {reference}), {devices}, precision {trainer.precision}, "
            f"writing to {trainer.default_root_dir}"
        )


class AlignProgressBar(RichProgressBar):
    """Lightning's Rich progress bar without the logger's version number (``v_num``), which is not a metric."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

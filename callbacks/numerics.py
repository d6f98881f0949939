"""Stop (or skip the step) when the loss or a gradient stops being a finite number."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite; the message names the step."""


class NonFiniteGuard(L.Callback):
    """Checks every loss before its backward pass and every gradient before the optimizer step.

    With ``on_nonfinite="stop"`` (the default) the run ends with a ``NonFiniteError`` naming the step, before the
    optimizer touches the weights, so the last checkpoint written stays the last good one; the message names it
    (path and step) or says that none has been written yet. With ``"skip"`` the
    update is dropped (every gradient set to ``None``, which optimizers skip), counted (the running count is
    logged as ``train/nonfinite_skipped``), and training goes on; more than ``max_skipped`` skipped steps stop the run.
    Works for automatic and manual optimisation, since both go through ``on_before_backward`` and
    ``on_before_optimizer_step``. Under fp16 loss scaling (a ``GradScaler``), overflowing gradients are the
    scaler's business (it skips the step and lowers the scale), so only the loss is checked.

    Args:
        on_nonfinite: ``stop`` ends the run; ``skip`` drops the update and counts it.
        max_skipped: With ``skip``, the most steps that may be dropped before the run stops anyway.
        check_gradients: Also check the gradients (one reduction per parameter tensor per step).
    """

    def __init__(self, on_nonfinite: Literal["stop", "skip"] = "stop", max_skipped: int = 100,
                 check_gradients: bool = True) -> None:
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.max_skipped = max_skipped
        self.check_gradients = check_gradients
        self.skipped = 0
        self._bad: str | None = None  # what went wrong in the step being accumulated

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self._bad is not None:
            return
        local_bad = not bool(torch.isfinite(loss.detach()).all())
        # Every rank must take the same decision, or the healthy ones would wait forever in the next collective.
        if trainer.strategy.reduce_boolean_decision(local_bad, all=False):
            self._flag(trainer, f"non-finite loss ({_describe(loss) if local_bad else 'on another rank'})")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self._bad is None and self.check_gradients and not _uses_grad_scaler(trainer):
            name = _first_nonfinite_gradient(pl_module)
            if trainer.strategy.reduce_boolean_decision(name is not None, all=False):
                self._flag(trainer, f"non-finite gradient of {name or 'a parameter on another rank'}")
        if self._bad is not None:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None  # optimizers skip parameters without a gradient: this step changes nothing
            self._bad = None
        if self.on_nonfinite == "skip":
            pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False)

    def _flag(self, trainer: L.Trainer, what: str) -> None:
        where = (f"at step {trainer.global_step} (epoch {trainer.current_epoch}, "
                 f"batch {trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1})")
        if self.on_nonfinite == "stop" or self.skipped >= self.max_skipped:
            extra = f" after skipping {self.skipped} steps" if self.skipped else ""
            raise NonFiniteError(
                f"{what} {where}{extra}; training stopped before the update; {_last_good_checkpoint(trainer)}. "
                "Lower the learning rate, check the data, or set numerics.on_nonfinite=skip to drop such steps."
            )
        self.skipped += 1
        self._bad = what
        rank_zero_warn(f"{what} {where}: skipping this update ({self.skipped} skipped so far)")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def _last_good_checkpoint(trainer: L.Trainer) -> str:
    """Where to resume from: the newest checkpoint this run wrote or resumed from (every step before the one
    that failed was finite, so it is good), or that there is none yet."""
    saved = []
    for callback in getattr(trainer, "checkpoint_callbacks", None) or []:
        latest = getattr(callback, "latest_saved", None)  # AlignCheckpoint
        if latest is None and getattr(callback, "_last_checkpoint_saved", None):  # another ModelCheckpoint
            latest = (callback._last_global_step_saved, callback._last_checkpoint_saved)
        if latest is not None:
            saved.append(latest)
    if not saved:
        return "no checkpoint has been written yet"
    step, path = max(saved, key=lambda item: item[0])
    return f"the last good checkpoint is {path} (step {step}): resume from it with --ckpt_path {path}"


def _describe(tensor: torch.Tensor) -> str:
    t = tensor.detach().float()
    return "nan" if bool(torch.isnan(t).any()) else "inf"


def _first_nonfinite_gradient(module: torch.nn.Module) -> str | None:
    # Sharded (DTensor) gradients are checked shard by shard; the ranks' answers are combined by the caller.
    grads = [(n, _local(p.grad)) for n, p in module.named_parameters() if p.grad is not None]
    if not grads:
        return None
    # One fused check first (the common, healthy case), then find the culprit only when something is wrong.
    total = torch.stack([g.detach().float().abs().sum() for _, g in grads]).sum()
    if bool(torch.isfinite(total)):
        return None
    for name, grad in grads:
        if not bool(torch.isfinite(grad.detach()).all()):
            return name
    return None


def _local(grad: torch.Tensor) -> torch.Tensor:
    return grad.to_local() if hasattr(grad, "to_local") else grad


def _uses_grad_scaler(trainer: L.Trainer) -> bool:
    return getattr(trainer.precision_plugin, "scaler", None) is not None

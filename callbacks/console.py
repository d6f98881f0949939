"""What a ``lit-align`` run shows on the console: one line on the run at the start, a progress bar over the
whole run's optimizer steps (plain lines when the output is not a terminal), and a summary at the end."""

from __future__ import annotations

import math
import os
import time
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.utilities import rank_zero_info
from rich.console import Console
from rich.progress import ProgressColumn
from rich.text import Text

from lit_align.callbacks.export import HFExport
from lit_align.runs.loggers import logger_location
from lit_align.policy.with_reference import PolicyWithReference

#: Metrics the summary shows when the run logged them (the checkpoint's monitor is added).
SUMMARY_METRICS = ("train/loss", "val/loss", "val/rewards/accuracies", "val/rewards/margins")


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds))) if math.isfinite(seconds) else "?"


def _number(value: Any) -> str:
    return f"{float(value):.4g}"


def updates_per_batch(pl_module: L.LightningModule) -> int | None:
    """An on-policy objective's optimizer updates per batch of prompts (``epochs_per_batch`` passes of
    ``mini_batches`` updates); None for an objective that steps once per (accumulated) batch."""
    passes = getattr(pl_module, "epochs_per_batch", None)
    return None if passes is None else passes * getattr(pl_module, "mini_batches", 1)


def planned_steps(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, bool]:
    """The optimizer steps the fit will take (``inf`` when nothing bounds it) and whether the epochs bound it
    (rather than ``max_steps``). An on-policy batch always completes, so its ``max_steps`` rounds up to whole
    batches."""
    batches, updates = trainer.num_training_batches, updates_per_batch(pl_module)
    by_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else math.inf
    per_epoch = batches * updates if updates else batches / trainer.accumulate_grad_batches
    per_epoch = math.ceil(per_epoch) if math.isfinite(per_epoch) else math.inf  # inf: a stream without a length
    if updates and math.isfinite(by_steps):
        by_steps = math.ceil(by_steps / updates) * updates
    by_epochs = per_epoch * trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf
    return min(by_steps, by_epochs), by_epochs < by_steps


def epoch_label(trainer: L.Trainer) -> str:
    return f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"


class StepsColumn(ProgressColumn):
    """``done/total`` and the rate, in the task's ``unit`` (optimizer ``steps`` for training, batches otherwise)."""

    def render(self, task) -> Text:
        total = "?" if task.total is None or not math.isfinite(task.total) else int(task.total)
        unit = task.fields.get("unit")
        rate = f"{task.speed:.2f} {unit or 'it'}/s" if task.speed else ""
        return Text(f"{int(task.completed)}/{total}{' ' + unit if unit else ''} {rate}")


class AlignProgressBar(RichProgressBar):
    """Lightning's Rich progress bar with one bar for the whole run: its total is the run's optimizer steps
    (``max_steps``, or the epochs' worth where they end the run first; a resumed run starts where it stopped), its
    time column the elapsed time and the time left. The epoch is named only when the epochs bound the run. The bar
    is closed when training ends, so the lines after it (why fit stopped, the export, the summary) start below it.
    The logger's version number (``v_num``) is not shown: it is not a metric."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._total, self._by_epochs = planned_steps(trainer, pl_module)
        if self.progress is not None:
            self.train_progress_bar_id = self.progress.add_task(self._description(trainer), total=self._total,
                                                                unit="steps")
            self._update(self.train_progress_bar_id, trainer.global_step)

    def _description(self, trainer: L.Trainer) -> str:
        label = epoch_label(trainer) if self._by_epochs else "training"
        return f"{label:{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._description(trainer))
            self.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.train_progress_bar_id is None:
            return
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        if trainer.global_step >= self._total:
            self._close()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._by_epochs and trainer.current_epoch + 1 >= trainer.max_epochs:
            self._close()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def _close(self) -> None:
        """Draw the bar's last state and stop it, so that what is printed next goes below it."""
        if self.progress is not None and not self._progress_stopped:
            self.refresh(hard=True)
            self._stop_progress()

    def configure_columns(self, trainer: L.Trainer) -> list:
        columns = super().configure_columns(trainer)
        return [*columns[:2], StepsColumn(), columns[3]]  # description, bar, steps and rate, elapsed • left

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class PlainProgress(ProgressBar):
    """Progress as plain lines, for output that is not a terminal (a CI log, ``nohup``, a SLURM job file):
    a line at every tenth of the run and at least every ``every_seconds`` seconds, with the step, the epoch when
    the epochs bound the run, the training loss, the rate and the time left.

    Args:
        every_seconds: Longest wait between two lines.
    """

    def __init__(self, every_seconds: float = 60.0) -> None:
        super().__init__()
        self.every_seconds = every_seconds
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._total, self._by_epochs = planned_steps(trainer, pl_module)
        self._start_step, self._last_step = trainer.global_step, trainer.global_step
        self._start = self._last_time = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, now = trainer.global_step, time.monotonic()
        if not (self._enabled and trainer.is_global_zero) or step == self._last_step:
            return
        tenth = self._total / 10 if math.isfinite(self._total) else math.inf
        milestone = math.floor(step / tenth) > math.floor(self._last_step / tenth) if tenth > 0 else False
        if milestone or step >= self._total or now - self._last_time >= self.every_seconds:
            rank_zero_info(self.line(trainer, pl_module, step, now))
            self._last_step, self._last_time = step, now

    def line(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int, now: float) -> str:
        """``step 40/64 (62%), epoch 2/2, train/loss 0.41, 3.1 steps/s, 0:00:13 elapsed, 0:00:08 left``."""
        elapsed = now - self._start
        rate = (step - self._start_step) / elapsed if elapsed > 0 else math.inf
        parts = [f"step {step}"]
        if math.isfinite(self._total):
            parts = [f"step {step}/{int(self._total)} ({100 * step / max(self._total, 1):.0f}%)"]
        if self._by_epochs:
            parts.append(epoch_label(trainer))
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"train/loss {_number(loss)}")
        parts += [f"{rate:.2f} steps/s", f"{_clock(elapsed)} elapsed"]
        if math.isfinite(self._total) and rate > 0:
            parts.append(f"{_clock((self._total - step) / rate)} left")
        return ", ".join(parts)


def progress_bar() -> ProgressBar:
    """``AlignProgressBar`` on a terminal (or in a notebook), ``PlainProgress`` lines otherwise."""
    console = Console()
    return AlignProgressBar() if console.is_terminal or console.is_jupyter else PlainProgress()


class RunSummary(L.Callback):
    """One line at the start of fit instead of Lightning's model table (objective, model, parameter counts,
    reference, devices and precision; ``--trainer.enable_model_summary true`` brings the table back), and a
    summary when fit has finished: wall time (and the reward stage's), optimizer steps, samples per second, the
    final (and best) metrics, and where the metrics, the checkpoints and the export are."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._finished = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._start, self._finished = time.monotonic(), False

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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_start, self._start_step, self._samples = time.monotonic(), trainer.global_step, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += _samples_in(batch)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finished = not trainer.interrupted

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # after every callback's on_fit_end (the export among them), so the summary is the run's last word
        if stage == "fit" and self._finished and trainer.is_global_zero:
            rank_zero_info("\n".join(self.summary(trainer, pl_module)))
        self._finished = False

    def summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
        """The closing lines: what the run did, then where its outputs are."""
        wall = time.monotonic() - self._start
        train_time = time.monotonic() - getattr(self, "_train_start", self._start)
        steps = trainer.global_step - getattr(self, "_start_step", 0)
        stage = getattr(getattr(pl_module, "reward_stage", None), "train_seconds", None)
        head = f"done: {steps} optimizer steps in {_clock(wall)}"
        if stage is not None:
            head += f" (reward stage {_clock(stage)})"
        samples = getattr(self, "_samples", 0) * trainer.world_size
        if samples and train_time > 0:
            head += f", {samples / train_time:.1f} samples/s"
        metrics = _final_metrics(trainer)
        lines = [head + (f"; {metrics}" if metrics else "")]
        lines += [f"  {name}: {where}" for name, where in _outputs(trainer)]
        return lines


def _samples_in(batch: Any) -> int:
    """Examples in a training batch: its ``index`` (pairs or prompts), else its rows."""
    if not isinstance(batch, dict):
        return 0
    index = batch.get("index")
    if index is not None:
        return int(index.numel())
    mask = batch.get("attention_mask", batch.get("prompt_mask"))
    return len(mask) if mask is not None else 0


def _final_metrics(trainer: L.Trainer) -> str:
    checkpoint = trainer.checkpoint_callback
    monitor = getattr(checkpoint, "monitor", None)
    names = [*SUMMARY_METRICS, *([monitor] if monitor and monitor not in SUMMARY_METRICS else [])]
    parts = []
    for name in names:
        value = trainer.callback_metrics.get(name)
        if value is None:
            continue
        text = f"{name} {_number(value)}"
        best = getattr(checkpoint, "best_model_score", None)
        if name == monitor and best is not None and getattr(checkpoint, "best_model_path", ""):
            text += f" (best {_number(best)}: {os.path.basename(checkpoint.best_model_path)})"
        parts.append(text)
    return ", ".join(parts)


def _outputs(trainer: L.Trainer) -> list[tuple[str, str]]:
    """(what, where) for the run's metrics (each logger), checkpoints and export."""
    outputs = [("metrics", logger_location(logger)) for logger in trainer.loggers]
    checkpoint = trainer.checkpoint_callback
    directory = getattr(checkpoint, "dirpath", None)
    if isinstance(checkpoint, ModelCheckpoint) and directory and os.path.isdir(directory):
        saved = sorted(name for name in os.listdir(directory) if name.endswith(".ckpt"))
        if saved:
            outputs.append(("checkpoints", f"{directory} ({', '.join(saved)})"))
    for callback in trainer.callbacks:
        if isinstance(callback, HFExport) and callback.enabled:
            directory = callback.dirpath or os.path.join(trainer.default_root_dir, "hf_model")
            if os.path.isdir(directory):
                outputs.append(("export", directory))
    return outputs

"""Progress over the whole run: the bar counts the run's optimizer steps (epochs named only when they end the run),
plain lines replace it when the output is not a terminal, and it is closed before the run's closing lines."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import lightning as L
import pytest
import rich
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_align.callbacks.console import AlignProgressBar, PlainProgress, planned_steps, progress_bar


def _fit(callbacks, **trainer_args) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=callbacks, **trainer_args)
    trainer.fit(BoringModel())
    return trainer


@pytest.fixture
def terminal():
    """Rich's console as a 120-column terminal writing into a buffer (Lightning's bar uses the global console)."""
    buffer = io.StringIO()
    yield buffer, {"force_terminal": True, "file": buffer, "width": 120}
    rich.reconfigure()


@pytest.mark.parametrize("limits, total, label", [
    ({"max_steps": 5, "max_epochs": -1}, 5, "training"),  # was "Epoch 0/-2" over one epoch's 64 batches
    ({"max_epochs": 2, "limit_train_batches": 3}, 6, "epoch 2/2"),  # was "Epoch 1/1" over 3 batches
])
def test_the_bar_counts_the_runs_optimizer_steps(terminal, limits, total, label):
    bar = AlignProgressBar(console_kwargs=terminal[1])
    trainer = _fit([bar], **limits)
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.total, task.completed, trainer.global_step) == (total, total, total)
    assert task.description.strip() == label


def test_the_bar_is_closed_before_the_closing_lines(terminal):
    buffer, console_kwargs = terminal

    class ClosingLine(L.Callback):  # a logging handler writes straight to the stream, past Rich's redirection
        def on_fit_end(self, trainer, pl_module):
            buffer.write("exported the trained model\n")

    _fit([AlignProgressBar(console_kwargs=console_kwargs), ClosingLine()], max_steps=4)
    text = buffer.getvalue()
    assert 0 <= text.rfind("4/4") < text.index("exported the trained model")


def test_planned_steps_count_an_on_policy_objective_s_updates():
    trainer = SimpleNamespace(max_steps=-1, max_epochs=2, num_training_batches=8, accumulate_grad_batches=1)
    on_policy = SimpleNamespace(epochs_per_batch=4, mini_batches=2)
    assert planned_steps(trainer, on_policy) == (128, True)
    # a batch always completes: max_steps 10 is two batches of 8 updates
    assert planned_steps(SimpleNamespace(**{**vars(trainer), "max_steps": 10}), on_policy) == (16, False)
    offline = SimpleNamespace(**{**vars(trainer), "accumulate_grad_batches": 3})
    assert planned_steps(offline, object()) == (6, True)
    assert planned_steps(SimpleNamespace(**{**vars(trainer), "max_epochs": -1}), object())[0] == float("inf")


def test_plain_lines_when_the_output_is_not_a_terminal(caplog):
    bar = progress_bar()  # pytest captures stdout: not a terminal
    assert isinstance(bar, PlainProgress)
    with caplog.at_level(logging.INFO):
        _fit([bar], max_steps=20, max_epochs=-1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert lines[0].startswith("step 2/20 (10%), ") and lines[-1].startswith("step 20/20 (100%), ")
    assert len(lines) == 10 and all("steps/s" in line and "left" in line for line in lines)


def test_the_summary_names_the_reward_stage_time_and_the_best_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_align.callbacks.console import RunSummary

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), monitor="val/loss")
    checkpoint.best_model_score, checkpoint.best_model_path = 0.25, str(tmp_path / "checkpoints" / "step8.ckpt")
    trainer = SimpleNamespace(global_step=8, world_size=1, checkpoint_callback=checkpoint, loggers=[], callbacks=[],
                              callback_metrics={"train/loss": 0.5, "val/loss": 0.3}, default_root_dir=str(tmp_path))
    module = SimpleNamespace(reward_stage=SimpleNamespace(train_seconds=9.4))
    summary = RunSummary()
    summary.on_train_start(trainer, module)
    trainer.global_step = 16
    lines = summary.summary(trainer, module)
    assert lines[0].startswith("done: 8 optimizer steps in 0:00:0") and "(reward stage 0:00:09)" in lines[0]
    assert lines[0].endswith("; train/loss 0.5, val/loss 0.3 (best 0.25: step8.ckpt)")
    assert lines[1:] == [f"  checkpoints: {tmp_path / 'checkpoints'} (last.ckpt)"]

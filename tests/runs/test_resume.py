"""Resume: a run stopped after k steps and resumed with ``--ckpt_path last`` ends where an uninterrupted run ends.

32 rows in batches of 8 make 4 batches an epoch: stopping after 3 steps resumes in the middle of epoch 0, after 4
steps at the epoch boundary, and 6 steps in all cross into epoch 1.
"""

import lightning as L
import pytest
import torch
from support.cli import fit_args

from lit_align.cli.app import build_cli

#: What ``ResumeProbe`` saw in the current test: training-start state and the example indices of every batch.
RECORDS: dict[str, list] = {}
#: ``StopAfter`` ends the fit after this many optimizer steps (None: never), like a preempted job.
STOP_AT: list = [None]
_UNINTERRUPTED: dict = {}


class ResumeProbe(L.Callback):
    """Records the state a fit starts from and the data every optimizer step trains on."""

    def on_train_start(self, trainer, module):
        optimizer = trainer.optimizers[0]
        steps = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
        RECORDS.setdefault("start", []).append({
            "global_step": trainer.global_step,
            "scheduler_epoch": trainer.lr_scheduler_configs[0].scheduler.last_epoch,
            "optimizer_steps": sorted(set(steps)),
            "lr": optimizer.param_groups[0]["lr"],
        })

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        RECORDS.setdefault("batches", []).append((trainer.current_epoch, batch["index"].tolist()))


class StopAfter(L.Callback):
    """Stops training after ``STOP_AT[0]`` steps, the way a killed job stops: the schedule still plans for max_steps."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if STOP_AT[0] is not None and trainer.global_step >= STOP_AT[0]:
            trainer.should_stop = True


def _fit(root, steps, *extra):
    return build_cli(fit_args(
        "dpo.yaml", f"--trainer.default_root_dir={root}", "--data.limit_rows=32", "--data.batch_size=8",
        "--trainer.limit_val_batches=0", "--checkpoint.every_n_train_steps=1", "--export.enabled=false",
        "--trainer.callbacks+=test_resume.ResumeProbe", "--trainer.callbacks+=test_resume.StopAfter", *extra,
        steps=steps,
    ))


def _weights(cli):
    return {k: v.detach().clone() for k, v in cli.model.policy.policy.state_dict().items()}


@pytest.mark.parametrize(
    "stop_after, how, every",
    [(3, "max_steps", 1), (4, "max_steps", 1), (3, "preempted", 1), (3, "max_steps", 2)],
    ids=["mid-epoch", "epoch-boundary", "preempted-mid-epoch-linear-schedule",
         "final-step-not-a-multiple-of-the-checkpoint-interval"],
)
def test_resumed_run_equals_uninterrupted_run(run_dir, stop_after, how, every):
    total = 6
    if how == "max_steps":
        # a shorter max_steps plans a shorter schedule, so compare under a constant rate
        schedule = ["--model.init_args.lr_schedule=constant", "--model.init_args.warmup_ratio=0"]
    else:
        schedule = ["--model.init_args.lr_schedule=linear", "--model.init_args.warmup_ratio=0.25"]
    RECORDS.clear()
    STOP_AT[0] = None
    if how not in _UNINTERRUPTED:  # shared by the cases with the same schedule
        full = _fit("runs/full", total, *schedule)
        _UNINTERRUPTED[how] = _weights(full), RECORDS.pop("batches")
    full_weights, full_batches = _UNINTERRUPTED[how]
    RECORDS.clear()

    if how == "max_steps":
        # the final step is checkpointed too, even when it is not a multiple of every_n_train_steps
        _fit("runs/split", stop_after, *schedule, f"--checkpoint.every_n_train_steps={every}")
    else:
        STOP_AT[0] = stop_after
        _fit("runs/split", total, *schedule)
        STOP_AT[0] = None
    first_part = RECORDS.pop("batches")
    checkpoint = torch.load(run_dir / "runs/split/checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == stop_after
    RECORDS.clear()
    resumed = _fit("runs/split", total, *schedule, "--ckpt_path=last")
    second_part = RECORDS.pop("batches", [])  # none at all is the zero-steps-after-an-epoch-boundary trap
    (start,) = RECORDS["start"]

    # optimizer, scheduler and step come back from the checkpoint
    assert start["global_step"] == stop_after and start["scheduler_epoch"] == stop_after
    assert start["optimizer_steps"] == [float(stop_after)]
    expected_lr = 5e-4 if how == "max_steps" else 3.0e-4
    assert how == "max_steps" or expected_lr == pytest.approx(_lr_at(stop_after, total))
    assert start["lr"] == pytest.approx(expected_lr)
    # the data position comes back: no batch replayed, none skipped, the same order as the uninterrupted run
    assert len(first_part) == stop_after and len(second_part) == total - stop_after
    assert first_part + second_part == full_batches
    assert resumed.trainer.global_step == total
    resumed_weights = resumed.model.policy.policy.state_dict()
    for name, value in full_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, atol=1e-6, rtol=0)
    # and the resumed part did train: the final weights are not the ones the checkpoint held
    stored = checkpoint["state_dict"]
    assert any(not torch.equal(stored[f"policy.policy.{k}"], v) for k, v in resumed_weights.items())


def _lr_at(step, total, peak=5e-4, warmup_ratio=0.25):
    """The default linear schedule by hand: warm-up steps w = int(0.25 * 6) = 1; factor s / w for s < w (transformers'
    warm-up), then 1 - (s - w) / (total - w). Step 3: 1 - 2/5 = 0.6 -> 3.0e-4."""
    warmup = int(warmup_ratio * total)
    if step < warmup:
        return peak * step / warmup
    return peak * (1 - (step - warmup) / (total - warmup))

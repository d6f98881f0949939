"""Checkpointing defaults for resumable runs, and the run manifest that makes a resume provably the same run."""

from __future__ import annotations

import os
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_align.runs.checkpoint_io import shown_path, watch_loads
from lit_align.runs.fingerprints import datamodule_digest
from lit_align.runs.manifest import MANIFEST_KEY, build_manifest, check_objective, check_resumed
from lit_align.runs.folder import (LOG_RECORD_NAME, RECORD_NAME, check_fresh_fit, read_record, run_record,
                                  write_record)
from lit_align.runs.seeds import describe_seeds


class AlignCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that always keeps ``last.ckpt`` in a fixed place and the best by ``val/loss``, and
    writes the run manifest (``lit_align.runs.manifest``) into every checkpoint.

    Checkpoints go to ``<trainer.default_root_dir>/checkpoints`` unless ``dirpath`` is set, so ``--ckpt_path
    last`` finds them again (the logger's versioned folders would change on every run). Without validation
    data there is no best checkpoint to keep and only ``last.ckpt`` is written. A resume (``fit`` with
    ``ckpt_path``) is checked against the checkpoint's manifest before any state is restored; a fresh fit into a
    folder that holds another run is refused (``lit_align.runs.folder``). The run's effective seeds are said once.

    Args:
        resume_changes: What a resume does when the checkpoint comes from a different run (another objective,
            other training rows, batch size, gradient accumulation, world size or length settings): ``refuse``
            stops with one line naming each difference; ``allow`` warns and resumes anyway (the saved data
            position is then replayed against the new data and batching as it stands). Other library versions
            or hyperparameters only warn.
        other_run: What a fresh fit (no ``ckpt_path``) does in a folder whose checkpoints belong to another run
            (another objective, hyperparameters, data, seeds or pi_0): ``refuse`` stops with one line giving the
            resume and the new-folder commands; ``replace`` overwrites that run's checkpoints and export.
        **kwargs: ``ModelCheckpoint``'s arguments.
    """

    def __init__(self, resume_changes: Literal["refuse", "allow"] = "refuse",
                 other_run: Literal["refuse", "replace"] = "refuse", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if resume_changes not in ("refuse", "allow"):
            raise ValueError(f"checkpoint.resume_changes must be 'refuse' or 'allow', got {resume_changes!r}")
        if other_run not in ("refuse", "replace"):
            raise ValueError(f"checkpoint.other_run must be 'refuse' or 'replace', got {other_run!r}")
        self.resume_changes = resume_changes
        self.other_run = other_run
        self._record: dict | None = None
        self._log_record: str | None = None  # this fit's logger version's run record, where that is a local folder
        #: Whether the coming fit resumes a checkpoint, when ``lit-align`` knows it before ``setup`` (it sets this:
        #: a fresh fit is then checked before the objective's set-up writes anything, e.g. a reward stage).
        self.resuming: bool | None = None
        #: ``(global_step, path)`` of the newest checkpoint this run wrote or resumed from, or ``None``.
        self.latest_saved: tuple[int, str] | None = None
        self._data_digest: dict | None = None  # computed once per fit: hashing every row at each save is waste
        self._resume_checked = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._default_dirpath(trainer)
        if self.monitor is not None and not _has_validation(trainer):
            self.monitor, self.save_top_k = None, 0
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            datamodule = trainer.datamodule
            # the data module is set up before callbacks, and both before any checkpoint state is restored
            self._data_digest = datamodule_digest(datamodule) if datamodule is not None else {}
            self._resume_checked = False
            self._start_run(trainer, pl_module)
            # checked as the file is read, before the weights are loaded into a possibly different objective
            watch_loads(trainer, lambda ckpt, path: self._check_resume_once(trainer, pl_module, ckpt, path))
        else:  # validate, test, predict, evaluate: the checkpoint must come from this objective
            watch_loads(trainer, lambda checkpoint, path: check_objective(checkpoint, pl_module, path))

    def _start_run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Say the seeds, refuse a fresh fit over another run, and mark the logger's folder with this run."""
        manifest = build_manifest(trainer, pl_module, self._data_digest)
        self._record = run_record(manifest, getattr(pl_module, "hparams", None))
        rank_zero_info(describe_seeds(manifest["seeds"]))
        if self.resuming is not None:  # lit-align said; else known once the checkpoint is chosen (on_fit_start)
            self._check_fresh_fit(trainer, resuming=self.resuming)
        log_dir = trainer.log_dir if trainer.loggers else None  # a collective: every rank asks
        local = isinstance(log_dir, str) and log_dir and "://" not in log_dir
        self._log_record = os.path.join(log_dir, LOG_RECORD_NAME) if local else None
        self._write_log_record(trainer)

    def _write_log_record(self, trainer: L.Trainer) -> None:
        if self._log_record is not None and trainer.is_global_zero:
            write_record(self._log_record, {"run_id": self._record["run_id"]})

    def _continue_run(self, trainer: L.Trainer, ckpt_path: str) -> None:
        """A resume continues the run recorded beside its checkpoint, changed settings or not: its logger version
        and later records keep that run's identity (``lit-align plot`` joins a run and its resumes)."""
        saved = read_record(os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), RECORD_NAME))
        if saved is not None and self._record is not None and saved["run_id"] != self._record["run_id"]:
            self._record["run_id"] = saved["run_id"]
            self._write_log_record(trainer)

    def _check_fresh_fit(self, trainer: L.Trainer, resuming: bool) -> None:
        if not resuming and self.other_run == "refuse" and self._record is not None:
            check_fresh_fit(self.dirpath, trainer.default_root_dir, self._record)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.resuming is None:
            self._check_fresh_fit(trainer, resuming=trainer.ckpt_path is not None)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        watch_loads(trainer, None)
        super().teardown(trainer, pl_module, stage)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[MANIFEST_KEY] = build_manifest(trainer, pl_module, self._data_digest)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Strategies that read checkpoints themselves (FSDP2's sharded directories) reach here unchecked.
        if trainer.state.fn == "fit":
            self._check_resume_once(trainer, pl_module, checkpoint, str(trainer.ckpt_path))
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def _check_resume_once(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict,
                           ckpt_path: str) -> None:
        """The first checkpoint a fit reads is the one it resumes from; any later read is not a resume."""
        if self._resume_checked:
            return
        self._resume_checked = True
        self.latest_saved = (int(checkpoint.get("global_step", 0)), shown_path(ckpt_path))
        current = build_manifest(trainer, pl_module, self._data_digest)
        check_resumed(checkpoint, current, ckpt_path, self.resume_changes == "allow",
                      getattr(pl_module, "hparams", None))
        self._continue_run(trainer, ckpt_path)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.latest_saved = (trainer.global_step, filepath)
        self._write_record(trainer, filepath)

    def _write_record(self, trainer: L.Trainer, checkpoint_path: str) -> None:
        """Record this run next to the checkpoint just written: the folder's checkpoints are this run's now."""
        if self._record is not None and trainer.is_global_zero:
            write_record(os.path.join(os.path.dirname(checkpoint_path), RECORD_NAME), self._record)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # SIGTERM (preemption, SLURM time limit): Lightning stops at the next step boundary by raising
        # SIGTERMException; keep that step in last.ckpt so `--ckpt_path last` loses nothing.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit" and self.save_last:
            path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
            trainer.save_checkpoint(path, self.save_weights_only)
            self._write_record(trainer, path)
            self.last_model_path = path
            self.latest_saved = (trainer.global_step, path)
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

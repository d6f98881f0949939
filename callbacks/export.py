"""Export the aligned policy in Hugging Face format at the end of ``fit``."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lit_align.errors import UserError
from lit_align.policy.export import export_policy


class HFExport(L.Callback):
    """Writes the policy (safetensors + tokenizer) when training ends, from rank 0 only.

    The folder is written beside its target and moved into place once complete (``lit_align.runs.outputs``): a
    previous export stays whole until then, and a run killed mid-export never leaves weights without their
    tokenizer. An objective with its own ``export_hf`` (``RewardModeling``) should write the same way. ``lit-align``
    sends a ``fast_dev_run``'s export to ``<default_root_dir>/debug/hf_model``.

    A fit that took no optimizer step (``limit_train_batches 0``, ``max_steps 0``, a resume of a finished run)
    exports nothing: the folder keeps the model it holds, which is not replaced by an untrained one. A folder the
    run reads a model from (the policy's ``model``, a reward model) is never an export target: refused at start.

    Args:
        dirpath: Output directory; defaults to ``<trainer.default_root_dir>/hf_model``.
        enabled: Set to false to skip the export.
    """

    def __init__(self, dirpath: str | None = None, enabled: bool = True) -> None:
        self.dirpath = dirpath
        self.enabled = enabled
        self._start_step: int | None = None

    def directory(self, trainer: L.Trainer) -> str:
        return self.dirpath or os.path.join(trainer.default_root_dir, "hf_model")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._start_step = None
        if stage == "fit" and self.enabled:
            target = Path(self.directory(trainer)).resolve()
            for source in _model_sources(pl_module):
                if Path(source).exists() and Path(source).resolve() == target:
                    raise UserError(f"export.dirpath {self.directory(trainer)} is the model this run reads "
                                    f"({source}): the export would replace it; export elsewhere (--export.dirpath)")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step  # after a resume restored its step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.interrupted:
            return
        directory = self.directory(trainer)
        if self._start_step is None or trainer.global_step <= self._start_step:
            rank_zero_info(f"no optimizer step was taken in this fit: nothing exported ({directory} left as it was)")
            return
        state_dict = None
        gather = getattr(pl_module, "full_policy_state_dict", None)
        if gather is not None:
            state_dict = gather()  # collective under sharding: every rank takes part
        if trainer.is_global_zero:
            # An objective whose trained model is not a causal-LM policy (RewardModeling) says how to write it.
            export = getattr(pl_module, "export_hf", None)
            if export is not None:
                export(directory, state_dict)
            else:
                export_policy(pl_module.policy, directory, state_dict)
            rank_zero_info(f"exported the trained model in Hugging Face format to {directory}")
        trainer.strategy.barrier("hf_export")


def _model_sources(pl_module) -> list[str]:
    """The local model folders a run reads: the policy's model and a reward model named by path."""
    sources = []
    policy = getattr(pl_module, "policy", None)
    for value in (getattr(policy, "model_name", None), getattr(policy, "source", None),
                  getattr(getattr(pl_module, "hparams", {}), "get", lambda _: None)("reward_model")):
        if isinstance(value, str):
            sources.append(value)
    return sources

"""Export the aligned policy in Hugging Face format at the end of ``fit``."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lit_align.export import export_policy


class HFExport(L.Callback):
    """Writes the policy (safetensors + tokenizer) when training ends, from rank 0 only.

    The folder is written beside its target and moved into place once complete (``lit_align.outputs``): a
    previous export stays whole until then, and a run killed mid-export never leaves weights without their
    tokenizer. An objective with its own ``export_hf`` (``RewardModeling``) should write the same way. ``lit-align``
    sends a ``fast_dev_run``'s export to ``<default_root_dir>/debug/hf_model``.

    Args:
        dirpath: Output directory; defaults to ``<trainer.default_root_dir>/hf_model``.
        enabled: Set to false to skip the export.
    """

    def __init__(self, dirpath: str | None = None, enabled: bool = True) -> None:
        self.dirpath = dirpath
        self.enabled = enabled

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.interrupted:
            return
        directory = self.dirpath or os.path.join(trainer.default_root_dir, "hf_model")
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

"""Bradley-Terry reward modelling (PAPER 2b, Eq. 9): the reward model of distillation, REBEL, RLHF and reverse KL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lit_align.errors import UserError
from lit_align.losses import bradley_terry_loss
from lit_align.objectives.metrics import preference_metrics
from lit_align.objectives.base import AlignmentModule, Stage
from lit_align.runs.outputs import atomic_directory
from lit_align.rewards.model import CHECKPOINT_KEY, RewardScorer, build_reward_scorer
from lit_align.runs.seeds import resolve_seed


class RewardModeling(AlignmentModule):
    """Trains a reward model: a scalar head on a language-model backbone, with ``-ln s(R(x,a+) - R(x,a-))``.

    Batches come from ``PreferenceDataModule`` (chosen rows first, then rejected). The reward is read at the last
    real token of each row (the EOS the data encoder appends). There is no reference model. At the end of ``fit``
    the ``export`` callback writes the model as a one-label ``AutoModelForSequenceClassification`` (safetensors +
    tokenizer); ``lit_align.rewards.model.load_reward_model`` loads that directory or the run's ``.ckpt``. Under
    ``FSDP2Strategy`` the backbone's blocks and the scorer are sharded and the export gathers the full weights.

    Args:
        model: Backbone: Hugging Face hub id, local directory, or ``"tiny"`` for the embedded default. A causal LM
            gets a new score head; a sequence-classification model with one label keeps its own.
        freeze_backbone: Train the score head only (the backbone's weights stay as loaded).
        dtype: Weight dtype to load (``float32``, ``bfloat16``, ``float16`` or ``auto``).
        trust_remote_code: Run model code shipped with a hub repository. Off unless you trust its author.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        disable_dropout: Zero all dropout of the backbone.
        seed: Seed of the random initialisation of the embedded ``tiny`` backbone and its head; by default the
            run's ``seed_everything`` (``lit_align.runs.seeds``).
    """

    def __init__(
        self,
        model: str = "tiny",
        freeze_backbone: bool = False,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        disable_dropout: bool = True,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        seed = resolve_seed(seed)
        scorer = build_reward_scorer(model, dtype, trust_remote_code, gradient_checkpointing, disable_dropout, seed)
        if freeze_backbone:
            scorer.freeze_backbone()
        # The base holds the trained model as `policy` (the checkpoint keys start `policy.`); all it asks of it is
        # `tokenizer` and `trainable_parameters()`, which a scorer has.
        super().__init__(policy=scorer, **kwargs)
        self.seed = seed  # effective: recorded in the run manifest (lit_align.runs.seeds)

    @property
    def scorer(self) -> RewardScorer:
        """The reward model being trained."""
        return self.policy

    def compute_loss(self, batch: dict[str, torch.Tensor], stage: Stage):
        n = batch["index"].numel()
        rewards = self.scorer(batch["input_ids"], batch["attention_mask"])  # (2B,): chosen rows, then rejected
        out = bradley_terry_loss(rewards[:n], rewards[n:])
        metrics = preference_metrics(out)
        return out.losses.mean(), metrics

    # -- no reference: the base's bookkeeping of a policy's pi_0 does not apply to a scorer ---------------------

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        pass

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The scorer is stored whole. Enough to rebuild its architecture without this class: see
        # lit_align.rewards.model.load_reward_model.
        checkpoint[CHECKPOINT_KEY] = {"config": self.scorer.model.config.to_dict(), "tokenizer": self.hparams.model}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pass  # nothing frozen was left out to fill back in

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        raise UserError("RewardModeling trains a reward model, which scores text and generates none: run "
                        "`lit-align predict` on a policy objective (score text with lit-align evaluate's judges)")

    # -- saving -----------------------------------------------------------------------------------------------

    def export_hf(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the reward model as a one-label ``AutoModelForSequenceClassification`` with its tokenizer, whole
        or not at all (``lit_align.runs.outputs.atomic_directory``)."""
        with atomic_directory(directory) as temp:
            self.scorer.save_pretrained(temp, state_dict)
        return Path(directory)

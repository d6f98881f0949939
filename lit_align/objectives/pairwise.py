"""Objectives trained on offline preference pairs (DPO, IPO, PMLE, ...): one concatenated forward per step."""

from __future__ import annotations

import warnings

import torch

from lit_align.logprobs import completion_token_logprobs, masked_mean
from lit_align.losses import PreferenceLoss
from lit_align.metrics import preference_metrics
from lit_align.objectives.base import AlignmentModule, Stage
from lit_align.policy import attention_accepts_4d_mask
from lit_align.reference_cache import ReferenceCache
from lit_align.shared_prompt import pack_shared_prompt, shared_prompt_logps


class PairwiseObjective(AlignmentModule):
    """Computes policy and reference log-probs of chosen and rejected and hands them to ``pair_loss``.

    Batches come from ``PreferenceDataModule``: rows ``0..B-1`` are the chosen sequences, ``B..2B-1`` the
    rejected ones. A subclass implements ``pair_loss`` (usually one call into ``lit_align.losses``).

    Args:
        reference_cache_dir: Where ``reference="cache"`` stores precomputed reference log-probs; by default a
            per-user cache, ``$LIT_ALIGN_CACHE/reference_logps``, else ``$XDG_CACHE_HOME/lit_align/reference_logps``
            (``~/.cache/lit_align/reference_logps``), shared by every run that has the same model and data.
        share_prompt: Run each prompt once for both completions (one packed row per pair with a mask that keeps
            chosen and rejected apart; ``lit_align/shared_prompt.py``): the same log-probs for about a quarter
            less compute. Turned off automatically (with a warning) for attention implementations that
            ignore a 4D mask, such as flash attention.
    """

    def __init__(
        self, reference_cache_dir: str | None = None, share_prompt: bool = True, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.reference_cache = None
        if self.policy.reference_mode == "cache":  # built now, while the policy still is pi_0 (its identity)
            self.reference_cache = ReferenceCache(reference_cache_dir, self.policy)
        self.share_prompt = share_prompt and attention_accepts_4d_mask(self.policy.base_model)
        if share_prompt and not self.share_prompt:
            warnings.warn(f"{self.policy.base_model.config._attn_implementation!r} attention ignores the packed "
                          "mask of share_prompt; running chosen and rejected as separate rows instead")
        self._packed = None  # (input_ids it was built from, SharedPromptBatch)

    def pair_loss(
        self,
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        reference_chosen: torch.Tensor | None,
        reference_rejected: torch.Tensor | None,
    ) -> PreferenceLoss:
        raise NotImplementedError

    def on_fit_start(self) -> None:
        if self.reference_cache is not None:
            self.reference_cache.prepare(self, self.trainer.datamodule)

    def on_validation_start(self) -> None:
        if self.reference_cache is not None and not self.reference_cache.ready("val"):
            self.reference_cache.prepare(self, self.trainer.datamodule)

    on_test_start = on_validation_start

    # The reference cache is computed from the live policy only while it is pi_0; these mark when it stops being,
    # and a checkpoint names its pi_0 so that it is never resumed against another one.
    def on_save_checkpoint(self, checkpoint) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.reference_cache is not None:
            self.reference_cache.save_identity(checkpoint)

    def on_load_checkpoint(self, checkpoint) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.reference_cache is not None:
            self.reference_cache.check_identity(checkpoint, getattr(self._trainer, "ckpt_path", None) or "being loaded")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.reference_cache is not None:
            self.reference_cache.policy_moved = True

    def packed(self, batch: dict[str, torch.Tensor]):
        """The batch packed one row per example (``share_prompt``), built once per batch for both forwards."""
        ids = batch["input_ids"]
        if self._packed is None or self._packed[0] is not ids:
            packed = pack_shared_prompt(ids, batch["attention_mask"], batch["completion_mask"],
                                        ids.shape[0] // batch["index"].numel())
            self._packed = (ids, packed)
        return self._packed[1]

    def sequence_logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Policy log-probs of every row (2B,), their token mask (2B, T-1), and the mean logit per row (2B,)."""
        if self.share_prompt:
            packed = self.packed(batch)
            logits = self.policy(packed.input_ids, packed.attention_mask, position_ids=packed.position_ids,
                                 logits_to_keep=packed.logits_to_keep)  # (B, kept, V)
            logps, mean_logits = shared_prompt_logps(logits, packed)
            return logps, batch["completion_mask"][:, 1:].bool(), mean_logits
        logits = self.policy(batch["input_ids"], batch["attention_mask"])  # (2B, T, V)
        token_logps, mask = completion_token_logprobs(logits, batch["input_ids"], batch["completion_mask"])
        mean_logits = masked_mean(logits.detach()[:, :-1].float().mean(-1), mask, dim=-1)
        return token_logps.sum(-1), mask, mean_logits

    @torch.no_grad()
    def reference_sequence_logps(self, batch: dict[str, torch.Tensor], stage: Stage) -> torch.Tensor | None:
        """Reference log-probs of every row (2B,), from the live reference or the on-disk cache."""
        if self.reference_cache is not None:
            return self.reference_cache.lookup("train" if stage == "train" else "val", batch["index"])
        if not self.policy.has_live_reference:
            return None
        if self.share_prompt:
            packed = self.packed(batch)
            logits = self.policy.reference_logits(packed.input_ids, packed.attention_mask,
                                                  position_ids=packed.position_ids,
                                                  logits_to_keep=packed.logits_to_keep)
            return shared_prompt_logps(logits, packed)[0]
        logits = self.policy.reference_logits(batch["input_ids"], batch["attention_mask"])
        token_logps, _ = completion_token_logprobs(logits, batch["input_ids"], batch["completion_mask"])
        return token_logps.sum(-1)

    def compute_loss(self, batch: dict[str, torch.Tensor], stage: Stage):
        n = batch["index"].numel()
        logps, mask, mean_logits = self.sequence_logps(batch)
        ref = self.reference_sequence_logps(batch, stage)
        ref_chosen, ref_rejected = (ref[:n], ref[n:]) if ref is not None else (None, None)
        out = self.pair_loss(logps[:n], logps[n:], ref_chosen, ref_rejected)
        metrics = {
            **preference_metrics(out),
            "logps/chosen": logps[:n].detach(),
            "logps/rejected": logps[n:].detach(),
            "logits/chosen": mean_logits[:n],
            "logits/rejected": mean_logits[n:],
        }
        return out.losses.mean(), metrics

"""Objectives trained on the rows of a data file (DPO, IPO, PMLE, SimPO, KTO, ...): one forward per batch.

``OfflineObjective`` computes, for every row of a batch, the policy's log-probs (summed, per token, the token
mask and so the lengths) and, when the objective reads them and the reference can give them, the reference's
summed log-probs, and hands them with the batch (and its declared extra columns, ``data_columns``) to one hook:

    def rows_loss(self, logps: RowLogps, batch) -> (per-example losses (B,), {name: per-example diagnostics})

``OfflinePairObjective`` is the thin subclass for pairs: it groups the rows into chosen and rejected and calls
``pair_loss(chosen, rejected, batch) -> PreferenceLoss``. Rows are laid out block by block: with K completions
per example (``CompletionCollator``), block k holds completion k of every example, so a pair batch has the
chosen rows first and the rejected rows after them; unpaired data (K = 1) has one row per example.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
from torch import nn

from lit_align.data.sources import DataError
from lit_align.losses import PreferenceLoss, length_desensitized_logps
from lit_align.objectives.metrics import preference_metrics
from lit_align.objectives.base import AlignmentModule, Stage
from lit_align.policy.reference import Need
from lit_align.models.packing import SharedPromptBatch, pack_shared_prompt

Batch = dict[str, torch.Tensor]
#: What ``row_logps`` scores under: the policy, pi_0, or a model given as it is.
Source = Literal["policy", "reference"] | nn.Module


@dataclass
class RowLogps:
    """Log-probs of the completion of every row of a batch (R rows), in the batch's row order.

    Attributes:
        policy: (R,) summed completion log-probs under the policy, with gradient.
        tokens: (R, T-1) the per-token log-probs behind ``policy``, zero off ``mask``.
        mask: (R, T-1) bool, the completion tokens (aligned like ``lit_align.models.logprobs``).
        mean_logits: (R,) mean logit over the completion tokens, detached (a diagnostic).
        reference: (R,) summed log-probs under pi_0, or None when the objective reads none.
    """

    policy: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    mean_logits: torch.Tensor
    reference: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        """(R,) completion length in tokens."""
        return self.mask.sum(-1)

    def blocks(self, count: int) -> list[RowLogps]:
        """The rows cut into ``count`` equal consecutive blocks (block k: completion k of every example)."""
        def part(value, k):
            return None if value is None else value.chunk(count)[k]

        return [RowLogps(*(part(getattr(self, f), k) for f in ("policy", "tokens", "mask", "mean_logits",
                                                                "reference"))) for k in range(count)]


class OfflineObjective(AlignmentModule):
    """Shared machinery of objectives on data rows; a subclass implements ``rows_loss``.

    Args:
        share_prompt: Run each prompt once for all its completions (one packed row per example with a mask that
            keeps the completions apart; ``lit_align.models.packing``): the same log-probs for about a quarter
            less compute on pairs. Off for architectures that cannot be packed exactly (flash attention, ALiBi,
            recurrent layers: ``packing_refusal``, with a warning) and, for the rest of the run,
            where the first batch's packed log-probs differ from the separate rows' (``lit_align.models.fast_path``).
    """

    #: ``rows_loss`` reads the reference's log-probs of the data rows (``logps.reference``); an objective without a
    #: reference term sets None, one whose need follows from a setting overrides ``reference_need``.
    needs_reference: ClassVar[Need | None] = "data"

    def __init__(self, share_prompt: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.share_prompt = self.prompt_sharing(share_prompt)
        self._packed: tuple[torch.Tensor, SharedPromptBatch] | None = None

    @property
    def uses_reference_logps(self) -> bool:
        """Whether ``rows_loss`` reads ``logps.reference``: whenever the objective needs pi_0 (``reference_need``)."""
        return self.reference_needed is not None

    # -- what a subclass provides ------------------------------------------------------------------------------

    def rows_loss(self, logps: RowLogps, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-example losses (B,) and per-example (or scalar) diagnostics from the rows' log-probs."""
        raise NotImplementedError

    # -- the reference's data log-probs are prepared before the first batch ------------------------------------

    def on_fit_start(self) -> None:
        if self.uses_reference_logps:
            self.policy.reference.prepare(self, self.trainer.datamodule)

    on_validation_start = on_test_start = on_fit_start

    # -- log-probs ---------------------------------------------------------------------------------------------

    def packed(self, batch: Batch) -> SharedPromptBatch:
        """The batch packed one row per example (``share_prompt``), built once per batch for every forward."""
        ids = batch["input_ids"]
        if self._packed is None or self._packed[0] is not ids:
            self._packed = (ids, pack_shared_prompt(ids, batch["attention_mask"], batch["completion_mask"],
                                                    completions_per_example(batch)))
        return self._packed[1]

    def row_logps(self, batch: Batch, source: Source = "policy") -> RowLogps:
        """Log-probs of every row (``reference`` is left None) under ``source``: ``"policy"`` (with gradient),
        ``"reference"`` (pi_0, a live reference, no gradient) or a model scored as it is (the reference cache
        runs pi_0 reloaded from its source). The LM head runs in chunks (``PolicyWithReference.completion_scores``)."""
        reference, model = source == "reference", source if isinstance(source, nn.Module) else None
        mask = batch["completion_mask"][:, 1:].bool()
        if self.share_prompt and self.policy.packs(reference, model):
            scores = self.policy.packed_scores(self.packed(batch), mask.shape[1], reference=reference, model=model)
        else:
            scores = self.policy.completion_scores(batch["input_ids"], batch["attention_mask"],
                                                   batch["completion_mask"], reference=reference, model=model)
        return RowLogps(policy=scores.logps.sum(-1), tokens=scores.logps, mask=mask, mean_logits=scores.mean_logits)

    @torch.no_grad()
    def reference_row_logps(self, batch: Batch, stage: Stage) -> torch.Tensor | None:
        """Summed reference log-probs of every row (R,): looked up where the reference stores them, else computed."""
        if not self.uses_reference_logps:
            return None
        cached = self.policy.reference.cached_logps("train" if stage == "train" else "val", batch["index"])
        if cached is not None:
            return cached
        return self.row_logps(batch, "reference").policy

    def compute_loss(self, batch: Batch, stage: Stage):
        # pi_0's no-grad forward first: run after the policy's, its buffers would add to the activations the
        # policy's forward keeps for the backward, at the step's peak memory
        reference = self.reference_row_logps(batch, stage)
        logps = replace(self.row_logps(batch), reference=reference)
        losses, metrics = self.rows_loss(logps, batch)
        return losses.mean(), {"loss": losses.detach(), **metrics}


class OfflinePairObjective(OfflineObjective):
    """Objectives on offline preference pairs: ``pair_loss`` gets the chosen and the rejected rows.

    Batches come from ``PreferenceDataModule``: rows ``0..B-1`` are the chosen sequences, ``B..2B-1`` the
    rejected ones. A subclass takes its settings in ``__init__`` and implements ``pair_loss``, one call into a
    pure function of ``lit_align.losses``: the one way a pair loss is written (``CombinedPairLoss`` sums them).
    """

    #: TRL's ``ld_alpha`` (Liu et al. 2024), set by ``LDDPO`` and ``CombinedPairLoss``: every summed log-prob of a
    #: pair, the policy's and the reference's, counts the tokens of the longer response past the shorter one's
    #: length this many times (``lit_align.losses.length_desensitized_logps``); None scores the rows as they are.
    #: The reference's per-token log-probs are read, so it must be live (``copy`` or ``lora``).
    ld_alpha: float | None = None

    def pair_loss(self, chosen: RowLogps, rejected: RowLogps, batch: Batch) -> PreferenceLoss:
        """The loss of every pair (``PreferenceLoss``: losses (B,), chosen and rejected rewards) from its rows."""
        raise NotImplementedError

    def row_logps(self, batch: Batch, source: Source = "policy") -> RowLogps:
        logps = super().row_logps(batch, source)
        if self.ld_alpha is None or completions_per_example(batch) != 2:
            return logps
        chosen, rejected = logps.lengths.chunk(2)
        public = torch.minimum(chosen, rejected).repeat(2)  # (R,): each row's pair's shorter length
        return replace(logps, policy=length_desensitized_logps(logps.tokens, logps.mask, public, self.ld_alpha))

    def rows_loss(self, logps: RowLogps, batch: Batch):
        if completions_per_example(batch) != 2:
            raise DataError(f"{type(self).__name__} trains on preference pairs, but the batch holds "
                            f"{completions_per_example(batch)} completion(s) per example: give it chosen and "
                            "rejected columns (PreferenceDataModule)")
        chosen, rejected = logps.blocks(2)
        out = self.pair_loss(chosen, rejected, batch)
        return out.losses, {
            **preference_metrics(out),
            "logps/chosen": chosen.policy.detach(),
            "logps/rejected": rejected.policy.detach(),
            # a mean over every completion token of the step (TRL's), not over rows: a row counts once a token
            "logits/chosen": chosen.mean_logits.repeat_interleave(chosen.lengths),
            "logits/rejected": rejected.mean_logits.repeat_interleave(rejected.lengths),
        }


def completions_per_example(batch: Batch) -> int:
    """K, the number of completion rows per example of a ``CompletionCollator`` batch."""
    return batch["input_ids"].shape[0] // batch["index"].numel()

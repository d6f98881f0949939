"""KTO (Ethayarajh et al. 2024): unpaired feedback, one completion per row labelled desirable or undesirable."""

from __future__ import annotations

from typing import Literal

import torch

from lit_align.losses import kto_loss, kto_reference_point
from lit_align.objectives.offline.base import Batch, OfflineObjective, RowLogps


class KTO(OfflineObjective):
    """Kahneman-Tversky optimisation on rows of prompt, completion and a desirable/undesirable ``label``.

    Train it on ``lit_align.data.UnpairedPreferenceDataModule`` (a file of pairs gives two labelled rows each). The
    reference point ``z0`` is the paper's estimate of KL(pi || pi0): the mean policy/reference log-ratio of
    *mismatched* pairs, every prompt of the batch with the completion of the example before it (the batch rotated
    by one), computed without gradient, averaged over every rank and clamped at 0. Those rows are scored live, so
    the reference must be ``copy`` or ``lora`` (a ``cache`` holds only the data rows).

    Logged: ``rewards/chosen`` and ``rewards/rejected`` (``beta * (ln pi - ln pi0)`` of the desirable and the
    undesirable rows), ``rewards/margins`` (their difference of means), ``logps/chosen``, ``logps/rejected``,
    ``logits/chosen``, ``logits/rejected`` (over tokens) and ``kl`` (z0; 0 for ``apo_zero_unpaired``), TRL's names.

    Args:
        beta: Scale of the log-ratio inside the sigmoid. TRL default: 0.1.
        desirable_weight: Weight of the desirable rows' loss. TRL default: 1.0; the paper advises weights that keep
            ``w_d * n_desirable / (w_u * n_undesirable)`` in [1, 4/3].
        undesirable_weight: Weight of the undesirable rows' loss. TRL default: 1.0.
        loss_type: ``kto`` (TRL's default) or ``apo_zero_unpaired``: APO-zero on unpaired rows, no reference point
            (so no mismatched forwards, and any reference that gives the rows' log-probs, a ``cache`` included).
    """

    data_columns = {"label": bool}

    @classmethod
    def reference_need(cls, settings):
        # kto's reference point scores mismatched rows live; apo_zero_unpaired reads the data rows' log-probs only
        return "samples" if settings["loss_type"] == "kto" else "data"

    @classmethod
    def reference_owner(cls, settings):
        if settings["loss_type"] == "kto":
            return "KTO's reference point (prompts with mismatched completions)"
        return "KTO"

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 loss_type: Literal["kto", "apo_zero_unpaired"] = "kto", **kwargs) -> None:
        if loss_type not in ("kto", "apo_zero_unpaired"):
            raise ValueError(f"loss_type must be kto or apo_zero_unpaired, got {loss_type!r}")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if desirable_weight < 0 or undesirable_weight < 0:
            raise ValueError(f"the weights must be non-negative, got {desirable_weight}, {undesirable_weight}")
        super().__init__(**kwargs)
        self.loss_type = loss_type
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight

    def compute_loss(self, batch: Batch, stage):
        if self.loss_type != "kto":
            no_point = batch["input_ids"].new_zeros((), dtype=torch.float)  # apo_zero_unpaired: no z0
            return super().compute_loss({**batch, "reference_point": no_point}, stage)
        # z0's two no-grad forwards run before the policy's forward keeps its activations for the backward
        return super().compute_loss({**batch, "reference_point": self.reference_point(batch)}, stage)

    def rows_loss(self, logps: RowLogps, batch: Batch):
        z0 = batch["reference_point"] if "reference_point" in batch else self.reference_point(batch)
        desirable = batch["label"].bool()
        out = kto_loss(logps.policy, logps.reference, desirable, z0, self.beta, self.desirable_weight,
                       self.undesirable_weight, self.loss_type)
        chosen, rejected = out.rewards[desirable], out.rewards[~desirable]
        metrics = {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "logps/chosen": logps.policy.detach()[desirable],
            "logps/rejected": logps.policy.detach()[~desirable],
            # means over every completion token of the step (TRL's): a row's mean logit counts once a token
            "logits/chosen": logps.mean_logits[desirable].repeat_interleave(logps.lengths[desirable]),
            "logits/rejected": logps.mean_logits[~desirable].repeat_interleave(logps.lengths[~desirable]),
            "kl": z0,
        }
        if chosen.numel() and rejected.numel():
            metrics["rewards/margins"] = chosen.mean() - rejected.mean()
        return out.losses, metrics

    @torch.no_grad()
    def reference_point(self, batch: Batch) -> torch.Tensor:
        """z0 from the batch's mismatched pairs, the log-ratios averaged over every rank before the clamp."""
        mismatched = mismatched_rows(batch, self.tokenizer.pad_token_id)
        policy = self.row_logps(mismatched).policy
        reference = self.row_logps(mismatched, "reference").policy  # live: no cache lookup
        ratio = (policy - reference).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(torch.stack([ratio.sum(), ratio.new_tensor(ratio.numel())]),
                                                 reduce_op="sum")
            return (total[0] / total[1]).clamp(min=0)
        return kto_reference_point(policy, reference)


def mismatched_rows(batch: Batch, pad_token_id: int) -> Batch:
    """Every prompt of the batch with the completion of the example before it (row i gets row i-1's, row 0 the
    last one's), right-padded like the data rows: ``input_ids``, ``attention_mask``, ``completion_mask`` (B, T')
    and ``index``. A batch of one example keeps its own completion."""
    ids, attention = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
    completion = batch["completion_mask"].cpu().bool()
    prompts = [ids[i][attention[i] & ~completion[i]] for i in range(ids.shape[0])]
    completions = [ids[i][completion[i]] for i in range(ids.shape[0])]
    completions = completions[-1:] + completions[:-1]
    length = max(len(p) + len(c) for p, c in zip(prompts, completions))
    out_ids = torch.full((len(prompts), length), pad_token_id, dtype=ids.dtype)
    out_attention = torch.zeros((len(prompts), length), dtype=batch["attention_mask"].dtype)
    out_completion = torch.zeros((len(prompts), length), dtype=batch["completion_mask"].dtype)
    for row, (prompt, comp) in enumerate(zip(prompts, completions)):
        end = len(prompt) + len(comp)
        out_ids[row, :end] = torch.cat([prompt, comp])
        out_attention[row, :end] = 1
        out_completion[row, len(prompt):end] = 1
    device = batch["input_ids"].device
    return {"input_ids": out_ids.to(device), "attention_mask": out_attention.to(device),
            "completion_mask": out_completion.to(device), "index": batch["index"]}

"""GRPO (Shao et al. 2024) and its variants: the Dr. GRPO, DAPO, BNPO and LUSPO reductions, CISPO, SAPO and
VESPO's token weights, GSPO's sequence-level ratios, two-sided clipping and high-entropy token masks."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lit_align.losses import (GROUP_LOSS_TYPES, GroupLossType, RewardScale, entropy_token_mask, group_advantages,
                              grpo_token_losses, reduce_group_loss)
from lit_align.objectives.onpolicy.group import GroupExperience, GroupObjective


class GRPO(GroupObjective):
    """Group relative policy optimisation: each response's advantage is its reward relative to the other responses
    to its prompt (``group_advantages``), every token of it gets that advantage in a PPO-clipped ratio, and with
    ``beta > 0`` a k3 estimate of KL(pi || pi_0) is added per token (``grpo_token_losses``).

    ``loss_type`` picks the per-token loss and how it is averaged (``grpo_token_losses``, ``reduce_group_loss``):
    ``grpo`` per sequence then over sequences, ``dr_grpo`` over a constant ``N * sampling.max_new_tokens``,
    ``dapo`` over the mini-batch's tokens on every rank, ``bnpo`` over this rank's tokens, ``luspo`` summed per
    sequence; ``cispo`` (capped importance weights on ``ln pi``), ``sapo`` (a soft gate) and ``vespo`` (a gamma
    weight of the sequence ratio) change the per-token loss itself. Dr. GRPO also drops the division by the group's
    standard deviation: ``scale_rewards`` follows ``loss_type`` unless given.

    Logged besides the on-policy metrics: ``reward_std``, ``frac_reward_zero_std``, ``clip_ratio/low_mean``,
    ``clip_ratio/high_mean``, ``clip_ratio/region_mean`` (fractions of response tokens, or of sequences with
    sequence-level ratios; ``cispo_clip_ratio`` for cispo, ``vespo/phi_seq_mean`` for vespo) and, with ``beta > 0``,
    ``kl`` (the mean k3 per token, bias-corrected when the loss is), TRL's names.

    Args:
        beta: Weight of the per-token k3 KL to the reference. 0 (TRL's default) trains without a reference.
        loss_type: ``grpo``, ``dr_grpo``, ``dapo``, ``bnpo``, ``cispo``, ``sapo``, ``luspo`` or ``vespo``. TRL
            default: dapo.
        epsilon_low: Lower clip of the ratio, ``1 - epsilon_low``. TRL default (``epsilon``): 0.2.
        epsilon_high: Upper clip, ``1 + epsilon_high``; None takes ``epsilon_low`` (TRL's default). DAPO's
            clip-higher: 0.28. For ``cispo`` the cap of the importance weight itself (ScaleRL recommends 5.0).
        scale_rewards: Divide the centred rewards by the standard deviation of their ``group``, of the ``batch``, or
            ``none``. None: ``none`` for dr_grpo, else ``group`` (TRL's default).
        importance_sampling_level: ``token`` ratios (TRL's default) or one ``sequence`` ratio per response, the
            exp of its mean token log-ratio (GSPO; ``luspo`` expects it).
        delta: Two-sided clipping (INTELLECT-2): the unclipped ratio capped at ``delta`` (> 1 + epsilon_high);
            None (TRL's default) is off.
        use_bias_correction_kl: Multiply the k3 KL by the importance ratio (TRL 1.16's default, True); False adds
            the plain k3 (TRL's earlier behaviour).
        top_entropy_quantile: Train the policy term only on the response tokens whose entropy is in this top
            fraction of the batch's (Wang et al. 2025); 1.0 (TRL's default) keeps every token. The entropies are
            the sampling-time policy's (one more no-grad forward per batch); TRL takes the current forward's, the
            same values on the first pass over a batch.
        sapo_temperature_pos: SAPO's gate temperature for positive advantages. TRL default: 1.0.
        sapo_temperature_neg: SAPO's gate temperature for the others. TRL default: 1.05.
        vespo_shapes: VESPO's ``(k_pos, lambda_pos, k_neg, lambda_neg)``. TRL's defaults: (2.0, 3.0, 3.0, 2.0).
        num_samples: Responses per prompt (the group). TRL default: 8.
        epochs_per_batch: Passes over each sampled batch (TRL's num_iterations). TRL default: 1.
    """

    def __init__(
        self,
        beta: float = 0.0,
        loss_type: GroupLossType = "dapo",
        epsilon_low: float = 0.2,
        epsilon_high: float | None = None,
        scale_rewards: RewardScale | None = None,
        importance_sampling_level: Literal["token", "sequence"] = "token",
        delta: float | None = None,
        use_bias_correction_kl: bool = True,
        top_entropy_quantile: float = 1.0,
        sapo_temperature_pos: float = 1.0,
        sapo_temperature_neg: float = 1.05,
        vespo_shapes: tuple[float, float, float, float] = (2.0, 3.0, 3.0, 2.0),
        num_samples: int = 8,
        epochs_per_batch: int = 1,
        **kwargs: Any,
    ) -> None:
        if loss_type not in GROUP_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(GROUP_LOSS_TYPES)}, got {loss_type!r}")
        epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
        if epsilon_low <= 0 or epsilon_high <= 0:
            raise ValueError(f"epsilon_low and epsilon_high must be positive, got {epsilon_low}, {epsilon_high}")
        if scale_rewards is None:
            scale_rewards = "none" if loss_type == "dr_grpo" else "group"
        if scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
        if importance_sampling_level not in ("token", "sequence"):
            raise ValueError(f"importance_sampling_level must be token or sequence, got {importance_sampling_level!r}")
        if delta is not None and delta <= 1 + epsilon_high:
            raise ValueError(f"delta must exceed 1 + epsilon_high = {1 + epsilon_high}, got {delta}")
        if not 0.0 < top_entropy_quantile <= 1.0:
            raise ValueError(f"top_entropy_quantile must be in (0, 1], got {top_entropy_quantile}")
        if sapo_temperature_pos <= 0 or sapo_temperature_neg <= 0:
            raise ValueError("the SAPO temperatures must be positive")
        super().__init__(beta, num_samples=num_samples, epochs_per_batch=epochs_per_batch, **kwargs)
        self.beta = beta
        self.loss_type = loss_type
        self.epsilon_low = epsilon_low
        self.epsilon_high = epsilon_high
        self.scale_rewards = scale_rewards
        self.sequence_level = importance_sampling_level == "sequence"
        self.delta = delta
        self.use_bias_correction_kl = use_bias_correction_kl
        self.top_entropy_quantile = top_entropy_quantile
        self.sapo_temperatures = (sapo_temperature_pos, sapo_temperature_neg)
        self.vespo_shapes = tuple(vespo_shapes)

    @torch.no_grad()
    def experience_from(self, rollout) -> GroupExperience:
        return self.grpo_experience(super().experience_from(rollout))

    def grpo_experience(self, exp) -> GroupExperience:
        """The group-relative advantages of a batch (and the high-entropy token mask when asked for)."""
        token_mask = None
        if self.top_entropy_quantile < 1.0:
            entropies = torch.cat([self.rollout_token_scores(chunk, entropy=True).entropy
                                   for chunk in self.experience_chunks(exp.rollout)])  # (N, T-1)
            token_mask = entropy_token_mask(entropies, exp.response_mask, self.top_entropy_quantile)
        advantages = group_advantages(exp.scores, self.num_samples, self.scale_rewards)  # (N,)
        return exp.extend(GroupExperience, advantages=advantages, token_mask=token_mask)

    def experience_loss(self, mb: GroupExperience):
        """GRPO's loss; with ``importance_correction`` each token's policy term (not the KL's) is multiplied by its
        weight, as TRL does, and the tokens a masking mode drops leave the loss and its normalisation."""
        mask, token_mask = mb.response_mask, mb.token_mask
        if mb.importance is not None:
            mask, weights = mb.loss_mask(), mb.token_weights()
            token_mask = weights if token_mask is None else weights * token_mask
        out = grpo_token_losses(self.policy_token_logps(mb), mb.old_logps, mb.advantages, mask,
                                self.epsilon_low, self.epsilon_high, mb.ref_logps, self.beta,
                                loss_type=self.loss_type, sequence_level=self.sequence_level, delta=self.delta,
                                bias_corrected_kl=self.use_bias_correction_kl,
                                sapo_temperatures=self.sapo_temperatures, vespo_shapes=self.vespo_shapes,
                                token_mask=token_mask)
        num_tokens = None
        if self.loss_type in ("dapo", "cispo", "vespo") and self._trainer is not None and self.trainer.world_size > 1:
            # the token mean of the whole update: every rank's gradient is averaged, so divide by the mean count
            num_tokens = self.trainer.strategy.reduce(mask.sum().float(), reduce_op="mean")
        loss = reduce_group_loss(out.losses, mask, self.loss_type, self.sampling.max_new_tokens, num_tokens)
        return loss, self._loss_metrics(out, mask)

    def _loss_metrics(self, out, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = mask.sum().clamp(min=1)

        def fraction(flags):  # of response tokens, or of sequences when the ratio is one per sequence
            return flags.any(-1).float().mean() if self.sequence_level else flags.sum() / tokens

        metrics = {}
        if self.loss_type == "cispo":
            metrics["cispo_clip_ratio"] = fraction(out.clipped_high)
        elif self.loss_type == "vespo":
            metrics["vespo/phi_seq_mean"] = out.weights.amax(-1).mean()
        elif self.loss_type != "sapo":
            metrics["clip_ratio/low_mean"] = fraction(out.clipped_low)
            metrics["clip_ratio/high_mean"] = fraction(out.clipped_high)
            metrics["clip_ratio/region_mean"] = fraction(out.clipped_low | out.clipped_high)
        if out.kl is not None:
            metrics["kl"] = out.kl.sum() / tokens
        return metrics

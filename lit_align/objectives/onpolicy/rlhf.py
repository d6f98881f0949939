"""RLHF with PPO (PAPER Eq. 1, section 3): per-token KL-penalised rewards, a value head, GAE, clipped updates.

The value head (``V(s_t)``, one scalar per position) is a linear layer on the policy's last hidden state: it
shares the policy's backbone (and its LoRA adapters), costs no second model in memory, and its value loss
(scaled by ``vf_coef``) also trains that backbone. It starts at zero (V = 0 everywhere), is saved in checkpoints
with the objective, and is not part of the exported policy. (The TL;DR code the paper built on trains a separate
value model initialised from the reward model instead: twice the memory of the policy.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lit_align.models.chunked_head import CompletionScores
from lit_align.models.logprobs import masked_mean
from lit_align.losses import (
    generalized_advantages,
    masked_whiten,
    ppo_policy_loss,
    ppo_token_rewards,
    ppo_value_loss,
    whitening_scale,
)
from lit_align.generation.rollout import Rollout
from lit_align.objectives.onpolicy.base import OnPolicyObjective
from lit_align.objectives.onpolicy.held import detached
from lit_align.objectives.onpolicy.experience import Experience


@dataclass(kw_only=True)
class PPOExperience(Experience):
    """What PPO adds to the experience, per token (N, T-1) unless said otherwise.

    Attributes:
        values: the value head's V(s_t) at sampling time, zero off the response.
        rewards: the per-token rewards (KL penalty, extra rewards, the score at the last token), whitened if asked.
        advantages: GAE advantages (whitened if asked).
        returns: the value targets, ``advantages + values`` before whitening.
        non_score_rewards: the per-token KL (and entropy) rewards without the score.
        advantage_scale: (N,) the batch's factor by which whitening scaled the advantages (the same on every row).
    """

    values: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    non_score_rewards: torch.Tensor
    advantage_scale: torch.Tensor


class RLHF(OnPolicyObjective):
    """PPO on ``R(x, a) - beta KL(pi || pi_0)``: the per-token reward is ``-kl_coef * KL_t`` at every response token
    plus the reward model's score at the last one (``missing_eos_penalty`` replaces the score of a response that
    did not end). ``epochs_per_batch`` PPO epochs of ``mini_batches`` updates each are taken per sampled batch.

    Every log-prob (current policy, sampling-time policy, reference) is taken at ``sampling.temperature``, so
    the ratio is one of sampling distributions and the k1 penalty estimates KL(pi_T || pi0_T): the expected
    update is the gradient of the objective of the tempered policy pi_T, the one generation draws from.
    Greedy sampling (temperature 0) is refused.

    Args:
        kl_coef: beta, the weight of the per-token KL penalty towards the reference. PAPER TL;DR: 0.05.
        kl_estimator: Per-token KL estimate in the reward: ``k1`` = ln pi_old - ln pi_0, or ``k3`` (non-negative).
            Default ``k1`` (PAPER, and TRL's default).
        discount: Discount factor of the returns. PAPER: 1.
        gae_lambda: GAE lambda. PAPER: 0.95.
        clip_range: PPO ratio clip epsilon. PAPER: 0.2.
        value_clip_range: How far a value may move from its sampling-time value before its loss is clipped.
            PAPER: 0.2.
        vf_coef: Weight of the value loss. PAPER: 0.1.
        whiten_rewards: Scale the per-token rewards of each batch to unit variance (mean kept). PAPER: on.
        whiten_advantages: Normalise the advantages of each batch to zero mean and unit variance. PAPER: on.
        missing_eos_penalty: Score of a response without EOS within ``max_new_tokens`` (``None`` keeps the reward
            model's score). PAPER: -1.
        epochs_per_batch: PPO epochs over each sampled batch. PAPER: 4.
    """

    episodes_refusal = ("its value head bootstraps at every token, through the tool and environment tokens the "
                        "policy did not choose; use GRPO or RLOO")

    def __init__(
        self,
        kl_coef: float = 0.05,
        kl_estimator: Literal["k1", "k3"] = "k1",
        discount: float = 1.0,
        gae_lambda: float = 0.95,
        clip_range: float = 0.2,
        value_clip_range: float = 0.2,
        vf_coef: float = 0.1,
        whiten_rewards: bool = True,
        whiten_advantages: bool = True,
        missing_eos_penalty: float | None = -1.0,
        epochs_per_batch: int = 4,
        **kwargs,
    ) -> None:
        if kl_coef < 0 or vf_coef < 0:
            raise ValueError(f"kl_coef and vf_coef must be non-negative, got {kl_coef}, {vf_coef}")
        if not (0 <= discount <= 1 and 0 <= gae_lambda <= 1):
            raise ValueError(f"discount and gae_lambda must be in [0, 1], got {discount}, {gae_lambda}")
        if clip_range <= 0 or value_clip_range <= 0:
            raise ValueError(f"clip ranges must be positive, got {clip_range}, {value_clip_range}")
        if kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be k1 or k3, got {kl_estimator!r}")
        super().__init__(missing_eos_penalty=missing_eos_penalty, epochs_per_batch=epochs_per_batch, **kwargs)
        self.sampling.require_distribution(type(self).__name__)
        self.kl_coef = kl_coef
        self.kl_estimator = kl_estimator
        self.discount = discount
        self.gae_lambda = gae_lambda
        self.clip_range = clip_range
        self.value_clip_range = value_clip_range
        self.vf_coef = vf_coef
        self.whiten_rewards = whiten_rewards
        self.whiten_advantages = whiten_advantages
        self.value_head = nn.Linear(self.policy.base_model.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    # -- hooks for ReverseKL -----------------------------------------------------------------------------------

    @property
    def entropy_reward_coef(self) -> float:
        """gamma of the per-token reward ``-gamma * ln pi_old`` (0 for RLHF)."""
        return 0.0

    @property
    def needs_entropy(self) -> bool:
        """Whether the hooks below read the exact token entropies (``scores.entropy``); none for RLHF."""
        return False

    def extra_token_rewards(self, scores: CompletionScores, response_mask: torch.Tensor) -> torch.Tensor | None:
        """Per-token rewards (n, T-1) added to those of ``ppo_token_rewards`` before whitening, from the
        sampling-time scores of the rows (``forward_with_values``); none for RLHF."""
        return None

    def extra_loss(self, scores: CompletionScores,
                   mb: PPOExperience) -> tuple[torch.Tensor | float, dict[str, torch.Tensor]]:
        """An additional term of the mini-batch loss (none for RLHF). ``mb.advantage_scale`` is the factor by
        which whitening scaled the advantages: a term that is part of the objective must be scaled alike."""
        return 0.0, {}

    # -- forward -----------------------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.policy.trainable_parameters() + list(self.value_head.parameters())

    def forward_with_values(self, rollout: Rollout) -> tuple[CompletionScores, torch.Tensor]:
        """The policy's scores of the rollout's rows at the temperature they were sampled at (per-token log-probs
        (n, T-1), and entropies when ``needs_entropy``) and the values (n, T-1), from one forward pass
        (``rollout_token_scores``): the value head reads the final hidden states the LM head is applied to (in
        chunks: the logits are never materialised whole).

        Column t of the values is V(s_t), the value of the state in which token t+1 is chosen, aligned with the
        log-probs of ``completion_token_logprobs``.
        """
        held = self._held.take(rollout.input_ids.shape[0])
        if held is not None:  # the sampling-time forward of these rows, kept for the first update
            return held
        scores = self.rollout_token_scores(rollout, entropy=self.needs_entropy, hidden=True)
        hidden = scores.hidden[:, :-1]  # (n, T-1, H)
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return scores, values

    def update_forward(self, rollout: Rollout) -> tuple[CompletionScores, torch.Tensor]:
        scores, values = self.forward_with_values(rollout)
        return dataclasses.replace(scores, hidden=None), values  # the values are read from the hidden states

    # -- experience --------------------------------------------------------------------------------------------

    def policy_experience(self, rollout: Rollout, scores: torch.Tensor,
                          ref_logps: torch.Tensor | None) -> PPOExperience:
        # One forward per chunk gives the sampling-time log-probs, the values and any extra per-token rewards;
        # with one mini-batch it is one forward, kept with its graph for the first update (HeldForward).
        logps, values, extras = [], [], []
        for chunk in self.experience_chunks(rollout):
            if self._held.armed:
                with torch.enable_grad():
                    out = detached(self._held.keep(self.forward_with_values(chunk)))
            else:
                out = self.forward_with_values(chunk)
            logps.append(out[0].logps)
            values.append(out[1])
            extras.append(self.extra_token_rewards(out[0], chunk.trained_mask[:, 1:].bool()))
        mask = rollout.trained_mask[:, 1:].bool()
        old_logps, values = torch.cat(logps), torch.cat(values).masked_fill(~mask, 0.0)  # (N, T-1)
        extra = None if extras[0] is None else torch.cat(extras).masked_fill(~mask, 0.0)
        return self.ppo_experience(Experience(rollout=rollout, scores=scores, old_logps=old_logps,
                                              response_mask=mask, ref_logps=ref_logps), values, extra)

    def ppo_experience(self, exp: Experience, values: torch.Tensor,
                       extra_rewards: torch.Tensor | None) -> PPOExperience:
        """The per-token rewards, GAE advantages and returns of a batch (whitened as configured)."""
        mask = exp.response_mask
        parts = ppo_token_rewards(exp.scores, exp.old_logps, exp.ref_logps, mask, self.kl_coef,
                                  self.entropy_reward_coef, self.kl_estimator)
        rewards = parts.rewards
        if extra_rewards is not None:
            rewards = rewards + extra_rewards
        # Whitening multiplies the advantages by a batch constant (a shift adds no expected gradient); a loss
        # term outside the advantages (ReverseKL's entropy bonus) is multiplied by it too, or its weight changes.
        scale = torch.ones((), device=rewards.device)
        if self.whiten_rewards:
            scale = scale * whitening_scale(rewards, mask)
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = generalized_advantages(rewards, values, mask, self.discount, self.gae_lambda)
        if self.whiten_advantages:
            scale = scale * whitening_scale(advantages, mask)
            advantages = masked_whiten(advantages, mask)
        return exp.extend(PPOExperience, values=values, rewards=rewards, advantages=advantages, returns=returns,
                          non_score_rewards=parts.non_score_rewards, advantage_scale=scale.expand(mask.shape[0]))

    def experience_metrics(self, exp: PPOExperience) -> dict[str, torch.Tensor]:
        metrics = super().experience_metrics(exp)
        non_score = exp.non_score_rewards.sum(-1)  # (N,) sum of the per-token KL (and entropy) rewards
        metrics["objective/non_score_reward"] = non_score
        metrics["objective/rlhf_reward"] = exp.scores + non_score
        return metrics

    # -- loss --------------------------------------------------------------------------------------------------

    def experience_loss(self, mb: PPOExperience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = mb.response_mask
        scores, values = self.forward_with_values(mb.rollout)
        policy = ppo_policy_loss(scores.logps, mb.old_logps, mb.advantages, mask, self.clip_range)
        value = ppo_value_loss(values, mb.values, mb.returns, mask, self.value_clip_range)
        weights = mb.token_weights()  # the mismatch correction of each token's policy term (None: none)
        policy_terms = policy.losses if weights is None else policy.losses * weights
        # token-weighted over the mini-batch, as the per-token rewards define the objective
        policy_loss, value_loss = masked_mean(policy_terms, mb.loss_mask()), masked_mean(value.losses, mask)
        extra, extra_metrics = self.extra_loss(scores, mb)
        loss = policy_loss + self.vf_coef * value_loss + extra
        metrics = {
            "loss/policy": policy_loss.detach(),
            "loss/value": value_loss.detach(),
            # one entry per response token: the logged means are token-weighted
            "policy/clipfrac": policy.clipped[mask],
            "policy/approxkl": policy.approx_kl[mask],
            "val/clipfrac": value.clipped[mask],
            **extra_metrics,
        }
        return loss, metrics

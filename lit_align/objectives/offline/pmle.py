"""Preference MLE (PAPER 2a, Eqs. 4-5): the tilted sigmoid loss on offline pairs, plus a KL term on fresh samples."""

from __future__ import annotations

from typing import Literal

import torch

from lit_align.losses import pmle_loss, sampled_kl_surrogate, token_kl_surrogate
from lit_align.objectives.base import Stage
from lit_align.objectives.offline.base import OfflinePairObjective
from lit_align.generation.rollout import SamplingConfig

KLEstimator = Literal["loo", "token_full"]


class PMLE(OfflinePairObjective):
    """``-ln s(gamma * (ln pi(a+) - ln pi(a-)))`` on the data pairs ``+ beta * KL(pi || pi0)``.

    There is no reference inside the sigmoid: the preference model is the gamma-tilted policy itself, so with
    ``beta = 0`` (the setting of the paper's theory) no reference model is needed or loaded. With ``beta > 0``,
    every training step also samples ``num_kl_samples`` responses per prompt of the batch from the current
    policy (no gradient), scores them under policy (with gradient) and reference (without), and adds ``beta``
    times the KL estimate as a surrogate whose gradient is that of the KL (see ``kl_estimator``). The KL term is
    a training-time regulariser: validation reports the preference loss.

    Logged besides the pair metrics (rewards are ``gamma * ln pi``): ``loss/preference``, and with ``beta > 0``
    ``objective/kl`` (the estimate of KL(pi || pi0) on the samples) and ``completions/mean_length``.

    The KL term is that of the distribution the samples are drawn from: policy and reference logits are both
    divided by ``sampling.temperature``, so the term is ``beta * KL(pi_T || pi0_T)`` and both estimators are
    unbiased for it (and its gradient) at any temperature > 0 without top-p/top-k truncation (``SamplingConfig``).
    At T = 1 it is KL(pi || pi0) itself; the paper's T = 0.1 regularises the sharpened policy.

    Args:
        gamma: Tilt of the preference model ``P(a > b) = s(gamma * (ln pi(a) - ln pi(b)))``. PAPER TL;DR: 1e-2
            (chat: 5e-3).
        beta: Weight of KL(pi || pi0). 0 gives the reference-free loss and needs ``reference: none``; above 0
            the policy needs a live reference (``copy`` or ``lora``). PAPER TL;DR: 1e-5 (chat: 0).
        kl_estimator: ``loo`` (PAPER 2a default): score-function surrogate with a leave-one-out baseline over the
            samples of a prompt (needs ``num_kl_samples >= 2``). ``token_full``: the exact KL over the vocabulary
            at every sampled position, plus the score-function term for the positions still to come.
        num_kl_samples: Responses sampled per prompt for the KL term. PAPER 2a default: 2.
        sampling: How the KL samples are drawn (temperature > 0). PAPER TL;DR: temperature 0.1, 53 new tokens.
        learning_rate: Peak learning rate of the default AdamW. PAPER TL;DR: 1e-6 (chat: 3e-7).
    """

    uses_reference_logps = False  # no reference inside the sigmoid: the data rows are never scored under pi_0

    @classmethod
    def reference_need(cls, settings):
        return "samples" if settings["beta"] > 0 else None  # the KL term scores fresh samples under pi_0

    @classmethod
    def reference_owner(cls, settings):
        return "PMLE with beta > 0"

    def __init__(
        self,
        gamma: float = 0.01,
        beta: float = 1e-5,
        kl_estimator: KLEstimator = "loo",
        num_kl_samples: int = 2,
        sampling: SamplingConfig = SamplingConfig(max_new_tokens=53, temperature=0.1),
        learning_rate: float = 1e-6,
        **kwargs,
    ) -> None:
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        if kl_estimator not in ("loo", "token_full"):
            raise ValueError(f"kl_estimator must be loo or token_full, got {kl_estimator!r}")
        if num_kl_samples < (2 if kl_estimator == "loo" else 1):
            raise ValueError(f"kl_estimator={kl_estimator} needs more samples per prompt, got {num_kl_samples}")
        if beta > 0:
            sampling.require_distribution("PMLE with beta > 0")
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.gamma = gamma
        self.beta = beta
        self.kl_estimator = kl_estimator
        self.num_kl_samples = num_kl_samples
        self.sampling = sampling

    def pair_loss(self, chosen, rejected, batch):
        return pmle_loss(chosen.policy, rejected.policy, self.gamma)

    def compute_loss(self, batch: dict[str, torch.Tensor], stage: Stage):
        loss, metrics = super().compute_loss(batch, stage)
        metrics["loss/preference"] = metrics["loss"]
        if self.beta == 0 or stage != "train":
            return loss, metrics
        surrogate, kl, lengths = self.kl_term(batch["prompt_ids"], batch["prompt_mask"])
        per_prompt = surrogate.view(-1, self.num_kl_samples).mean(-1)  # (B,): its value is the KL estimate
        metrics["loss"] = metrics["loss"] + self.beta * per_prompt.detach()
        metrics["objective/kl"] = kl
        metrics["completions/mean_length"] = lengths.float()
        return loss + self.beta * per_prompt.mean(), metrics

    def kl_term(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample ``num_kl_samples`` responses per prompt from the current weights and estimate KL(pi || pi0).

        Returns (surrogate (N,) whose gradient is that of the KL, KL estimate (N,) detached, lengths (N,)).
        """
        rollout = self.policy.generate(prompt_ids, prompt_mask, self.sampling, self.num_kl_samples)
        ids, attention, completion = rollout.input_ids, rollout.attention_mask, rollout.completion_mask
        temperature = self.sampling.temperature  # score the distribution the samples came from
        # (N, T-1) each, policy with gradient, pi_0 without; the LM head in chunks, the logits never whole
        if self.kl_estimator == "loo":
            # pi_0's no-grad forward first, before the policy's keeps activations for the backward
            ref_token_logps, _ = self.policy.completion_logps(ids, attention, completion, temperature, reference=True)
            token_logps, _ = self.policy.completion_logps(ids, attention, completion, temperature)
            surrogate, kl = sampled_kl_surrogate(token_logps.sum(-1), ref_token_logps.sum(-1), self.num_kl_samples)
        else:
            scores = self.policy.completion_scores(ids, attention, completion, temperature, kl=True)
            # scores.kl: KL(pi_T || pi0_T) at the state before each response token
            surrogate, kl = token_kl_surrogate(scores.kl, scores.logps, scores.mask)
        return surrogate, kl, rollout.lengths

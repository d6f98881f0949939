"""KL to the reference and entropy, measured on the policy's own samples while it trains.

Offline objectives (DPO, IPO, PMLE) never see the policy's own samples, so nothing in their loss says how far
the policy has moved from pi_0 or how peaked it has become; these monitors measure it on a fixed prompt set.
"""

from __future__ import annotations

import lightning as L
import torch

from lit_align.callbacks.probe import PolicyProbe, Totals, scored_rollout
from lit_align.data.formats import Example
from lit_align.generation.rollout import SamplingConfig


class KLMonitor(PolicyProbe):
    """KL(pi || pi_0) of the responses to a fixed prompt set, estimated on the policy's own samples.

    Logs, averaged over all samples (every rank):

    - ``{prefix}/kl_k1``: ``r = ln pi(y|x) - ln pi_0(y|x)`` (unbiased, high variance, can be negative);
    - ``{prefix}/kl_k3``: ``exp(-r) - 1 + r`` (unbiased, always >= 0, lower variance near pi_0);
    - ``{prefix}/kl_token``: the exact per-token KL over the vocabulary summed along each sample,
      ``sum_t KL(pi(.|s_t) || pi_0(.|s_t))`` (unbiased and the lowest variance of the three).

    All three estimate the KL of the distribution of responses truncated at ``max_new_tokens``, and of the
    distribution the monitor samples from: policy and reference are both scored at ``sampling.temperature``
    (default 1, the policy itself: KL(pi || pi_0); at T it is KL(pi_T || pi0_T)). The policy needs a live
    reference (``reference: copy`` or ``lora``); with a cached or no reference the monitor does nothing.

    Args:
        every_n_steps: Measure every this many optimizer steps (and once before the first).
        num_prompts: Prompts of the fixed probe set.
        num_samples: Responses sampled per prompt.
        sampling: How responses are sampled and scored (temperature > 0; default: temperature 1, 16 new tokens).
        prefix: Metric name prefix.
    """

    def __init__(self, every_n_steps: int = 50, num_prompts: int = 16, num_samples: int = 4,
                 sampling: SamplingConfig | None = None, prefix: str = "monitor") -> None:
        super().__init__(every_n_steps, num_prompts, num_samples, sampling, prefix)
        self.sampling.require_distribution(type(self).__name__)
        self._warned = False

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, examples: list[Example]) -> Totals:
        reference = pl_module.policy.reference
        if not reference.live:
            if not self._warned:
                self.warn(f"KLMonitor scores samples under a live reference model; reference={reference.name!r} "
                          "cannot (set it to copy or lora)")
                self._warned = True
            return {}
        rollout = self.sample(trainer, pl_module, examples)
        # scored at the temperature of the distribution the rollout was drawn from (rollout.sampling)
        scores = scored_rollout(pl_module, rollout, with_reference=True)
        log_ratio = (scores.logps - scores.reference_logps).sum(-1)  # (N,)
        per_token = (scores.kl * scores.mask).sum(-1)  # (N,)
        count = torch.tensor(float(log_ratio.numel()), device=log_ratio.device)
        return {
            "kl_k1": (log_ratio.sum(), count),
            "kl_k3": ((torch.expm1(-log_ratio) + log_ratio).sum(), count),
            "kl_token": (per_token.sum(), count),
        }


class EntropyMonitor(PolicyProbe):
    """Token entropy of the policy along its own samples and along the data's completions.

    Logs ``{prefix}/entropy`` (mean next-token entropy over sampled response tokens), ``{prefix}/sequence_entropy``
    (the entropy summed along each sample: an unbiased estimate of the entropy of the response distribution)
    and, when the probe examples have completions, ``{prefix}/entropy_data`` (mean next-token entropy along the
    data's chosen completions). A falling ``entropy`` with a steady ``entropy_data`` is the policy becoming
    peaked on its own outputs. Every entropy is of the distribution the monitor samples from,
    ``softmax(logits / sampling.temperature)`` (default temperature 1: the policy itself).

    Args:
        every_n_steps: Measure every this many optimizer steps (and once before the first).
        num_prompts: Prompts of the fixed probe set.
        num_samples: Responses sampled per prompt.
        sampling: How responses are sampled and scored (temperature > 0; default: temperature 1, 16 new tokens).
        data_completions: Also measure along the data's completions.
        prefix: Metric name prefix.
    """

    def __init__(self, every_n_steps: int = 50, num_prompts: int = 16, num_samples: int = 4,
                 sampling: SamplingConfig | None = None, data_completions: bool = True,
                 prefix: str = "monitor") -> None:
        super().__init__(every_n_steps, num_prompts, num_samples, sampling, prefix)
        self.sampling.require_distribution(type(self).__name__)
        self.data_completions = data_completions

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, examples: list[Example]) -> Totals:
        rollout = self.sample(trainer, pl_module, examples)
        scores = scored_rollout(pl_module, rollout, with_reference=False, entropy=True)
        mask = scores.mask
        entropy = scores.entropy * mask  # (N, T-1)
        totals = {
            "entropy": (entropy.sum(), mask.sum()),
            "sequence_entropy": (entropy.sum(), torch.tensor(float(mask.shape[0]), device=mask.device)),
        }
        batch = self.completion_batch(trainer, pl_module, examples) if self.data_completions else None
        if batch is not None:
            data = pl_module.policy.completion_scores(batch["input_ids"], batch["attention_mask"],
                                                      batch["completion_mask"], rollout.sampling.temperature,
                                                      entropy=True)
            data_mask = data.mask
            data_entropy = data.entropy * data_mask
            totals["entropy_data"] = (data_entropy.sum(), data_mask.sum())
        return totals

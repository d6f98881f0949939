"""Objectives that regress the policy on two responses per prompt scored by a reward model (distillation, REBEL).

Both PAPER 2c (preference distillation) and PAPER 3 (REBEL) take two responses a1, a2 to the same prompt, their
rewards and the policy's log-probs, and fit a function of ``ln pi(a1) - ln pi(a2)`` to ``r1 - r2``. This class
owns everything they share: where the pair comes from, the KL-shaped rewards, splitting the rows into pairs.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from lit_align.data.sources import DataError
from lit_align.errors import UserError
from lit_align.generation.rollout import Rollout
from lit_align.objectives.onpolicy.base import OnPolicyObjective
from lit_align.objectives.onpolicy.experience import Experience

PairSource = Literal["on_policy", "reference", "dataset"]


class SampledPairObjective(OnPolicyObjective):
    """Two responses per prompt; row ``2i`` is a1 and row ``2i + 1`` is a2 of prompt i.

    Log-probs (``ln pi``, ``ln pi_t``, ``ln pi_0``) are of the tempered policies at ``sampling.temperature``, the
    distribution the pairs are drawn from; greedy sampling is refused. ``importance_correction`` is refused: the
    losses regress a function of the pair's log-probs onto its rewards, with no policy-gradient term to weight.

    Args:
        pairs: Where the two responses come from: ``on_policy`` (sampled from the current policy pi_t at every
            batch; PAPER TL;DR, the default), ``reference`` (sampled from the reference pi_0: the frozen copy, or
            the base model with the LoRA adapters disabled) or ``dataset`` (the data's own two completions, used
            unlabelled).
    """

    episodes_refusal = ("its loss compares two single responses to a prompt (of the policy, pi_0 or the data), not "
                        "two episodes; use GRPO or RLOO")

    def __init__(self, pairs: PairSource = "on_policy", **kwargs: Any) -> None:
        if pairs not in ("on_policy", "reference", "dataset"):
            raise ValueError(f"pairs must be on_policy, reference or dataset; got {pairs!r}")
        if kwargs.setdefault("num_samples", 2) != 2:
            raise ValueError(f"{type(self).__name__} compares two responses per prompt: num_samples must be 2")
        if kwargs.get("importance_correction") is not None:
            raise UserError(f"{type(self).__name__}: importance_correction weights policy-gradient terms, and this "
                            "loss has none (it fits the pair's log-probs to its rewards): set it to null")
        super().__init__(**kwargs)
        self.sampling.require_distribution(type(self).__name__)  # ln pi_t of greedy samples is undefined
        self.pairs = pairs

    # -- where the pair comes from ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample_responses(self, batch: dict[str, torch.Tensor]) -> Rollout:
        if self.pairs == "dataset":
            return self.dataset_pairs(batch)
        if self.pairs == "reference":
            return self.reference_samples(batch)
        return super().sample_responses(batch)

    def reference_samples(self, batch: dict[str, torch.Tensor]) -> Rollout:
        """Two responses per prompt from pi_0."""
        return self.generate(batch, from_reference=True)

    def dataset_pairs(self, batch: dict[str, torch.Tensor]) -> Rollout:
        """The batch's two completions of every prompt, interleaved so that rows 2i, 2i+1 answer prompt i. They
        are scored as samples of ``sampling`` (its temperature), the distribution the objective models."""
        num_prompts = batch["index"].numel()
        if "input_ids" not in batch or batch["input_ids"].shape[0] != 2 * num_prompts:
            raise DataError("pairs=dataset needs rows with two completions (chosen and rejected columns) in the "
                            "prompt data")
        order = torch.stack([torch.arange(num_prompts), torch.arange(num_prompts) + num_prompts], 1).reshape(-1)
        order = order.to(batch["input_ids"].device)  # (2B,) c0, r0, c1, r1, ...
        ids, attention, completion = (batch[k][order] for k in ("input_ids", "attention_mask", "completion_mask"))
        last = (completion * torch.arange(completion.shape[1], device=order.device)).argmax(-1)
        stop = torch.as_tensor(self.policy.stop_token_ids, device=order.device)
        ended = torch.isin(ids.gather(1, last[:, None]).squeeze(1), stop)
        prompt_index = torch.arange(2 * num_prompts, device=order.device) // 2
        prompt_length = int(completion.argmax(-1).min()) if completion.any() else ids.shape[1]
        return Rollout(ids, attention, completion, prompt_length, ended, prompt_index, sampling=self.sampling,
                       prompt_messages=batch.get("prompt_messages"), version=self.global_step)

    # -- the pair loss ---------------------------------------------------------------------------------------

    def shaped_rewards(self, mb: Experience, kl_coef: float) -> torch.Tensor:
        """``r = R(x, a) - kl_coef * (ln pi_t(a|x) - ln pi_0(a|x))`` per row (N,), from the sampling-time log-probs."""
        return mb.scores - kl_coef * (mb.old_logps.sum(-1) - mb.ref_logps.sum(-1))

    def pair_loss(self, mb: Experience, logps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair losses (n/2,) and diagnostics from the current ``logps`` (n,) of the rows of ``mb``."""
        raise NotImplementedError

    def experience_loss(self, mb: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps = self.policy_token_logps(mb).sum(-1)  # (n,) ln pi(a|x), rows alternate a1, a2
        losses, metrics = self.pair_loss(mb, logps)
        return losses.mean(), metrics


def first_second(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split interleaved rows (2n, ...) into the a1 rows and the a2 rows (n, ...)."""
    return values[0::2], values[1::2]

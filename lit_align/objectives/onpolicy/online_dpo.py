"""Online DPO (Guo et al. 2024, "Direct language model alignment from online AI feedback"): the DPO loss on pairs
sampled from the current policy, the preference given by a reward model or a judge."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lit_align.evaluation.judges import Judge
from lit_align.losses import dpo_loss, ipo_loss
from lit_align.objectives.metrics import preference_metrics
from lit_align.objectives.onpolicy.experience import Experience
from lit_align.objectives.onpolicy.sampled_pairs import SampledPairObjective, first_second


class OnlineDPO(SampledPairObjective):
    """DPO (``dpo_loss``) on two responses per prompt sampled at every batch: the one with the higher score is
    chosen (the first on a tie). The score is the reward model's, or, with a ``judge``, the judge's probability
    that this response beats the other one (``Judge.compare_batch(prompts, first, second)``), in which case no
    reward model is loaded or trained. Reference log-probs are the live pi_0's (``copy`` or ``lora``), every
    log-prob at ``sampling.temperature`` (the distribution the pair is drawn from).

    Logged besides the on-policy metrics: ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies`` (``beta * (ln pi - ln pi0)``), ``logps/chosen``, ``logps/rejected`` and
    ``objective/scores_margin`` (chosen score minus rejected score).

    Args:
        beta: Strength of the implicit KL regularisation towards the reference (IPO's tau with ``loss_type:
            ipo``). TRL's ``OnlineDPOConfig`` default: 0.1.
        loss_type: ``sigmoid`` (DPO, TRL's default) or ``ipo``: ``(h - 1/(2 beta))^2`` on the summed log-ratio
            margin ``h`` (TRL's online IPO; ``ipo_loss``).
        judge: Decides which response of each pair is preferred, instead of the reward model, e.g. a
            ``lit_align.evaluation.judges.RewardModelJudge`` or your own ``Judge`` subclass.
        epochs_per_batch: Optimisation passes over each sampled batch. TRL: 1 (one update per generation).
    """

    def __init__(self, beta: float = 0.1, loss_type: Literal["sigmoid", "ipo"] = "sigmoid", judge: Judge | None = None,
                 epochs_per_batch: int = 1, **kwargs: Any) -> None:
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if loss_type not in ("sigmoid", "ipo"):
            raise ValueError(f"loss_type must be sigmoid or ipo, got {loss_type!r}")
        super().__init__(epochs_per_batch=epochs_per_batch, **kwargs)
        self.hparams.pop("judge", None)  # a judge may hold a model: rebuilt from the config, never pickled
        self.beta = beta
        self.loss_type = loss_type
        self.judge = judge
        if judge is not None:
            self.attach_reward_model(judge)  # the reward dispatch's judge kind (lit_align.rewards.dispatch)

    # -- the preference: a reward model's scores, or a judge's verdicts ----------------------------------------

    def setup(self, stage: str) -> None:
        if self.judge is None:
            super().setup(stage)  # the reward model (trained by the reward stage when none is given)

    # -- the loss ----------------------------------------------------------------------------------------------

    def pair_loss(self, mb: Experience, logps: torch.Tensor):
        score1, score2 = first_second(mb.scores)
        first = score1 >= score2  # (n/2,) whether a1 is the chosen response

        def chosen_rejected(values):
            v1, v2 = first_second(values)
            return torch.where(first, v1, v2), torch.where(first, v2, v1)

        chosen, rejected = chosen_rejected(logps)
        ref_chosen, ref_rejected = chosen_rejected(mb.ref_logps.sum(-1))
        loss = dpo_loss if self.loss_type == "sigmoid" else ipo_loss
        out = loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
        return out.losses, {
            **preference_metrics(out),
            "logps/chosen": chosen.detach(),
            "logps/rejected": rejected.detach(),
            "objective/scores_margin": (score1 - score2).abs(),
        }

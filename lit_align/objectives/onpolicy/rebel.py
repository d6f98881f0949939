"""REBEL (PAPER 3, Eq. 10; Gao et al. 2024): regress the change in log-ratio difference onto the reward
difference, on two responses per prompt sampled from the current policy."""

from __future__ import annotations

from typing import Any

from lit_align import losses
from lit_align.objectives.onpolicy.sampled_pairs import SampledPairObjective, first_second


class REBEL(SampledPairObjective):
    """``((ln pi(a1)/pi_t(a1) - ln pi(a2)/pi_t(a2)) - eta (r1 - r2))^2`` with KL-shaped rewards
    ``r = R(x, a) - kl_coef * (ln pi_t(a) - ln pi_0(a))``.

    Args:
        eta: Scale of the reward difference the log-ratio difference is regressed onto (PAPER: 1.0).
        kl_coef: Strength of the KL shaping of the rewards towards the reference (PAPER: 0.05).
        missing_eos_penalty: Reward of a response without EOS (PAPER: -1).
        epochs_per_batch: Optimisation passes over each sampled batch (PAPER: 4).
    """

    def __init__(
        self,
        eta: float = 1.0,
        kl_coef: float = 0.05,
        missing_eos_penalty: float | None = -1.0,
        epochs_per_batch: int = 4,
        **kwargs: Any,
    ) -> None:
        if eta <= 0 or kl_coef < 0:
            raise ValueError(f"need eta > 0 and kl_coef >= 0, got eta={eta}, kl_coef={kl_coef}")
        super().__init__(missing_eos_penalty=missing_eos_penalty, epochs_per_batch=epochs_per_batch, **kwargs)
        self.eta = eta
        self.kl_coef = kl_coef

    def pair_loss(self, mb, logps):
        r1, r2 = first_second(self.shaped_rewards(mb, self.kl_coef))
        l1, l2 = first_second(logps)
        old1, old2 = first_second(mb.old_logps.sum(-1))
        out = losses.rebel_loss(l1, l2, old1, old2, r1, r2, self.eta)
        return out.losses, {"rebel/log_ratio_margin": out.predictions, "rebel/reward_margin": out.targets}

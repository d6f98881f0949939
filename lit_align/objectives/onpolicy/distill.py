"""Preference distillation (PAPER 2c, Eqs. 11-12, Algorithm 1): match the reward model's preference between two
responses with the policy's own tilted preference ``s(gamma * (ln pi(a1) - ln pi(a2)))``."""

from __future__ import annotations

from typing import Any, Literal

import torch

from lit_align import losses
from lit_align.objectives.onpolicy.sampled_pairs import SampledPairObjective, first_second


class PreferenceDistillation(SampledPairObjective):
    """Bernoulli KL between the teacher ``s(r1 - r2)`` and the student ``s(gamma * (ln pi(a1) - ln pi(a2)))``.

    Each batch samples two responses per prompt (``pairs``), scores them with the frozen reward model and takes
    ``epochs_per_batch`` optimisation passes over them. The KL regulariser towards pi_0 enters in one of two ways
    (``beta_mode``): ``shaped`` subtracts ``beta * (ln pi_t(a) - ln pi_0(a))`` from each reward before the
    teacher's sigmoid, as REBEL does; ``explicit`` adds ``beta * KL(pi || pi_0)`` estimated on the sampled pairs
    with the score-function surrogate of PAPER 2a (needs ``pairs=on_policy``). The pairs come from pi_t, the
    weights at sampling time, while the later passes over the batch move pi away from it: the explicit KL term
    is importance-weighted by ``pi(a) / pi_t(a)`` (exactly 1 in the first pass), so its value and gradient stay
    those of KL(pi || pi_0) at the current weights.

    Args:
        gamma: Tilt of the student's preference model. PAPER TL;DR: 0.1.
        beta: Strength of the KL regularisation towards the reference (0 disables it). PAPER TL;DR: 0.05.
        beta_mode: ``shaped`` (PAPER 2c default, as the REBEL code the paper built on) or ``explicit``.
        epochs_per_batch: Optimisation passes over each sampled batch. PAPER TL;DR: 4.
    """

    def __init__(
        self,
        gamma: float = 0.1,
        beta: float = 0.05,
        beta_mode: Literal["shaped", "explicit"] = "shaped",
        epochs_per_batch: int = 4,
        **kwargs: Any,
    ) -> None:
        if gamma <= 0 or beta < 0:
            raise ValueError(f"need gamma > 0 and beta >= 0, got gamma={gamma}, beta={beta}")
        if beta_mode not in ("shaped", "explicit"):
            raise ValueError(f"beta_mode must be shaped or explicit, got {beta_mode!r}")
        if beta_mode == "explicit" and beta > 0 and kwargs.get("pairs", "on_policy") != "on_policy":
            raise ValueError("beta_mode=explicit estimates KL(pi || pi_0) on samples of pi: it needs pairs=on_policy")
        super().__init__(epochs_per_batch=epochs_per_batch, **kwargs)
        self.gamma = gamma
        self.beta = beta
        self.beta_mode = beta_mode

    def pair_loss(self, mb, logps):
        shaping = self.beta if self.beta_mode == "shaped" else 0.0
        r1, r2 = first_second(self.shaped_rewards(mb, shaping))
        l1, l2 = first_second(logps)
        out = losses.distillation_loss(l1, l2, r1, r2, self.gamma)
        metrics = {
            "distill/kl": out.losses.detach(),
            "distill/teacher_prob": out.teacher_probs,
            "distill/student_prob": out.student_probs,
        }
        pair_losses = out.losses
        if self.beta_mode == "explicit" and self.beta > 0:
            ref = mb.ref_logps.sum(-1)
            # samples of pi_t scored under the current pi: importance-weighted by pi / pi_t
            surrogate, kl = losses.sampled_kl_surrogate(logps, ref, self.num_samples,
                                                        sampling_logps=mb.old_logps.sum(-1))  # (n,) each
            # the KL of a prompt is the mean over its two samples
            pair_losses = pair_losses + self.beta * torch.stack(first_second(surrogate)).mean(0)
            metrics["distill/kl_to_reference"] = kl
        return pair_losses, metrics

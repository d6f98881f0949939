"""Every objective's maths, as pure functions of log-probabilities: this package imports torch only.

``preference``: losses of offline and sampled pairs (DPO, IPO, Bradley-Terry, PMLE, distillation, REBEL, KL
surrogates). ``rl``: the per-token maths of PPO and reverse KL. Everything is importable from ``lit_align.losses``.
"""

from lit_align.losses.preference import (
    PreferenceLoss,
    dpo_loss,
    ipo_loss,
    DistillationLoss,
    distillation_loss,
    RegressionLoss,
    rebel_loss,
    bradley_terry_loss,
    pmle_loss,
    sampled_kl_surrogate,
    token_kl_surrogate,
)
from lit_align.losses.rl import (
    TokenRewards,
    ClippedLoss,
    kl_penalty,
    last_token_index,
    ppo_token_rewards,
    whitening_scale,
    masked_whiten,
    future_entropy_rewards,
    generalized_advantages,
    ppo_policy_loss,
    ppo_value_loss,
)

__all__ = [
    "ClippedLoss",
    "DistillationLoss",
    "PreferenceLoss",
    "RegressionLoss",
    "TokenRewards",
    "bradley_terry_loss",
    "distillation_loss",
    "dpo_loss",
    "future_entropy_rewards",
    "generalized_advantages",
    "ipo_loss",
    "kl_penalty",
    "last_token_index",
    "masked_whiten",
    "pmle_loss",
    "ppo_policy_loss",
    "ppo_token_rewards",
    "ppo_value_loss",
    "rebel_loss",
    "sampled_kl_surrogate",
    "token_kl_surrogate",
    "whitening_scale",
]

"""On-policy objectives: sample, score, update (``base``: ``OnPolicyObjective``), the two-samples-per-prompt base
(``sampled_pairs``) and the thin objectives built on them (preference distillation, REBEL, RLHF with PPO, reverse KL,
RLOO, GRPO, online DPO), with the reward stage that trains a missing reward model first."""

import importlib


def __getattr__(name: str):
    # lit_align.objectives.onpolicy was the module now named lit_align.objectives.onpolicy.base
    return getattr(importlib.import_module("lit_align.objectives.onpolicy.base"), name)

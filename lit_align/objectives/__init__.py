"""Objectives: one LightningModule each, chosen by ``class_path`` (or short name) on the command line."""

from lit_align.objectives.base import AlignmentModule
from lit_align.objectives.distill import PreferenceDistillation
from lit_align.objectives.dpo import DPO, IPO
from lit_align.objectives.onpolicy import OnPolicyObjective
from lit_align.objectives.pairwise import PairwiseObjective
from lit_align.objectives.paired import PairObjective
from lit_align.objectives.pmle import PMLE
from lit_align.objectives.ppo import RLHF
from lit_align.objectives.rebel import REBEL
from lit_align.objectives.reward import RewardModel
from lit_align.objectives.rkl import ReverseKL
from lit_align.objectives.sft import SFT

__all__ = [
    "DPO", "IPO", "REBEL", "AlignmentModule", "OnPolicyObjective", "PMLE", "PairObjective", "PairwiseObjective",
    "PreferenceDistillation", "RLHF", "ReverseKL", "RewardModel", "SFT",
]

"""Objectives: one LightningModule each, chosen by ``class_path`` (or short name) on the command line."""

from lit_align.objectives.base import AlignmentModule
from lit_align.objectives.combined import CombinedPairLoss
from lit_align.objectives.distill import PreferenceDistillation
from lit_align.objectives.dpo import DPO, IPO
from lit_align.objectives.grpo import GRPO
from lit_align.objectives.kto import KTO
from lit_align.objectives.offline import OfflineObjective, OfflinePairObjective, RowLogps
from lit_align.objectives.online_dpo import OnlineDPO
from lit_align.objectives.onpolicy import OnPolicyObjective
from lit_align.objectives.pairwise_length import LDDPO, ORPO, RPO, WPO, LengthNormalizedDPO, SimPO
from lit_align.objectives.pairwise_losses import (
    AOT, APODown, APOZero, BCOPair, DiscoPOP, EXOPair, Hinge, NCAPair, RobustDPO, SPPOHard,
)
from lit_align.objectives.pmle import PMLE
from lit_align.objectives.rlhf import RLHF
from lit_align.objectives.sampled_pairs import SampledPairObjective
from lit_align.objectives.rebel import REBEL
from lit_align.objectives.reward import RewardModeling
from lit_align.objectives.rkl import ReverseKL
from lit_align.objectives.rloo import RLOO
from lit_align.objectives.sft import SFT

__all__ = [
    "DPO", "GRPO", "IPO", "KTO", "RLOO", "REBEL", "AlignmentModule", "OfflineObjective", "OfflinePairObjective", "OnPolicyObjective", "OnlineDPO", "PMLE",
    "PreferenceDistillation", "RLHF", "ReverseKL", "RewardModeling", "RowLogps", "SFT", "SampledPairObjective",
    "AOT", "APODown", "APOZero", "BCOPair", "CombinedPairLoss", "DiscoPOP", "EXOPair", "Hinge", "LDDPO",
    "LengthNormalizedDPO", "NCAPair", "ORPO", "RPO", "RobustDPO", "SPPOHard", "SimPO", "WPO",
]

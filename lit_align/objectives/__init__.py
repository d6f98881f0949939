"""Objectives: one LightningModule each, chosen by ``class_path`` (or short name) on the command line."""

from lit_align.objectives.base import AlignmentModule
from lit_align.objectives.offline.combined import CombinedPairLoss
from lit_align.objectives.onpolicy.distill import PreferenceDistillation
from lit_align.objectives.offline.dpo import DPO, IPO
from lit_align.objectives.onpolicy.grpo import GRPO
from lit_align.objectives.offline.kto import KTO
from lit_align.objectives.offline.base import OfflineObjective, OfflinePairObjective, RowLogps
from lit_align.objectives.onpolicy.online_dpo import OnlineDPO
from lit_align.objectives.onpolicy.base import OnPolicyObjective
from lit_align.objectives.offline.pairwise_length import LDDPO, ORPO, RPO, WPO, LengthNormalizedDPO, SimPO
from lit_align.objectives.offline.pairwise_losses import (
    AOT, APODown, APOZero, BCOPair, DiscoPOP, EXOPair, Hinge, NCAPair, RobustDPO, SPPOHard,
)
from lit_align.objectives.offline.pmle import PMLE
from lit_align.objectives.onpolicy.rlhf import RLHF
from lit_align.objectives.onpolicy.sampled_pairs import SampledPairObjective
from lit_align.objectives.onpolicy.rebel import REBEL
from lit_align.objectives.offline.reward import RewardModeling
from lit_align.objectives.onpolicy.rkl import ReverseKL
from lit_align.objectives.onpolicy.rloo import RLOO
from lit_align.objectives.offline.sft import SFT

__all__ = [
    "DPO", "GRPO", "IPO", "KTO", "RLOO", "REBEL", "AlignmentModule", "OfflineObjective", "OfflinePairObjective", "OnPolicyObjective", "OnlineDPO", "PMLE",
    "PreferenceDistillation", "RLHF", "ReverseKL", "RewardModeling", "RowLogps", "SFT", "SampledPairObjective",
    "AOT", "APODown", "APOZero", "BCOPair", "CombinedPairLoss", "DiscoPOP", "EXOPair", "Hinge", "LDDPO",
    "LengthNormalizedDPO", "NCAPair", "ORPO", "RPO", "RobustDPO", "SPPOHard", "SimPO", "WPO",
]

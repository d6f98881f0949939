"""Objectives: one LightningModule each, chosen by ``class_path`` (or short name) on the command line."""

from lit_align.objectives.base import AlignmentModule
from lit_align.objectives.dpo import DPO, IPO
from lit_align.objectives.pairwise import PairwiseObjective

__all__ = ["DPO", "IPO", "AlignmentModule", "PairwiseObjective"]

"""Evaluation: judges and the win-rate / reward / KL report of ``lit-align evaluate``."""

from lit_align.evaluation.judges import Judge, RewardModelJudge, Verdict
from lit_align.evaluation.llm_judge import LLMJudge
from lit_align.evaluation.report import EvaluationReport

__all__ = ["EvaluationReport", "Judge", "LLMJudge", "RewardModelJudge", "Verdict"]

"""The Trainer of ``lit-align``: Lightning's, plus ``evaluate`` (the ``lit-align evaluate`` subcommand)."""

from __future__ import annotations

from typing import Any

import lightning as L

from lit_align.evaluation.judges import Judge
from lit_align.evaluation.report import EvaluationReport


class AlignTrainer(L.Trainer):
    """``lightning.Trainer`` with an ``evaluate`` method, and the run folder as ``log_dir`` when the first logger
    keeps nothing on disk (MLflow on a database or a server), where Lightning gives None and the saved
    ``config.yaml`` would have no place; everything else is unchanged."""

    @property
    def log_dir(self) -> str | None:
        return super().log_dir or self.default_root_dir

    def evaluate(
        self,
        model: L.LightningModule | None = None,
        dataloaders: Any = None,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        judge: Judge | None = None,
        reference_model: str | None = None,
        reference_dtype: str | None = None,
        output_dir: str | None = None,
        method: str | None = None,
    ) -> dict[str, Any]:
        """Sample the policy on a prompt set and report win rate, reward, KL(pi || pi_0) and length.

        The prompts and reference responses are the data module's prediction set (its validation split when it has
        one); responses are sampled with the ``predictions`` settings (temperature, top-p, max new tokens).

        Args:
            model: The objective holding the policy.
            dataloaders: Prompt batches, instead of a data module.
            datamodule: The data module giving prompts and reference responses.
            ckpt_path: Checkpoint to evaluate (``last``, ``best`` or a path); by default the model as built.
            judge: Compares each response with its reference (``RewardModelJudge``, ``LLMJudge`` or your own).
            reference_model: The pi_0 of the KL column; by default the objective's own reference.
            reference_dtype: Weight dtype of ``reference_model``.
            output_dir: Where ``report.csv``, ``report.md`` and ``samples.jsonl`` go (default:
                ``<default_root_dir>/evaluation``).
            method: The row's name in the report (default: the objective's class name).

        Returns:
            The report's row: win_rate, win_prob, reward, reference_reward, kl, kl_std, length, ended, ...
        """
        report = EvaluationReport(judge, reference_model, reference_dtype, output_dir, method)
        self.callbacks.append(report)
        try:
            self.predict(model, dataloaders, datamodule, return_predictions=False, ckpt_path=ckpt_path)
        finally:
            self.callbacks.remove(report)
        return report.results

"""``lit-align predict``: prompts and the policy's sampled responses, written as JSON lines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from lit_align.generation.records import gather_rows, prediction_records, write_jsonl
from lit_align.generation.rollout import SamplingConfig


class PredictionWriter(BasePredictionWriter):
    """Samples with the given settings in ``predict`` and writes one JSON object per response.

    Each line holds ``index`` (the data row), ``sample`` (its number among that prompt's samples), ``prompt``,
    ``response``, ``ended`` (stopped with EOS), ``length`` (response tokens, EOS included), ``reference`` (the
    data's own response, when the rows have one) and ``sampling`` (the settings used). Every rank keeps its rows;
    at the end rank 0 gathers them, drops the duplicates a distributed sampler adds, sorts them by data row and
    writes the file.

    Args:
        path: Output file; defaults to ``<trainer.default_root_dir>/predictions.jsonl``.
        sampling: How responses are sampled; by default the objective's own ``sampling`` (on-policy objectives),
            else ``SamplingConfig()``.
        num_samples: Responses per prompt.
        enabled: Set to false to sample without writing.
    """

    def __init__(
        self,
        path: str | None = None,
        sampling: SamplingConfig | None = None,
        num_samples: int = 1,
        enabled: bool = True,
    ) -> None:
        super().__init__(write_interval="batch")
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        self.path = path
        self.sampling = sampling
        self.num_samples = num_samples
        self.enabled = enabled
        self._rows: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The module samples in predict_step; these settings reach it here rather than through its __init__,
        # so that any trained objective (offline ones have no sampling settings) can generate.
        pl_module.configure_prediction(self.sampling, self.num_samples)
        self._rows = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if self.enabled:
            self._rows.extend(prediction_records(prediction, pl_module.tokenizer))

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        rows = gather_rows(self._rows, trainer)
        self._rows = []
        if trainer.is_global_zero:
            path = Path(self.path or os.path.join(trainer.default_root_dir, "predictions.jsonl"))
            write_jsonl(path, rows)
            rank_zero_info(f"wrote {len(rows)} sampled responses to {path}")
        trainer.strategy.barrier("prediction_writer")

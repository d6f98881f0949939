"""``lit-align predict``: prompts and the policy's sampled responses, written as JSON lines."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from lit_align.rollout import SamplingConfig


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


def prediction_records(prediction: dict[str, Any], tokenizer) -> list[dict[str, Any]]:
    """One JSON-ready dict per sampled response of a ``predict_step`` output."""
    rollout, batch = prediction["rollout"], prediction["batch"]
    sampling = dataclasses.asdict(prediction["sampling"])
    prompt_ids = rollout.input_ids[:, : rollout.prompt_length].cpu()
    prompt_mask = rollout.attention_mask[:, : rollout.prompt_length].cpu()
    response_ids, response_mask = rollout.response_ids.cpu(), rollout.response_mask.cpu()
    references = reference_texts(batch, tokenizer)
    records = []
    for row in range(rollout.input_ids.shape[0]):
        record = {
            "index": int(prediction["index"][row]),
            "sample": int(prediction["sample"][row]),
            "prompt": prompt_text(prompt_ids[row][prompt_mask[row].bool()].tolist(), tokenizer),
            "response": tokenizer.decode(
                response_ids[row][response_mask[row].bool()].tolist(), skip_special_tokens=True
            ),
            "ended": bool(rollout.ended[row]),
            "length": int(response_mask[row].sum()),
        }
        if references is not None:
            record["reference"] = references[int(rollout.prompt_index[row])]
        record["sampling"] = sampling
        records.append(record)
    return records


def prompt_text(ids: list[int], tokenizer) -> str:
    """The prompt as text that re-tokenises to the same ids: special tokens of a chat template are kept, a leading
    BOS is dropped (tokenizers add their own)."""
    if ids[:1] == [tokenizer.bos_token_id]:
        ids = ids[1:]
    return tokenizer.decode(ids, skip_special_tokens=False)


def reference_texts(batch: dict[str, torch.Tensor], tokenizer) -> list[str] | None:
    """The data's first completion of every example (the chosen / reference response), or None for prompts only."""
    if "completion_mask" not in batch:
        return None
    rows = batch["index"].numel()
    ids, mask = batch["input_ids"][:rows].cpu(), batch["completion_mask"][:rows].cpu().bool()
    return [tokenizer.decode(ids[i][mask[i]].tolist(), skip_special_tokens=True) for i in range(rows)]


def gather_rows(rows: list[dict[str, Any]], trainer: L.Trainer) -> list[dict[str, Any]]:
    """Every rank's rows on every rank, de-duplicated by (index, sample) and sorted."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list[list[dict[str, Any]] | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, rows)
        rows = [r for part in parts for r in (part or [])]
    unique = {(r["index"], r["sample"]): r for r in rows}
    return [unique[key] for key in sorted(unique)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)

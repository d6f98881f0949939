"""Rollout rows as text: the records ``predict`` writes and ``evaluate`` reads, one JSON object per sampled
response, and the JSON-lines file that holds them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lit_align.runs.atomic import atomic_file


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
    """Write through ``lit_align.runs.atomic``: a reader never sees half a file."""
    with atomic_file(path, "w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")

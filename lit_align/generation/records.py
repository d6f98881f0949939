"""Rollout rows as text: ``decode_rows``, the one decoder of sampled rows back to text (predictions, the sample
table, reward functions and judges read it); the records ``predict`` writes and ``evaluate`` reads, one JSON
object per sampled response; and the JSON-lines file that holds them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lit_align.runs.atomic import atomic_file


@dataclass(frozen=True)
class RowText:
    """One rollout row as text.

    Attributes:
        prompt: the prompt's tokens (attended, not in the completion mask) as text.
        response: the response's tokens (the completion mask) as text, special tokens (the stop token) skipped.
        ended: whether the response ended with a stop token.
        length: the response's length in tokens.
    """

    prompt: str
    response: str
    ended: bool
    length: int


def decode_rows(rollout, tokenizer, prompt_special_tokens: bool = True) -> list[RowText]:
    """Every row of a ``Rollout`` (or anything with its ``input_ids``, ``attention_mask``, ``completion_mask`` and
    ``ended``) as text, told apart by the masks alone, so left-padded samples and right-padded data rows decode
    alike. With ``prompt_special_tokens`` the prompt keeps its chat template's special tokens and drops a leading
    BOS (``prompt_text``: text that re-tokenises to the same ids); without, they are skipped (text to read)."""
    ids = rollout.input_ids.cpu()
    response = rollout.completion_mask.cpu().bool()
    prompt = rollout.attention_mask.cpu().bool() & ~response
    ended = rollout.ended.cpu().tolist()
    rows = []
    for row in range(ids.shape[0]):
        prompt_ids = ids[row][prompt[row]].tolist()
        prompt_str = (prompt_text(prompt_ids, tokenizer) if prompt_special_tokens
                      else tokenizer.decode(prompt_ids, skip_special_tokens=True))
        response_ids = ids[row][response[row]].tolist()
        rows.append(RowText(prompt_str, tokenizer.decode(response_ids, skip_special_tokens=True), bool(ended[row]),
                            len(response_ids)))
    return rows


def prediction_records(prediction: dict[str, Any], tokenizer) -> list[dict[str, Any]]:
    """One JSON-ready dict per sampled response of a ``predict_step`` output."""
    rollout, batch = prediction["rollout"], prediction["batch"]
    sampling = dataclasses.asdict(prediction["sampling"])
    sampling.pop("logprobs", None)  # what the engine reported, not how the responses were drawn
    references = reference_texts(batch, tokenizer)
    records = []
    for row, text in enumerate(decode_rows(rollout, tokenizer)):
        record = {
            "index": int(prediction["index"][row]),
            "sample": int(prediction["sample"][row]),
            "prompt": text.prompt,
            "response": text.response,
            "ended": text.ended,
            "length": text.length,
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

"""Padding examples into batches.

Pairs are laid out for one concatenated forward pass: rows ``0..B-1`` are prompt + chosen and rows ``B..2B-1``
prompt + rejected, right-padded to the longest sequence in the batch (dynamic padding). Prompts alone are
left-padded, ready for generation. The values of the columns an objective declared (``Example.values``) come as
one (B,) tensor per column, ``batch[name]``, one value per example whatever the number of completions.

Every batch also carries ``prompt_messages``: a Python list (not a tensor) with one entry per example, the prompt's
chat messages or None for a plain-text prompt (``Example.prompt_messages``). Code that moves a batch to a device
moves its tensors only (Lightning's ``move_data_to_device`` leaves the list as it is).
"""

from __future__ import annotations

from typing import Any

import torch

from lit_align.data.formats import Example

# The batch tensor of each declared column type (``lit_align.data.columns``); values arrive converted to the type.
VALUE_DTYPES = {bool: torch.bool, int: torch.long, float: torch.float32}


def _pad_to(length: int, multiple: int | None) -> int:
    return length if not multiple else -(-length // multiple) * multiple


class CompletionCollator:
    """Right-padded prompt + completion sequences, every completion of an example in its own block of rows.

    Returns ``input_ids``, ``attention_mask``, ``completion_mask`` of shape (K*B, T) for K completions per
    example (block k holds completion k of every example), ``index`` (B,), the prompts as ``PromptCollator`` lays
    them out, and each declared column's values (B,).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        prompts = {**left_padded_prompts(examples, self.pad_token_id), **value_tensors(examples)}
        if not examples[0].completion_ids:
            return prompts
        sequences: list[tuple[list[int], int]] = []
        for k in range(len(examples[0].completion_ids)):
            sequences += [(ex.prompt_ids + ex.completion_ids[k], len(ex.prompt_ids)) for ex in examples]
        length = _pad_to(max(len(s) for s, _ in sequences), self.pad_to_multiple_of)
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        completion_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, (ids, prompt_len) in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            completion_mask[row, prompt_len : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
            # the same prompts left-padded, for objectives that also sample from the policy (PMLE's KL term)
            **prompts,
        }


class PromptCollator:
    """Left-padded prompts ``prompt_ids``/``prompt_mask`` (B, P), ready for generation, ``index`` (B,), the prompts'
    ``prompt_messages`` (a list of B entries) and each declared column's values (B,)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        return {**left_padded_prompts(examples, self.pad_token_id), **value_tensors(examples)}


def left_padded_prompts(examples: list[Example], pad_token_id: int) -> dict[str, Any]:
    length = max(len(ex.prompt_ids) for ex in examples)
    prompt_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, ex in enumerate(examples):
        prompt_ids[row, length - len(ex.prompt_ids) :] = torch.tensor(ex.prompt_ids)
        prompt_mask[row, length - len(ex.prompt_ids) :] = 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "index": torch.tensor([ex.index for ex in examples]),
            "prompt_messages": [ex.prompt_messages for ex in examples]}


def value_tensors(examples: list[Example]) -> dict[str, torch.Tensor]:
    """``{name: (B,) tensor}`` of the declared columns' values, typed by the column (``VALUE_DTYPES``)."""
    out = {}
    for name, first in examples[0].values.items():
        try:
            column = [ex.values[name] for ex in examples]
        except KeyError:
            raise ValueError(f"a batch mixes examples with and without the column {name!r}") from None
        out[name] = torch.tensor(column, dtype=VALUE_DTYPES[type(first)])
    return out

"""Encoded examples of ragged lengths, for packing and head tests."""

from __future__ import annotations

import torch
from lit_align.data.formats import Example


def ragged_examples(num_completions: int) -> list[Example]:
    """Prompts of 1, 3, 6 and 2 tokens; completions of 1 to 7 tokens, different within each example."""
    g = torch.Generator().manual_seed(0)
    prompt_lengths = [1, 3, 6, 2]
    examples = []
    for i, p in enumerate(prompt_lengths):
        prompt = torch.randint(3, 400, (p,), generator=g).tolist()
        completions = [torch.randint(3, 400, (1 + (i * 3 + k * 2) % 7,), generator=g).tolist()
                       for k in range(num_completions)]
        examples.append(Example(index=i, prompt_ids=prompt, completion_ids=completions))
    return examples

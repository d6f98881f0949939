"""One forward of a causal LM with the positions and mask lit-align's rows need: the layer below the policy, the
reference, the chunked head and the reward model, which all run a model this way."""

from __future__ import annotations

import torch
from torch import nn

from lit_align.models.packing import masks_for


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so a left-padded sequence gets the positions it would have alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def run_causal_lm(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
    # Without explicit position ids, HF models number positions from the first column, padding included:
    # left-padded prompts (on-policy samples) would then get different log-probs than the same text unpadded.
    if attention_mask.dim() == 4:  # a packed (B, 1, T, T) mask from lit_align.models.packing
        attention_mask = masks_for(model, attention_mask, kwargs["position_ids"])
    elif "position_ids" not in kwargs:
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits

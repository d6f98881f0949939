"""Writing the trained policy in Hugging Face format (safetensors + tokenizer), whole or not at all."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lit_align.models.lora_merge import merged_weights
from lit_align.runs.outputs import atomic_directory


def export_policy(policy, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save the policy so that ``AutoModelForCausalLM.from_pretrained(directory)`` loads it.

    LoRA adapters are merged into the base weights (``lora_export="merged"``, the default) or written as a peft
    adapter (``"adapter"``). ``state_dict`` overrides the weights, e.g. a full state dict gathered from shards.
    The folder is written next to ``directory`` and moved into place once complete (``atomic_directory``): the
    previous export stays until then, and a full disk is one ``DiskWriteError`` naming the folder.
    """
    directory = Path(directory)
    lora = policy.lora_options
    with atomic_directory(directory) as temp:
        if lora is not None and policy.lora_export == "adapter":
            policy.policy.save_pretrained(temp, state_dict=state_dict, safe_serialization=True)
        else:
            base = policy.base_model
            weights = state_dict if state_dict is not None else merged_state_dict(policy.policy)
            base.save_pretrained(temp, state_dict=weights, safe_serialization=True)
        policy.tokenizer.save_pretrained(temp)
    return directory


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain transformers state dict on the CPU, active LoRA adapters merged by peft
    (``lit_align.models.lora_merge``; the model is not changed)."""
    return {name: tensor.cpu() for name, tensor in merged_weights(model)}

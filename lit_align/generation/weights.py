"""The training policy's weights as an inference engine loads them: plain transformers names, LoRA merged.

An engine colocated with training holds its own copy of the weights, so the trainer pushes them before sampling
whenever they changed. ``weights_version`` tells whether they did without reading a single value (every in-place
update of a parameter, as an optimizer step makes, bumps its version counter); ``engine_weights`` yields
``(name, tensor)`` one layer at a time (``lit_align.models.lora_merge.merged_weights``, the merge the exports use
too), so the full model is never gathered twice: under FSDP2 each parameter is gathered whole (a collective: every
rank walks the same names in the same order), and a LoRA layer yields its base weight with its active adapters
merged by peft (DoRA included), or the base weight alone where adapters are disabled (sampling pi_0 from the LoRA
base).
"""

from __future__ import annotations

from collections.abc import Hashable

from torch import nn

from lit_align.models.lora_merge import adapters_active, lora_layers, merged_weights, plain_model

#: The weights an engine loads (the one merge of lit-align, shared with the exports).
engine_weights = merged_weights

__all__ = ["engine_weights", "plain_model", "weights_version"]


def weights_version(model: nn.Module) -> Hashable:
    """Changes whenever the weights ``model`` computes with may have changed: another module, a parameter replaced
    or updated in place, or LoRA adapters switched on or off."""
    parameters = tuple((id(p), p._version) for p in model.parameters())
    adapters = tuple((name, tuple(adapters_active(layer))) for name, layer in lora_layers(model).items())
    return id(model), parameters, adapters

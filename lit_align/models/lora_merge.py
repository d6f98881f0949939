"""The one LoRA merge: a model's weights as it computes with them now, under plain transformers names.

``merged_weights(model)`` yields ``(name, tensor)`` one weight at a time. A LoRA layer's base weight comes with
its active adapters folded in by peft's own ``merge`` (plain LoRA, DoRA's magnitude vector, embeddings, GPT-2's
``fan_in_fan_out`` Conv1D: whatever peft merges), applied to a detached copy of that one layer: the live model is
never changed, so nothing is merged and unmerged (which would not give the trained weights back bit for bit).
Adapters switched off (sampling pi_0 from the LoRA base) or already merged add nothing. Under FSDP2 every tensor
is gathered whole first (a collective: every rank must walk the same model in the same order).

The Hugging Face export, the sharded export and the push to an inference engine all read the weights here, so
they agree with each other and with peft's ``merge_and_unload()``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

BASE_LAYER = ".base_layer."


def plain_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (the model itself without one)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers of ``model`` by module name (under the transformers model's names)."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in plain_model(model).named_modules() if isinstance(module, LoraLayer)}


def adapters_active(layer: nn.Module) -> list[str]:
    """The adapters whose deltas are in ``layer``'s output now (none when disabled or already merged)."""
    if layer.disable_adapters or layer.merged:
        return []
    return [name for name in layer.active_adapters if name in layer.lora_A or name in layer.lora_embedding_A]


def merged_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every weight of ``model``: transformers names, active LoRA adapters merged, whole."""
    layers = lora_layers(model)
    for name, tensor in plain_model(model).state_dict().items():
        owner, found, leaf = name.partition(BASE_LAYER)
        if not found:
            if ".lora_" not in name:  # lora_A / lora_B / lora_embedding_* / lora_magnitude_vector: merged below
                yield name, whole(tensor)
            continue
        layer = layers[owner]
        adapters = adapters_active(layer) if leaf == "weight" else []
        yield f"{owner}.{leaf}", merged_layer_weight(layer, adapters) if adapters else whole(tensor)


def merged_layer_weight(layer: nn.Module, adapters: list[str]) -> torch.Tensor:
    """The base weight of the peft LoRA ``layer`` with ``adapters`` merged by peft's ``merge``, on a copy of the
    layer made of whole, detached tensors (the base weight cloned, since peft merges into it in place)."""
    base = layer.get_base_layer()
    replaced = {id(tensor): _whole_parameter(tensor, clone=tensor is base.weight)
                for tensor in (*layer.parameters(), *layer.buffers())}
    for module in layer.modules():  # hooks (monitors, FSDP, checkpointing) may hold whole models: not copied
        replaced.update({id(value): type(value)() for name, value in vars(module).items()
                         if name.endswith("hooks") and isinstance(value, dict)})
    twin = copy.deepcopy(layer, memo=replaced)
    twin.merge(adapter_names=adapters)
    return twin.get_base_layer().weight.detach()


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of an FSDP2 shard (a collective), the tensor itself otherwise; detached either way."""
    full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return full.detach()


def _whole_parameter(tensor: torch.Tensor, clone: bool) -> torch.Tensor:
    full = whole(tensor)
    full = full.clone() if clone else full
    return nn.Parameter(full, requires_grad=False) if isinstance(tensor, nn.Parameter) else full

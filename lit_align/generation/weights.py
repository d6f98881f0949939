"""The training policy's weights as an inference engine loads them: plain transformers names, LoRA folded in.

An engine colocated with training holds its own copy of the weights, so the trainer pushes them before sampling
whenever they changed. ``weights_version`` tells whether they did without reading a single value (every in-place
update of a parameter, as an optimizer step makes, bumps its version counter); ``engine_weights`` yields
``(name, tensor)`` one layer at a time, so the full model is never gathered twice: under FSDP2 each parameter is
gathered whole (a collective: every rank walks the same names in the same order), and a LoRA layer yields
``W + scaling * B @ A`` for its active adapters, or ``W`` alone where adapters are disabled (sampling pi_0 from the
LoRA base).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import torch
from torch import nn

BASE_LAYER = ".base_layer."


def plain_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (the model itself without one)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers of ``model`` by module name."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in plain_model(model).named_modules() if isinstance(module, LoraLayer)}


def adapters_active(layer: nn.Module) -> list[str]:
    """The adapters whose deltas are in ``layer``'s output now (none when disabled or already merged)."""
    if layer.disable_adapters or layer.merged:
        return []
    return [name for name in layer.active_adapters if name in layer.lora_A or name in layer.lora_embedding_A]


def weights_version(model: nn.Module) -> Hashable:
    """Changes whenever the weights ``model`` computes with may have changed: another module, a parameter replaced
    or updated in place, or LoRA adapters switched on or off."""
    parameters = tuple((id(p), p._version) for p in model.parameters())
    adapters = tuple((name, tuple(adapters_active(layer))) for name, layer in lora_layers(model).items())
    return id(model), parameters, adapters


def engine_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every weight of ``model`` under its transformers name, LoRA merged, gathered whole."""
    layers = lora_layers(model)
    for name, tensor in plain_model(model).state_dict().items():
        owner, found, leaf = name.partition(BASE_LAYER)
        if not found:
            if ".lora_" not in name:  # lora_A / lora_B / lora_embedding_*: folded into their base weight below
                yield name, _whole(tensor)
            continue
        layer = layers[owner]
        value = _whole(tensor)
        if leaf == "weight":
            for adapter in adapters_active(layer):
                value = value + _delta(layer, adapter).to(value.dtype)
        yield f"{owner}.{leaf}", value


def _delta(layer: nn.Module, adapter: str) -> torch.Tensor:
    """``scaling * B @ A`` laid out like the base weight (peft's ``get_delta_weight``, on gathered tensors)."""
    if getattr(layer, "use_dora", {}).get(adapter, False):
        raise NotImplementedError("pushing DoRA adapters to an inference engine is not supported; use plain LoRA "
                                  "or generation: hf")
    scaling = layer.scaling[adapter]
    if adapter in layer.lora_embedding_A:  # Embedding: A (r, num_embeddings), B (embedding_dim, r)
        a, b = _whole(layer.lora_embedding_A[adapter]), _whole(layer.lora_embedding_B[adapter])
        return (b @ a).T * scaling
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if a.dim() != 2:
        raise NotImplementedError(f"pushing LoRA on {type(layer).__name__} layers to an inference engine is not "
                                  "supported (linear and embedding layers are)")
    delta = _whole(b).float() @ _whole(a).float() * scaling  # (out, in)
    return delta.T if getattr(layer, "fan_in_fan_out", False) else delta  # GPT-2's Conv1D stores (in, out)


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of an FSDP2 shard (a collective), the tensor itself otherwise; detached either way."""
    full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return full.detach()

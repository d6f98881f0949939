"""FSDP2 sharding of a ``PolicyWithReference``: the policy and its frozen reference, block by block.

``FSDP2Strategy`` (``lit_align/strategies.py``) holds the options and calls ``shard_policy`` from the
objective's ``configure_model``. What gets sharded:

- every transformer block (the classes the Hugging Face model lists in ``_no_split_modules``, or the class names
  given as ``block_classes``), then the remaining root (embeddings, final norm, LM head), of the policy;
- the same for the frozen ``reference="copy"`` model, as a separate FSDP root: it is all-gathered block by block
  for its no-grad forward and lives on the policy's device, never in the optimizer. Under ``reference="lora"``
  the reference is the sharded policy with its adapters disabled; under ``reference="cache"`` there is none.

The frozen reference is left out of checkpoints (it is rebuilt from its source): ``without_reference`` hides it
while the strategy reads or writes module state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lit_align.models.loading import enable_activation_checkpointing
from lit_align.models.lora_merge import merged_weights

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ShardingOptions:
    """How policy and reference are sharded (the arguments of ``FSDP2Strategy``)."""

    block_classes: list[str] | None = None
    mixed_precision: Literal["bf16", "fp16"] | None = None
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    reshard_after_forward: bool = True


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def block_class_names(model: nn.Module) -> set[str]:
    """Names of the transformer block classes of a Hugging Face model (LoRA wrappers looked through)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def shard_policy(policy, mesh, options: ShardingOptions) -> None:
    """Apply FSDP2 in place to the policy and the frozen reference of ``policy`` (a ``PolicyWithReference``), or
    to a ``RewardScorer`` (which holds its sequence-classification model as ``model`` and has no reference)."""
    if is_sharded(policy):
        return  # configure_model runs again for validate/test after fit
    is_scorer = "policy" not in policy._modules
    hf_model = policy.model if is_scorer else policy.base_model
    names = set(options.block_classes) if options.block_classes else block_class_names(hf_model)
    if not names:
        raise ValueError(
            f"cannot find the transformer blocks of {type(hf_model).__name__}: it lists no "
            "_no_split_modules; pass the block class names as block_classes"
        )
    if options.activation_checkpointing:
        # HF's own non-reentrant checkpointing keeps parameter names unchanged, so state dicts stay loadable.
        enable_activation_checkpointing(hf_model)
    kwargs = _fully_shard_kwargs(mesh, options)
    if is_scorer:
        # RewardScorer.forward calls the backbone and then the score head itself, not the HF model's forward, so
        # the scorer is the root unit: its forward gathers the embeddings, final norm and head around both calls.
        _shard_blocks_then_root(policy, names, kwargs)
        return
    for model in (policy.policy, policy.reference.weights):
        if model is None:
            continue
        _shard_blocks_then_root(model, names, kwargs)


def _fully_shard_kwargs(mesh, options: ShardingOptions) -> dict:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    kwargs = {"mesh": mesh, "reshard_after_forward": options.reshard_after_forward}
    if options.mixed_precision is not None:
        # Compute in half precision; gradients are reduced in float32 and the master weights stay float32.
        dtype = _DTYPES[options.mixed_precision]
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    kwargs["offload_policy"] = (
        CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if options.cpu_offload else OffloadPolicy()
    )
    return kwargs


def shard_trainable_heads(module: nn.Module, mesh, options: ShardingOptions) -> None:
    """Shard the objective's own trainable submodules beside the policy (RLHF's value head) as FSDP2 roots.

    Under FSDP2 nothing else averages gradients across ranks: a head left as a plain module would get each rank's
    own gradient and drift apart on every rank, and its plain-tensor gradients cannot be clipped together with the
    policy's sharded ones.
    """
    from torch.distributed.fsdp import fully_shard

    for name, child in module.named_children():
        if name == "policy" or is_sharded(child) or not any(p.requires_grad for p in child.parameters()):
            continue
        fully_shard(child, **_fully_shard_kwargs(mesh, options))


def _shard_blocks_then_root(model: nn.Module, names: set[str], kwargs: dict) -> None:
    from torch.distributed.fsdp import fully_shard

    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"none of the block classes {sorted(names)} occurs in {type(model).__name__}")
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


@contextmanager
def without_reference(module: nn.Module) -> Iterator[None]:
    """Hide the frozen reference copy of ``module.policy`` (if any) from state-dict reads and writes."""
    holder = getattr(module, "policy", None)
    children = getattr(holder, "_modules", None)
    if children is None or children.get("reference") is None:
        yield
        return
    saved = list(children.items())
    del children["reference"]
    try:
        yield
    finally:
        children.clear()
        children.update(saved)  # restore the original order of submodules


def full_policy_state_dict(policy) -> dict[str, torch.Tensor] | None:
    """The consolidated policy weights for a Hugging Face export, on rank 0 (an empty dict on other ranks).

    Returns None when the policy is not sharded (the export reads the module directly). A collective: every
    rank must call it. With LoRA and ``lora_export="merged"`` the adapters are folded into the base weights and
    the keys are the plain transformers ones; with ``"adapter"`` the peft state dict is returned unchanged.
    """
    if "policy" not in policy._modules:  # a RewardScorer: its HF model's keys, without the scorer's "model." prefix
        state = _full_state_dict(policy) if is_sharded(policy) else None
        return None if state is None else {k.removeprefix("model."): v for k, v in state.items()}
    if not is_sharded(policy.policy):
        return None
    if policy.lora_options is None or policy.lora_export == "adapter":
        return _full_state_dict(policy.policy)
    # peft's merge on each layer gathered whole, one layer at a time (the same merge as the unsharded export)
    keep = torch.distributed.get_rank() == 0
    return {name: tensor.cpu() for name, tensor in merged_weights(policy.policy) if keep}


def _full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of a sharded ``model`` gathered whole onto rank 0's CPU (empty on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

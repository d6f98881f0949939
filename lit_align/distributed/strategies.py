"""Lightning strategies for sharded training: FSDP2 on one or many GPUs (or CPU processes for tests).

Distribution lives here, not in the objectives: every ``AlignmentModule`` asks the strategy to shard it in
``configure_model``, so any objective runs sharded by swapping ``trainer.strategy`` (see configs/strategy/).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_align.distributed.sharding import ShardingOptions, shard_policy, shard_trainable_heads, without_reference


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallelism (PyTorch FSDP2, ``fully_shard``) of the policy and its frozen reference.

    Every process holds a 1/N slice of each weight, gradient and optimizer state and all-gathers one
    transformer block at a time for its forward and backward. The reference is sharded the same way, on the
    same devices, and never given to the optimizer. Checkpoints are sharded (one file per rank, written in
    parallel) and leave the reference out; ``HFExport`` gathers a consolidated copy of the policy on rank 0.
    Runs on GPUs (NCCL) and on CPU processes (gloo).

    Args:
        block_classes: Class names of the modules sharded one by one (default: the Hugging Face model's
            ``_no_split_modules``, e.g. ``LlamaDecoderLayer``).
        mixed_precision: ``bf16`` or ``fp16`` to all-gather weights and compute in half precision while the
            master weights and optimizer state stay float32 and gradients are reduced in float32. Keep the
            Trainer's ``precision`` at ``32-true`` when using this.
        activation_checkpointing: Recompute block activations in the backward pass instead of storing them.
        cpu_offload: Keep sharded weights, gradients and optimizer state in CPU memory between uses.
        reshard_after_forward: Free the gathered weights after each block's forward (less memory) instead of
            keeping them for the backward (less communication).
        save_distributed_checkpoint: One checkpoint shard per rank (true) or one consolidated file from rank 0.
        process_group_backend: ``nccl`` or ``gloo``; chosen from the device when omitted.
        timeout: Timeout of collective operations.
    """

    def __init__(
        self,
        block_classes: list[str] | None = None,
        mixed_precision: Literal["bf16", "fp16"] | None = None,
        activation_checkpointing: bool = False,
        cpu_offload: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = timedelta(minutes=30),
    ) -> None:
        # Pure data parallelism: every process is one shard (tensor parallelism stays at 1).
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.sharding = ShardingOptions(
            block_classes=block_classes,
            mixed_precision=mixed_precision,
            activation_checkpointing=activation_checkpointing,
            cpu_offload=cpu_offload,
            reshard_after_forward=reshard_after_forward,
        )

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def shard(self, module: torch.nn.Module) -> None:
        """Shard ``module.policy`` (policy and reference, or ``RewardModeling``'s scorer) and the objective's own
        trainable heads over the data-parallel mesh."""
        shard_policy(module.policy, self.device_mesh["data_parallel"], self.sharding)
        shard_trainable_heads(module, self.device_mesh["data_parallel"], self.sharding)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        with without_reference(self.lightning_module):
            return super().lightning_module_state_dict()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        with without_reference(self.lightning_module):
            return super().load_checkpoint(Path(checkpoint_path), weights_only=weights_only)


def shard_with_strategy(module) -> None:
    """``configure_model`` of every objective: shard when the Trainer's strategy is FSDP2, else do nothing."""
    trainer = module._trainer
    strategy = trainer.strategy if trainer is not None else None
    if isinstance(strategy, FSDP2Strategy):
        strategy.shard(module)
    elif isinstance(strategy, ModelParallelStrategy):
        # Its default mesh is tensor-parallel within a node, which these models are not written for.
        raise TypeError(
            "use lit_align.distributed.strategies.FSDP2Strategy (a ModelParallelStrategy that shards policy and reference) "
            f"instead of {type(strategy).__name__}"
        )


#: What gloo says when a peer's connection drops or a collective outlives the process group's timeout (it raises a
#: plain RuntimeError; NCCL and the c10d store raise torch.distributed.DistError subclasses).
_GLOO_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting", "timed out after")


def lost_rank_message(err: BaseException) -> str | None:
    """One line for a collective that failed because another process of the run went away (its node died, it was
    killed, the network dropped) or did not answer within the process group's ``timeout``; None for other errors.

    The backend's own message leads ("Connection closed by peer [10.0.0.2]:41234", "Timed out waiting 30000ms for
    recv"): it names the peer's address, which is the node to look at."""
    seen = err
    while seen is not None:
        text = str(seen)
        if isinstance(seen, dist.DistError):
            break
        if isinstance(seen, RuntimeError) and any(marker in text for marker in _GLOO_PEER_LOST):
            break
        seen = seen.__cause__ or seen.__context__
    else:
        return None
    # gloo prefixes its source location in brackets: keep what follows, up to the end of its first sentence
    detail = " ".join((text.split("] ", 1)[-1] if text.startswith("[") else text).split())
    detail = detail.split(". ", 1)[0].rstrip(".")
    rank = f"rank {dist.get_rank()} of {dist.get_world_size()}" if dist.is_initialized() else "this process"
    return (f"lost contact with another process of the run ({rank}: {detail}): a node or process died or did not "
            "answer within the strategy's timeout; restart every node with --ckpt_path last to resume")


class BlockWrapPolicy:
    """An auto-wrap policy for Lightning's (FSDP1) ``FSDPStrategy``: one FSDP unit per transformer block.

    Args:
        block_classes: Class names of the blocks, e.g. ``["LlamaDecoderLayer"]`` (the model's
            ``_no_split_modules``).
    """

    def __init__(self, block_classes: list[str]) -> None:
        self.block_classes = set(block_classes)

    def __call__(self, module: torch.nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        return True if recurse else type(module).__name__ in self.block_classes

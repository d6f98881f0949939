"""Training speed and memory: tokens/s, samples/s, peak memory and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import lightning as L
import torch

from lit_align.policy.with_reference import PolicyWithReference

# Dense (no sparsity) bf16/fp16 tensor-core peak FLOP/s per device, from the vendors' data sheets. Matched by
# substring of torch.cuda.get_device_name(); the first match wins, so specific names come before generic ones.
PEAK_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "A6000": 155e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def device_peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of a known CUDA device, or None (CPU and unknown GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated CUDA memory since the last reset, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def flops_per_token(module: L.LightningModule) -> float:
    """Training FLOPs per token: 6N for the trained policy (forward + backward) + 2N for a reference forward.

    N counts every weight of the policy (frozen LoRA bases included: the backward still runs through them).
    Attention's sequence-length term is left out, as in the usual 6N estimate; sampling is not counted.
    """
    policy = module.policy
    if not isinstance(policy, PolicyWithReference):  # a reward model being trained: no reference to run
        return 6.0 * sum(p.numel() for p in policy.parameters())
    n_policy = sum(p.numel() for p in policy.policy.parameters())
    n_reference = policy.reference.forward_parameters(policy)
    return 6.0 * n_policy + 2.0 * n_reference


class ThroughputMonitor(L.Callback):
    """Logs ``perf/tokens_per_sec``, ``perf/samples_per_sec``, ``perf/step_time``, ``perf/peak_memory_gb`` and
    (on GPUs of ``PEAK_FLOPS`` or with ``peak_flops`` set) ``perf/mfu`` every ``log_every_n_steps`` optimizer
    steps, summed over all ranks (memory: the largest rank).

    Tokens are the non-padding tokens of each training batch (``attention_mask``; prompt batches of on-policy
    objectives count ``prompt_mask``), samples the examples (pairs or prompts). The first interval is
    measured from the first batch, so it includes warm-up.

    Args:
        log_every_n_steps: Optimizer steps between two measurements.
        peak_flops: Peak FLOP/s of one device, for MFU on hardware missing from the table.
    """

    def __init__(self, log_every_n_steps: int = 10, peak_flops: float | None = None) -> None:
        if log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be at least 1, got {log_every_n_steps}")
        self.log_every_n_steps = log_every_n_steps
        self.peak_flops = peak_flops
        self._reset(None)

    def _reset(self, step: int | None) -> None:
        self._tokens = 0
        self._samples = 0
        self._start = time.perf_counter()
        self._start_step = step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flops_per_token = flops_per_token(pl_module)
        self._peak = self.peak_flops or device_peak_flops(pl_module.device)
        self._reset(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        mask = batch.get("attention_mask", batch.get("prompt_mask"))
        self._tokens += int(mask.sum()) if mask is not None else 0
        index = batch.get("index")
        self._samples += int(index.numel()) if index is not None else len(mask) if mask is not None else 0
        steps = trainer.global_step - self._start_step
        if steps < self.log_every_n_steps:
            return
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - self._start
        counts = torch.tensor([self._tokens, self._samples], dtype=torch.float64, device=device)
        memory = torch.tensor(float(peak_memory_bytes(device)), dtype=torch.float64, device=device)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
            memory = trainer.strategy.reduce(memory, reduce_op="max")
        tokens_per_sec = counts[0].item() / elapsed
        metrics = {
            "perf/tokens_per_sec": tokens_per_sec,
            "perf/samples_per_sec": counts[1].item() / elapsed,
            "perf/step_time": elapsed / steps,
            "perf/peak_memory_gb": memory.item() / 2**30,
        }
        if self._peak:
            metrics["perf/mfu"] = tokens_per_sec * self._flops_per_token / (trainer.world_size * self._peak)
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=True, on_epoch=False, rank_zero_only=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self._reset(trainer.global_step)

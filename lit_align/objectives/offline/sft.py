"""Supervised fine-tuning: the negative log-likelihood of reference responses, which produces pi_0."""

from __future__ import annotations

from typing import Any

import torch

from lit_align.objectives.base import AlignmentModule, Stage


class SFT(AlignmentModule):
    """Negative log-likelihood of the response tokens (prompt and padding masked), averaged over tokens.

    Batches come from ``SFTDataModule`` (the ``completion`` or ``chosen`` response of each row); with a
    ``PreferenceDataModule`` only the chosen block (the first half of the rows) is used. No reference model is
    loaded.

    **Token-weighted mean under gradient accumulation and across ranks.** Dividing each micro-batch's summed NLL
    by its own token count and averaging the micro-batches (what ``loss.mean()`` + Lightning's accumulation would
    do) over-weights the tokens of short micro-batches. Here the backward pass uses the *summed* NLL of each
    micro-batch, the response tokens of every micro-batch of the optimizer step are counted, and just before the
    optimizer step (``on_before_optimizer_step``, before gradient clipping) the accumulated gradient is rescaled
    so that it is exactly the gradient of (sum of token NLLs) / (number of response tokens) over every micro-batch
    and every rank of the step. The logged ``train/loss`` and ``val/loss`` are token-weighted the same way.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._step_tokens = torch.zeros(())

    def compute_loss(self, batch: dict[str, torch.Tensor], stage: Stage) -> tuple[torch.Tensor, dict[str, Any]]:
        rows = batch["index"].numel()  # a preference batch holds chosen rows first: keep those
        input_ids, attention_mask = batch["input_ids"][:rows], batch["attention_mask"][:rows]
        completion_mask = batch["completion_mask"][:rows]
        token_logps, mask = self.policy.completion_logps(input_ids, attention_mask, completion_mask)  # (B, T-1)
        nll_sum = -token_logps.sum()
        tokens = mask.sum()
        metrics = {
            # one entry per response token, so the accumulator's mean is the token-weighted NLL
            "loss": -token_logps.detach()[mask],
            "logps": token_logps.detach().sum(-1),
            "completions/mean_length": mask.sum(-1).float(),
        }
        if stage == "train":
            self._step_tokens = self._step_tokens.to(tokens.device) + tokens.detach()
            return nll_sum, metrics
        return nll_sum / tokens.clamp(min=1), metrics

    def on_before_optimizer_step(self, optimizer) -> None:
        # Gradients hold (1 / (accumulate * world)) * sum of d(summed NLL) over micro-batches and ranks (Lightning
        # divides each micro-batch loss by accumulate_grad_batches, DDP/FSDP average over ranks).
        tokens = self._step_tokens.float()
        world = self.trainer.world_size
        if world > 1:
            tokens = self.trainer.strategy.reduce(tokens, reduce_op="sum")
        scale = self.trainer.accumulate_grad_batches * world / tokens.clamp(min=1)
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.mul_(scale.to(param.grad.device, param.grad.dtype))
        self._step_tokens = torch.zeros((), device=self._step_tokens.device)

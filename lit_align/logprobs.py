"""Per-token and per-sequence log-probabilities from causal-LM logits.

This is the one place that knows about the one-position shift between logits and labels and about masks.
Everything is computed in float32, whatever the model's dtype: a bf16/fp16 log-softmax loses the small
differences that preference losses are made of, and overflows to NaN on long sequences.

Conventions: ``input_ids`` and ``completion_mask`` are (B, T). ``completion_mask[b, t] == 1`` marks token t as
part of the completion (prompt and padding are 0). The logits at position t predict token t + 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Positions are processed in chunks so that the float32 copy of the logits never exceeds B * CHUNK * V floats.
_CHUNK = 1024


def shift_for_next_token(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align logits with the tokens they predict: returns (logits (B,T-1,V), labels (B,T-1), mask (B,T-1))."""
    return logits[:, :-1], input_ids[:, 1:], completion_mask[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels) under ``logits`` in float32. ``logits`` (B, T, V), ``labels`` (B, T) -> (B, T)."""
    out = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, labels.shape[1], _CHUNK):
        chunk = logits[:, start : start + _CHUNK].float()
        picked = chunk.gather(-1, labels[:, start : start + _CHUNK, None]).squeeze(-1)
        out[:, start : start + _CHUNK] = picked - torch.logsumexp(chunk, dim=-1)
    return out


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution in float32. (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) over the vocabulary at every position, float32. (B, T, V) x2 -> (B, T)."""
    logp = F.log_softmax(logits_p.float(), dim=-1)
    logq = F.log_softmax(logits_q.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def completion_token_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion tokens: returns (token_logps (B, T-1) zeroed off the mask, mask (B, T-1))."""
    logits, labels, mask = shift_for_next_token(logits, input_ids, completion_mask)
    mask = mask.to(torch.bool)
    return token_logprobs(logits, labels).masked_fill(~mask, 0.0), mask


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """ln pi(completion | prompt): the sum of completion-token log-probs, no length normalisation. -> (B,)"""
    token_logps, _ = completion_token_logprobs(logits, input_ids, completion_mask)
    return token_logps.sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set (token-weighted when dim is None)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)

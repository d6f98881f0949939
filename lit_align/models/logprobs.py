"""Per-token and per-sequence log-probabilities from causal-LM logits.

This is the one place that knows about the one-position shift between logits and labels and about masks.
Everything is computed in float32, whatever the model's dtype: a bf16/fp16 log-softmax loses the small
differences that preference losses are made of, and overflows to NaN on long sequences.

Conventions: ``input_ids`` and ``completion_mask`` are (B, T). ``completion_mask[b, t] == 1`` marks token t as
part of the completion (prompt and padding are 0). The logits at position t predict token t + 1.

``temperature``: every function scores the distribution ``softmax(logits / temperature)``, the one that sampling
at that temperature draws from. The division is applied to each float32 chunk, so no second full copy of the
logits is made. On-policy maths (importance ratios, KL estimates, entropies) must use the temperature the
responses were sampled at, for the current, the old and the reference policy alike.
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


def check_temperature(temperature: float) -> float:
    """``temperature`` if it defines a distribution (> 0); greedy decoding (0) has no log-probs to score."""
    if not temperature > 0:
        raise ValueError(f"log-probs need a sampling temperature > 0 (0 is greedy decoding), got {temperature}")
    return temperature


def _chunks(logits: torch.Tensor, temperature: float):
    """(start, float32 logits / temperature) over chunks of positions of (B, T, V) logits (other shapes: whole)."""
    check_temperature(temperature)
    step = _CHUNK if logits.dim() == 3 else max(logits.shape[1], 1)
    for start in range(0, logits.shape[1], step):
        chunk = logits[:, start : start + step].float()
        yield start, chunk if temperature == 1.0 else chunk / temperature


def _joined(parts: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts, dim=1) if parts else logits.new_zeros(logits.shape[:-1], dtype=torch.float32)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(labels) under ``softmax(logits / temperature)`` in float32. (B, T, V), (B, T) -> (B, T)."""
    out = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    for start, chunk in _chunks(logits, temperature):
        picked = chunk.gather(-1, labels[:, start : start + _CHUNK, None]).squeeze(-1)
        out[:, start : start + _CHUNK] = picked - torch.logsumexp(chunk, dim=-1)
    return out


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of each next-token distribution ``softmax(logits / temperature)`` in float32. (B, T, V) -> (B, T)."""
    parts = []
    for _, chunk in _chunks(logits, temperature):
        logp = F.log_softmax(chunk, dim=-1)
        parts.append(-(logp.exp() * logp).sum(-1))
    return _joined(parts, logits)


def token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Exact KL(p || q) over the vocabulary at every position, float32, both at ``temperature``. (B, T, V) x2 -> (B, T)."""
    parts = []
    for (start, chunk_p), (_, chunk_q) in zip(_chunks(logits_p, temperature), _chunks(logits_q, temperature)):
        logp = F.log_softmax(chunk_p, dim=-1)
        logq = F.log_softmax(chunk_q, dim=-1)
        parts.append((logp.exp() * (logp - logq)).sum(-1))
    return _joined(parts, logits_p)


def completion_token_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion tokens: returns (token_logps (B, T-1) zeroed off the mask, mask (B, T-1))."""
    logits, labels, mask = shift_for_next_token(logits, input_ids, completion_mask)
    mask = mask.to(torch.bool)
    return token_logprobs(logits, labels, temperature).masked_fill(~mask, 0.0), mask


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """ln pi(completion | prompt): the sum of completion-token log-probs, no length normalisation. -> (B,)"""
    token_logps, _ = completion_token_logprobs(logits, input_ids, completion_mask, temperature)
    return token_logps.sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set (token-weighted when dim is None)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)

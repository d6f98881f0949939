"""Exact computations with small causal LMs on a space of fixed-length responses.

The oracle task (``lit_align.data.oracle``) defines a response as exactly ``L`` tokens after a fixed-length
prompt, every token drawn from the model's full vocabulary (EOS is an ordinary token there), so that
``pi(a|x)`` is the product of ``L`` next-token probabilities, which is what ``lit_align.models.logprobs`` computes for a
completion of ``L`` tokens. For that space this module samples exactly (ancestral sampling, no truncation or
temperature) and computes KL divergences between two LMs exactly by enumerating prefixes:

    KL(p || q) = sum_t E_{a_<t ~ p} KL( p(.|x, a_<t) || q(.|x, a_<t) )

which needs ``V ** (L - 1)`` forward rows per prompt: exact enumeration is offered for ``L <= 2``.

``save_tiny_lm`` writes the embedded ``tiny`` architecture with a smaller vocabulary (and optionally sharper
logits) as a local model directory: an oracle whose responses range over a handful of tokens, so that a policy
loaded from it has few free log-probabilities per prompt and the target (another such directory) is exactly
representable by it.

A *logits function* here is any callable ``(input_ids (B, T), attention_mask (B, T)) -> logits (B, T, V)``,
e.g. ``PolicyWithReference.forward``, ``PolicyWithReference.reference_logits`` or ``logits_fn(hf_model)``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_align.models.logprobs import token_kl

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Rows per forward pass when enumerating prefixes (bounds memory at ROWS * T * V floats).
_ROWS = 1024


def save_tiny_lm(path: str | Path, seed: int, vocab_size: int | None = None, logit_scale: float = 1.0,
                 **config: Any) -> str:
    """Save the embedded ``tiny`` model, randomly initialised from ``seed``, as a local model directory.

    Args:
        path: Directory to write (created); it then loads like any local model (``PolicyWithReference(model=path)``,
            ``OracleDataModule(reference_model=path)``).
        seed: Initialisation seed (as ``load_causal_lm("tiny", seed=seed)``).
        vocab_size: Keep only the first ``vocab_size`` tokens (at least 4: pad, BOS, EOS and one more), so every
            next-token distribution ranges over them; ``None`` keeps the tokenizer's 474. The embedded tokenizer is
            copied alongside for its special tokens: text encoding is meaningless with a smaller vocabulary, so
            such a model is for tasks given as token ids (the oracle task).
        logit_scale: Factor on the output layer (a sharper LM for > 1), baked into the saved weights.
        **config: Other fields of the embedded ``LlamaConfig`` to change, e.g. ``hidden_size=16,
            num_hidden_layers=1`` for a cheaper model.

    Returns:
        ``path`` as a string.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from lit_align.models.loading import EMBEDDED_DIR

    config = AutoConfig.from_pretrained(EMBEDDED_DIR, **config)
    if vocab_size is not None:
        if not 4 <= vocab_size <= config.vocab_size:
            raise ValueError(f"vocab_size must be in [4, {config.vocab_size}], got {vocab_size}")
        config.vocab_size = vocab_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(logit_scale)
    path = Path(path)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(EMBEDDED_DIR / name, path / name)
    return str(path)


def logits_fn(model: nn.Module) -> LogitsFn:
    """The logits function of a Hugging Face causal LM (prompts here are never padded)."""

    def run(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return run


@torch.no_grad()
def _last_logits(fn: LogitsFn, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits after each (unpadded) row, float32, in chunks of ``_ROWS``. (N, T) -> (N, V)"""
    parts = [fn(chunk, torch.ones_like(chunk))[:, -1].float() for chunk in input_ids.split(_ROWS)]
    return torch.cat(parts)


@torch.no_grad()
def sample_responses(fn: LogitsFn, prompts: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Exact ancestral samples of ``length`` tokens after each prompt of (B, P) ``prompts`` -> (B, length)."""
    ids = prompts
    for _ in range(length):
        probs = _last_logits(fn, ids).softmax(-1)  # (B, V)
        token = torch.multinomial(probs.cpu(), 1, generator=generator).to(ids.device)
        ids = torch.cat([ids, token], dim=1)
    return ids[:, prompts.shape[1] :]


@torch.no_grad()
def response_logprobs(fn: LogitsFn, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """ln pi(a|x) for (B, P) prompts and (B, L) responses -> (B,) float32."""
    ids = torch.cat([prompts, responses], dim=1)
    parts = []
    for chunk in ids.split(_ROWS):
        logits = fn(chunk, torch.ones_like(chunk))[:, prompts.shape[1] - 1 : -1].float()  # (b, L, V)
        picked = logits.log_softmax(-1).gather(-1, chunk[:, prompts.shape[1] :, None]).squeeze(-1)
        parts.append(picked.sum(-1))
    return torch.cat(parts)


def _with_every_next_token(prompts: torch.Tensor, vocab: int) -> torch.Tensor:
    """Every prompt followed by every token: row ``b * V + v`` is prompt b then token v. (B, P) -> (B*V, P+1)"""
    tokens = torch.arange(vocab, device=prompts.device).repeat(prompts.shape[0])[:, None]
    return torch.cat([prompts.repeat_interleave(vocab, 0), tokens], 1)


@torch.no_grad()
def exact_sequence_kl(p: LogitsFn, q: LogitsFn, prompts: torch.Tensor, length: int) -> torch.Tensor:
    """KL(p(.|x) || q(.|x)) over all responses of ``length`` tokens, for each of the (B, P) prompts -> (B,).

    Enumerates every first token when ``length == 2`` (B * V extra rows); longer responses are refused
    because their enumeration grows as ``V ** (length - 1)``.
    """
    if length not in (1, 2):
        raise ValueError(f"exact enumeration supports responses of 1 or 2 tokens, got {length}")
    p_first, q_first = _last_logits(p, prompts), _last_logits(q, prompts)  # (B, V)
    kl = token_kl(p_first, q_first)  # (B,)
    if length == 1:
        return kl
    batch, vocab = p_first.shape
    extended = _with_every_next_token(prompts, vocab)
    second = token_kl(_last_logits(p, extended), _last_logits(q, extended)).view(batch, vocab)  # (B, V)
    return kl + (p_first.softmax(-1) * second).sum(-1)


@torch.no_grad()
def exact_sequence_entropy(p: LogitsFn, prompts: torch.Tensor, length: int) -> torch.Tensor:
    """Entropy H(p(.|x)) of the responses of ``length`` (1 or 2) tokens, for each prompt -> (B,)."""
    if length not in (1, 2):
        raise ValueError(f"exact enumeration supports responses of 1 or 2 tokens, got {length}")
    first = _last_logits(p, prompts).log_softmax(-1)  # (B, V)
    entropy = -(first.exp() * first).sum(-1)
    if length == 1:
        return entropy
    batch, vocab = first.shape
    extended = _with_every_next_token(prompts, vocab)
    second = _last_logits(p, extended).log_softmax(-1)
    second_entropy = -(second.exp() * second).sum(-1).view(batch, vocab)
    return entropy + (first.exp() * second_entropy).sum(-1)

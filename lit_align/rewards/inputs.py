"""What a reward model reads when its tokenizer is not the policy's: text in, its own token ids out.

A reward model with another vocabulary or another chat template than the policy's would read the policy's token ids
as other words, so it is given text (``lit_align.rewards.dispatch`` decodes each sampled response and takes the
prompt's chat messages from the data) and ``RewardInputs`` makes its ids:

1. ``RewardInputs.encode`` turns (prompt, response) into the reward model's ids. A prompt given as messages, when
   the reward model's tokenizer has a chat template, is rendered with it (the prompt's messages, then the response
   as the assistant turn) and that rendering is tokenised in one go, as ``apply_chat_template(..., tokenize=True)``
   does; the template closes the turn itself, so no EOS is added. Otherwise the prompt text (with the tokenizer's
   BOS, once; a conversation without a template: its messages' contents, one paragraph each) is followed by the
   response and EOS, tokenised separately: the layout lit-align's data encoder gives a reward model trained on
   plain-text pairs.
2. ``RewardInputs.score`` right-pads the sequences (the scorer reads the last real token), moves them to the reward
   model's device and scores them in batches.
"""

from __future__ import annotations

from typing import Literal, Union

import torch
from torch import nn

from lit_align.models.loading import tokenizer_adds_bos

Message = dict[str, str]
Prompt = Union[str, list[Message]]
ChatTemplateUse = Literal["auto", "always", "never"]

# The longest input assumed when neither the tokenizer nor the model config states one.
FALLBACK_MAX_LENGTH = 4096


def reads_policy_ids(reward_tokenizer, policy_tokenizer) -> bool:
    """Whether a reward model with ``reward_tokenizer`` can score the policy's token ids as they are: the same
    vocabulary, chat template, BOS and EOS."""
    if reward_tokenizer is None or reward_tokenizer is policy_tokenizer:
        return True
    return (
        reward_tokenizer.get_vocab() == policy_tokenizer.get_vocab()
        and getattr(reward_tokenizer, "chat_template", None) == getattr(policy_tokenizer, "chat_template", None)
        and (reward_tokenizer.bos_token_id, reward_tokenizer.eos_token_id)
        == (policy_tokenizer.bos_token_id, policy_tokenizer.eos_token_id)
    )


def default_max_length(model: nn.Module, tokenizer) -> int:
    """The longest input the reward model takes: the smaller of its tokenizer's and its position embeddings' limits."""
    limits = [getattr(tokenizer, "model_max_length", None),
              getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    # tokenizers without a limit report a huge sentinel (int(1e30))
    limits = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else FALLBACK_MAX_LENGTH


class RewardInputs:
    """Text -> the reward model's token ids, padded the way the scorer reads them (see the module docstring).

    Args:
        tokenizer: The reward model's tokenizer.
        max_length: Longest prompt + response in tokens; longer prompts keep their end (and their BOS), responses
            their start.
        chat_template: ``auto`` renders conversations with the reward model's chat template (when it has one) and
            scores plain-text prompts as text; ``always`` also wraps a plain-text prompt as one user turn (a chat
            reward model scoring plain-text data); ``never`` scores text only (conversations as their turns'
            contents, one paragraph each).
        append_eos: End a plain-text response with the tokenizer's EOS (where a lit-align reward model reads its
            score). A chat template's own end of turn is never followed by a second one.
    """

    def __init__(
        self, tokenizer, max_length: int = FALLBACK_MAX_LENGTH, chat_template: ChatTemplateUse = "auto",
        append_eos: bool = True,
    ) -> None:
        if chat_template not in ("auto", "always", "never"):
            raise ValueError(f"chat_template must be auto, always or never; got {chat_template!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (a prompt token and a response token), got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chat_template = chat_template
        self.append_eos = append_eos
        self._adds_bos = tokenizer_adds_bos(tokenizer)

    def uses_template(self, prompt: Prompt) -> bool:
        if self.chat_template == "never" or not getattr(self.tokenizer, "chat_template", None):
            return False
        return self.chat_template == "always" or not isinstance(prompt, str)

    def encode(self, prompts: list[Prompt], responses: list[str]) -> list[list[int]]:
        """The reward model's ids of every (prompt, response)."""
        return [self.encode_one(p, r) for p, r in zip(prompts, responses)]

    def encode_one(self, prompt: Prompt, response: str) -> list[int]:
        tok = self.tokenizer
        if self.uses_template(prompt):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            prompt_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
            ids = self._with_bos(tok(full, add_special_tokens=False).input_ids)
            if len(ids) <= self.max_length:
                return ids
            # too long: cut at the prompt/response boundary (the template may render the prompt differently once
            # a reply follows; then the whole rendering is the "prompt" and keeps its end)
            split = len(prompt_text) if full.startswith(prompt_text) else len(full)
            prompt_ids = tok(full[:split], add_special_tokens=False).input_ids
            response_ids = tok(full[split:], add_special_tokens=False).input_ids if full[split:] else []
        else:
            text = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
            prompt_ids = tok(text, add_special_tokens=False).input_ids
            response_ids = tok(response, add_special_tokens=False).input_ids
            eos = tok.eos_token_id
            if self.append_eos and eos is not None and response_ids[-1:] != [eos]:
                response_ids = response_ids + [eos]
        return self._truncated(self._with_bos(prompt_ids), response_ids)

    def _with_bos(self, ids: list[int]) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] + ids if self._adds_bos and ids[:1] != [bos] else ids

    def _truncated(self, prompt_ids: list[int], response_ids: list[int]) -> list[int]:
        response_ids = response_ids[: self.max_length - 1]
        room = self.max_length - len(response_ids)
        if len(prompt_ids) > room:
            bos = self.tokenizer.bos_token_id
            head = prompt_ids[:1] if bos is not None and prompt_ids[:1] == [bos] else []  # room >= 1
            prompt_ids = head + prompt_ids[len(prompt_ids) - (room - len(head)):]
        return prompt_ids + response_ids

    def pad(self, sequences: list[list[int]], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (B, T) ``input_ids`` and ``attention_mask``: the scorer reads the last real token."""
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id or 0  # masked out either way
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return input_ids.to(device), attention_mask.to(device)

    @torch.no_grad()
    def score(self, model: nn.Module, prompts: list[Prompt], responses: list[str],
              batch_size: int | None = None) -> torch.Tensor:
        """(N,) float32 rewards from ``model(input_ids, attention_mask)``, on the model's device."""
        if not prompts:
            return torch.zeros(0)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        sequences = self.encode(prompts, responses)
        size = batch_size or len(sequences)
        scores = [
            model(*self.pad(sequences[start : start + size], device)).float().reshape(-1)
            for start in range(0, len(sequences), size)
        ]
        return torch.cat(scores)


def reward_inputs_of(reward_model: nn.Module, **overrides) -> RewardInputs:
    """The ``RewardInputs`` of a reward model: its own (``RewardScorer.inputs``) or, for another module with a
    ``tokenizer``, its limits and the defaults; then ``overrides`` that are not ``None``."""
    own = getattr(reward_model, "inputs", None)
    if isinstance(own, RewardInputs):
        settings = {"max_length": own.max_length, "chat_template": own.chat_template, "append_eos": own.append_eos}
    else:
        settings = {"max_length": default_max_length(reward_model, reward_model.tokenizer)}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return RewardInputs(reward_model.tokenizer, **settings)

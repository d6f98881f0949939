"""Judges: which of two responses to a prompt is better.

A ``Judge`` compares the policy's response with a reference response and returns a ``Verdict``: the probability
that the response beats the reference (1 or 0 for a judge that only names a winner, 0.5 for a tie) and, when the
judge is a reward model, both rewards. Write your own by subclassing ``Judge`` and implementing ``compare`` (or
``compare_batch`` when batching pays), then pass it to ``lit-align evaluate --judge my_package.MyJudge``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Verdict:
    """One comparison of a response with a reference.

    Attributes:
        win: P(response beats reference) in [0, 1]; a hard judge says 1, 0, or 0.5 for a tie.
        reward: The response's reward, when the judge is a reward model.
        reference_reward: The reference's reward, likewise.
    """

    win: float
    reward: float | None = None
    reference_reward: float | None = None


class Judge:
    """Compares a response with a reference for the same prompt.

    Nothing is loaded when a judge is built (configs parse without downloads); ``setup`` is called once before the
    first comparison, with the device the policy runs on.
    """

    def setup(self, device: torch.device) -> None:
        """Load what the judge needs onto ``device``."""

    def compare(self, prompt: str, response: str, reference: str) -> Verdict:
        """Judge one response against its reference."""
        raise NotImplementedError

    def compare_batch(self, prompts: list[str], responses: list[str], references: list[str]) -> list[Verdict]:
        """Judge many; the default asks ``compare`` one at a time."""
        return [self.compare(p, r, ref) for p, r, ref in zip(prompts, responses, references)]


class RewardModelJudge(Judge):
    """Scores response and reference with a reward model; the response wins with probability
    sigma(R(x, response) - R(x, reference)) (Bradley-Terry).

    The texts are tokenised with the reward model's own tokenizer: the prompt with its special tokens (BOS once),
    then the response, then EOS, where a lit-align reward model reads its score (the data encoder appends EOS to
    every completion the reward model was trained on).

    Args:
        reward_model: A lit-align ``RewardModel`` checkpoint (``.ckpt``), a directory or hub id of any Hugging Face
            sequence-classification model with one label, or ``tiny`` (a random head, for smoke tests); or, from
            Python, any module with ``forward(input_ids, attention_mask) -> (B,)`` and a ``tokenizer``.
        dtype: Weight dtype of the reward model (``bfloat16`` on GPU saves half the memory).
        trust_remote_code: Run model code shipped with the reward model's hub repository.
        batch_size: Sequences scored per forward pass.
        append_eos: End every response with the tokenizer's EOS before scoring.
        max_length: Longest prompt + response in tokens; longer prompts keep their end.
    """

    def __init__(
        self,
        reward_model: str | nn.Module = "tiny",
        dtype: str | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 16,
        append_eos: bool = True,
        max_length: int = 2048,
    ) -> None:
        self.reward_model = reward_model
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.batch_size = batch_size
        self.append_eos = append_eos
        self.max_length = max_length
        self._scorer: nn.Module | None = reward_model if isinstance(reward_model, nn.Module) else None

    def setup(self, device: torch.device) -> None:
        if self._scorer is None:
            from lit_align.reward_model import load_reward_model

            self._scorer = load_reward_model(str(self.reward_model), self.trust_remote_code, self.dtype)
        self._scorer.to(device).eval()

    @property
    def scorer(self) -> nn.Module:
        if self._scorer is None:
            self.setup(torch.device("cpu"))
        return self._scorer

    @torch.no_grad()
    def rewards(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """(N,) float32 rewards of the responses to the prompts."""
        scorer = self.scorer
        tokenizer = scorer.tokenizer
        device = next(scorer.parameters()).device
        sequences = []
        for prompt, response in zip(prompts, responses):
            prompt_ids = tokenizer(prompt, add_special_tokens=True).input_ids
            response_ids = tokenizer(response, add_special_tokens=False).input_ids
            if self.append_eos and tokenizer.eos_token_id is not None and response_ids[-1:] != [tokenizer.eos_token_id]:
                response_ids = response_ids + [tokenizer.eos_token_id]
            response_ids = response_ids[: self.max_length - 1]
            prompt_ids = prompt_ids[-(self.max_length - len(response_ids)) :]
            sequences.append(prompt_ids + response_ids)
        scores = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start : start + self.batch_size]
            width = max(len(s) for s in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, ids in enumerate(chunk):  # right padding: the reward is read at the last real token
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
            scores.append(scorer(input_ids.to(device), attention_mask.to(device)).float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def compare_batch(self, prompts: list[str], responses: list[str], references: list[str]) -> list[Verdict]:
        n = len(prompts)
        scores = self.rewards(prompts + prompts, responses + references)  # one pass over both halves
        reward, reference_reward = scores[:n], scores[n:]
        win = torch.sigmoid(reward - reference_reward)
        return [Verdict(float(w), float(r), float(rr)) for w, r, rr in zip(win, reward, reference_reward)]

    def compare(self, prompt: str, response: str, reference: str) -> Verdict:
        return self.compare_batch([prompt], [response], [reference])[0]

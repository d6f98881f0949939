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

from lit_align.rewards.dispatch import ModelReward, build_reward
from lit_align.rewards.inputs import ChatTemplateUse, Prompt, reward_inputs_of


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

    A prompt is the policy's text (its chat template's special tokens included, as ``lit-align predict`` writes
    it); a judge that sets ``reads_messages`` is given a conversation's prompt as its chat messages instead (a
    list of ``{role, content}`` dicts), where the data had them.
    """

    #: Whether prompts of conversational data come as their chat messages rather than as rendered text.
    reads_messages: bool = False

    def setup(self, device: torch.device) -> None:
        """Load what the judge needs onto ``device``."""

    def read_prompts_with(self, policy_tokenizer) -> None:
        """The prompts it will be given as text were written by ``policy_tokenizer``."""

    def compare(self, prompt: str, response: str, reference: str) -> Verdict:
        """Judge one response against its reference."""
        raise NotImplementedError

    def compare_batch(self, prompts: list[str], responses: list[str], references: list[str]) -> list[Verdict]:
        """Judge many; the default asks ``compare`` one at a time."""
        return [self.compare(p, r, ref) for p, r, ref in zip(prompts, responses, references)]


class RewardModelJudge(Judge):
    """Scores response and reference with a reward model; the response wins with probability
    sigma(R(x, response) - R(x, reference)) (Bradley-Terry).

    The texts are tokenised with the reward model's own tokenizer, through the reward dispatch the on-policy
    objectives use (``lit_align.rewards.dispatch``, ``lit_align.rewards.inputs.RewardInputs``): a plain-text prompt
    with BOS once, then the response, then EOS, where a lit-align reward model reads its score (the data encoder
    appends EOS to every completion the reward model was trained on); a prompt given as messages (it
    ``reads_messages``) is rendered with the reward model's chat template, the response as the assistant's turn.
    Once ``read_prompts_with(policy_tokenizer)`` has been called, a reward model with another tokenizer than the
    policy's reads a text prompt without the policy's special tokens.

    Args:
        reward_model: A lit-align ``RewardModeling`` checkpoint (``.ckpt``), a directory or hub id of any Hugging Face
            sequence-classification model with one label, or ``tiny`` (a random head, for smoke tests); or, from
            Python, any module with ``forward(input_ids, attention_mask) -> (B,)`` and a ``tokenizer``.
        dtype: Weight dtype of the reward model (``bfloat16`` on GPU saves half the memory).
        trust_remote_code: Run model code shipped with the reward model's hub repository.
        batch_size: Sequences scored per forward pass.
        append_eos: End every plain-text response with the tokenizer's EOS before scoring.
        max_length: Longest prompt + response in tokens; longer prompts keep their end.
        chat_template: When the reward model's chat template renders the text: ``auto`` (conversations),
            ``always`` (plain-text prompts too, as one user turn) or ``never``.
    """

    reads_messages = True

    def __init__(
        self,
        reward_model: str | nn.Module = "tiny",
        dtype: str | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 16,
        append_eos: bool = True,
        max_length: int = 2048,
        chat_template: ChatTemplateUse = "auto",
    ) -> None:
        self.reward_model = reward_model
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.batch_size = batch_size
        self.append_eos = append_eos
        self.max_length = max_length
        self.chat_template = chat_template
        self._scorer: nn.Module | None = reward_model if isinstance(reward_model, nn.Module) else None
        self._policy_tokenizer = None
        self._reward: ModelReward | None = None

    def read_prompts_with(self, policy_tokenizer) -> None:
        self._policy_tokenizer = policy_tokenizer
        self._reward = None

    def setup(self, device: torch.device) -> None:
        if self._scorer is None:
            from lit_align.rewards.model import load_reward_model

            self._scorer = load_reward_model(str(self.reward_model), self.trust_remote_code, self.dtype)
        self._scorer.to(device).eval()

    @property
    def scorer(self) -> nn.Module:
        if self._scorer is None:
            self.setup(torch.device("cpu"))
        return self._scorer

    @property
    def reward(self) -> ModelReward:
        """The reward model as the reward dispatch makes it for the policy's tokenizer, with this judge's input
        settings."""
        if self._reward is None:
            scorer = self.scorer
            inputs = reward_inputs_of(scorer, max_length=self.max_length, chat_template=self.chat_template,
                                      append_eos=self.append_eos)
            self._reward = build_reward(scorer, self._policy_tokenizer, inputs=inputs, batch_size=self.batch_size)
        return self._reward

    @torch.no_grad()
    def rewards(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        """(N,) float32 rewards of the responses to the prompts (text, or lists of messages)."""
        return self.reward.score_texts(prompts, responses).cpu()

    def compare_batch(self, prompts: list[Prompt], responses: list[str], references: list[str]) -> list[Verdict]:
        n = len(prompts)
        scores = self.rewards(prompts + prompts, responses + references)  # one pass over both halves
        reward, reference_reward = scores[:n], scores[n:]
        win = torch.sigmoid(reward - reference_reward)
        return [Verdict(float(w), float(r), float(rr)) for w, r, rr in zip(win, reward, reference_reward)]

    def compare(self, prompt: str, response: str, reference: str) -> Verdict:
        return self.compare_batch([prompt], [response], [reference])[0]

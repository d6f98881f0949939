"""One reward dispatch: what an objective is given as its reward becomes one callable that scores rollouts.

``build_reward(spec, policy_tokenizer)`` sorts out, once, what ``spec`` is and returns a ``Reward``,
``reward(rollout) -> (N,)`` float32 rewards of the rollout's rows on their device:

- reward functions (an import path ``module.function``, a ``RewardFunction``, a Python callable, or a list of
  them, summed; ``lit_align.rewards.functions``) -> ``FunctionReward``: the rows' text;
- a judge (an object with ``compare_batch(prompts, responses, references)``, e.g.
  ``lit_align.evaluation.judges.RewardModelJudge``; online DPO's ``judge``) -> ``JudgeReward``: rows 2i and 2i+1
  are compared, and score P(row 2i wins) and its complement;
- a reward model (a directory, hub id, ``.ckpt`` or ``tiny``, loaded frozen by
  ``lit_align.rewards.model.load_reward_model``; or any module ``forward(input_ids, attention_mask) -> (B,)``)
  whose ``tokenizer`` is the policy's (or that has none) -> ``ModelReward``: it reads the policy's ids as they are;
- a reward model with another tokenizer (vocabulary, chat template, BOS or EOS) -> ``RetokenizedReward``: each
  row's response is decoded, appended as the assistant's message to the prompt's chat messages
  (``rollout.prompt_messages``, kept from the data), and that conversation is rendered with the reward model's
  own chat template (``lit_align.rewards.inputs.RewardInputs``; plain text when it has none). A prompt without
  messages (plain-text data) is decoded from the policy's ids, special tokens skipped.

Rows become text through the one decoder of rollout rows, ``lit_align.generation.records.decode_rows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from lit_align.generation.records import decode_rows
from lit_align.generation.rollout import Rollout
from lit_align.rewards.functions import RewardFunctions, reward_functions_of
from lit_align.rewards.inputs import Prompt, RewardInputs, reads_policy_ids, reward_inputs_of
from lit_align.rewards.model import load_reward_model


class Reward:
    """Scores the rows of a rollout. ``module`` is what the objective registers, frozen (it follows the policy's
    device and is left out of checkpoints): the reward model or the reward functions; None for a judge."""

    module: nn.Module | None = None

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        """(N,) float32 rewards of the rollout's rows, on the rollout's device."""
        raise NotImplementedError

    def metrics(self) -> dict[str, torch.Tensor]:
        """Diagnostics of the rows scored last (reward functions' ``rewards/<name>/mean`` ...); none by default."""
        return {}


def build_reward(spec: Any, policy_tokenizer, owner: Any = None, inputs: RewardInputs | None = None,
                 batch_size: int | None = None) -> Reward:
    """The ``Reward`` of ``spec``: what an objective's ``reward_model`` (or online DPO's ``judge``) holds.

    Args:
        spec: Reward functions (import path(s), ``RewardFunction``, ``RewardFunctions``, callables), a judge, a
            reward model's source (directory, hub id, ``.ckpt``, ``tiny``), a reward model module, or a ``Reward``
            (returned as it is).
        policy_tokenizer: The tokenizer of the policy whose rows are scored.
        owner: The LightningModule whose step and epoch TRL-style reward functions see as ``trainer_state``.
        inputs: How a reward model of another tokenizer makes its inputs (default: its own settings).
        batch_size: Sequences a reward model of another tokenizer scores per forward (default: all at once).
    """
    if isinstance(spec, Reward):
        return spec
    if spec is None:
        raise ValueError("no reward to build: give a reward model, reward functions or a judge")
    if callable(getattr(spec, "compare_batch", None)) and not isinstance(spec, nn.Module):
        return JudgeReward(spec, policy_tokenizer)
    functions = reward_functions_of(spec)
    if functions is not None:
        return FunctionReward(functions, policy_tokenizer, owner)
    model = _reward_model(spec)
    if policy_tokenizer is None or reads_policy_ids(getattr(model, "tokenizer", None), policy_tokenizer):
        return ModelReward(model, policy_tokenizer, inputs, batch_size)
    return RetokenizedReward(model, policy_tokenizer, inputs, batch_size)


def _reward_model(spec: Any) -> nn.Module:
    if isinstance(spec, str):
        spec = load_reward_model(spec)
    if not isinstance(spec, nn.Module):
        raise TypeError(f"a reward is a reward model, reward functions or a judge, not a {type(spec).__name__}")
    return spec


def _frozen(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


# -- the text of rollout rows -----------------------------------------------------------------------------------


def row_messages(rollout: Rollout) -> list[list[dict] | None]:
    """The chat messages of each row's prompt (``rollout.prompt_messages[prompt_index[i]]``), None where the data
    gave a plain-text prompt."""
    if rollout.prompt_messages is None:
        return [None] * rollout.input_ids.shape[0]
    return [rollout.prompt_messages[i] for i in rollout.prompt_index.tolist()]


def rollout_texts(rollout: Rollout, tokenizer) -> tuple[list[Prompt], list[str]]:
    """Each row's prompt (its chat messages, or the text of a plain-text prompt, special tokens skipped) and its
    response (special tokens skipped: the policy's stop token goes, a reward model's template or EOS closes the turn
    again)."""
    rows = decode_rows(rollout, tokenizer, prompt_special_tokens=False)
    prompts = [m if m is not None else row.prompt for m, row in zip(row_messages(rollout), rows)]
    return prompts, [row.response for row in rows]


# -- the kinds ----------------------------------------------------------------------------------------------------


class ModelReward(Reward):
    """A reward model that reads the policy's ids as they are (the same tokenizer, or none).

    Args:
        model: ``forward(input_ids, attention_mask) -> (B,)``; frozen and put in eval mode here.
        policy_tokenizer: The policy's tokenizer (text given to ``score_texts`` is the policy's).
        inputs: How text becomes the model's ids (``score_texts``); by default its own settings.
        batch_size: Sequences per forward when scoring text (default: all at once).
    """

    def __init__(self, model: nn.Module, policy_tokenizer=None, inputs: RewardInputs | None = None,
                 batch_size: int | None = None) -> None:
        self.module = _frozen(model)
        self.policy_tokenizer = policy_tokenizer
        self._inputs = inputs
        self.batch_size = batch_size

    @property
    def inputs(self) -> RewardInputs:
        if self._inputs is None:
            self._inputs = reward_inputs_of(self.module)
        return self._inputs

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        return self.module(rollout.input_ids, rollout.attention_mask).float().reshape(-1)

    @torch.no_grad()
    def score_texts(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """(N,) float32 rewards of responses to prompts (text as the policy wrote it, or chat messages), on the
        model's device."""
        return self.inputs.score(self.module, list(prompts), list(responses), self.batch_size)


class RetokenizedReward(ModelReward):
    """A reward model with another tokenizer: each row as its prompt's messages (or text) and decoded response,
    rendered and tokenised by the reward model's own tokenizer (module docstring)."""

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        prompts, responses = rollout_texts(rollout, self.policy_tokenizer)
        return self.inputs.score(self.module, prompts, responses, self.batch_size).to(rollout.input_ids.device)

    def score_texts(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """As ``ModelReward.score_texts``; a text prompt, written by the policy's tokenizer (its chat template's
        special tokens included), is read without the policy's special tokens first."""
        return super().score_texts([self.plain_text(p) for p in prompts], responses)

    def plain_text(self, prompt: Prompt) -> Prompt:
        if not isinstance(prompt, str) or self.policy_tokenizer is None:
            return prompt
        tokenizer = self.policy_tokenizer
        return tokenizer.decode(tokenizer(prompt, add_special_tokens=False).input_ids, skip_special_tokens=True)


class FunctionReward(Reward):
    """Reward functions of the rows' text (``lit_align.rewards.functions``): the prompt decoded without special
    tokens (and its chat messages, for TRL's conversational form), the response decoded likewise.

    Args:
        functions: The weighted functions.
        policy_tokenizer: The policy's tokenizer, which decodes the rows.
        owner: The LightningModule whose step and epoch TRL-style functions see as ``trainer_state``.
    """

    def __init__(self, functions: RewardFunctions, policy_tokenizer, owner: Any = None) -> None:
        self.module = _frozen(functions)
        self.policy_tokenizer = policy_tokenizer
        self.owner = owner

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        ids, keep = rollout.input_ids.cpu(), rollout.completion_mask.cpu().bool()
        completion_ids = [row[kept].tolist() for row, kept in zip(ids, keep)]
        rows = decode_rows(rollout, self.policy_tokenizer, prompt_special_tokens=False)
        rewards = self.module([row.prompt for row in rows], [row.response for row in rows], completion_ids,
                              prompt_messages=row_messages(rollout), trainer_state=trainer_state_of(self.owner))
        return rewards.to(rollout.input_ids.device)

    def metrics(self) -> dict[str, torch.Tensor]:
        return self.module.metrics()


def trainer_state_of(module: Any) -> SimpleNamespace | None:
    """TRL's ``trainer_state`` (``global_step``, ``epoch``, ``max_steps``) of a LightningModule, None without one."""
    if module is None:
        return None
    trainer = getattr(module, "_trainer", None)
    return SimpleNamespace(global_step=module.global_step, epoch=module.current_epoch,
                           max_steps=trainer.max_steps if trainer is not None else -1)


class JudgeReward(Reward):
    """A judge's preference within each pair of rows (2i, 2i+1, the samples of prompt i): P(row 2i wins) for row 2i
    and its complement for row 2i+1.

    The judge gets each pair's prompt as the policy's text with its chat template's special tokens
    (``lit_align.generation.records.prompt_text``, what ``lit-align evaluate`` gives judges), or as its chat
    messages when the judge reads them (``reads_messages``) and the data had them; it is set up on the rows'
    device and told the policy's tokenizer (``read_prompts_with``) before its first comparison.

    Args:
        judge: A ``lit_align.evaluation.judges.Judge`` (or anything with its ``compare_batch``).
        policy_tokenizer: The policy's tokenizer.
    """

    def __init__(self, judge: Any, policy_tokenizer) -> None:
        self.judge = judge
        self.policy_tokenizer = policy_tokenizer
        self._ready = False

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        device = rollout.input_ids.device
        if not self._ready:
            self.judge.setup(device)
            self.judge.read_prompts_with(self.policy_tokenizer)
            self._ready = True
        rows = decode_rows(rollout, self.policy_tokenizer)  # prompts as lit-align predict writes them
        messages = row_messages(rollout)
        reads_messages = getattr(self.judge, "reads_messages", False)
        prompts = [messages[i] if reads_messages and messages[i] is not None else rows[i].prompt
                   for i in range(0, len(rows), 2)]
        responses = [row.response for row in rows]
        verdicts = self.judge.compare_batch(prompts, responses[0::2], responses[1::2])
        first_wins = torch.tensor([v.win for v in verdicts], dtype=torch.float32)
        return torch.stack([first_wins, 1 - first_wins], 1).reshape(-1).to(device)

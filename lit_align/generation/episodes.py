"""Multi-turn episodes: the policy and an environment take turns; each episode becomes one row of a ``Rollout``.

``run_episodes`` spawns one environment per episode (``num_samples`` per prompt row), renders its opening messages
with the tokenizer's chat template (``lit_align.environments.render.EpisodeTokens``), and then, for all unfinished
episodes at once, samples one policy turn, steps the environment with its text and appends the environment's
answer and the next generation prompt, until every episode is done or has spent its token budget
(``Environment.max_tokens``: tokens the policy writes over all its turns; ``max_turns`` is the environment's).

The row of an episode is its left-padded opening prompt followed by everything after it, right-padded:
``completion_mask`` is 1 on all of it (the policy reads the tool results as context), ``policy_mask`` only on the
tokens the policy sampled (tool results, environment turns and the template's own tokens are 0, so no loss, KL or
entropy term reaches them), ``engine_logps`` the sampler's log-probs at the policy's tokens (0 elsewhere) when it
reports them. The episode's reward is the sum of its step rewards.

Sampling is a callable, so that this module needs no policy: ``SampleTurns`` maps the token ids of each unfinished
episode so far to one turn each; ``turns_from_generate`` makes one from a ``PolicyWithReference.generate``-like
function ``(prompt_ids, prompt_mask, sampling, num_samples) -> Rollout``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from lit_align.environments.base import Environment, Message
from lit_align.environments.render import EpisodeTokens
from lit_align.generation.rollout import Rollout, SamplingConfig


@dataclass
class Turn:
    """One sampled policy turn: its token ids (ending with the stop token when the policy stopped) and, when the
    sampler reports them, the log-probability of each."""

    token_ids: list[int]
    logps: list[float] | None = None


SampleTurns = Callable[[list[list[int]], int], list[Turn]]
"""``(sequences, max_new_tokens) -> turns``: one turn of at most ``max_new_tokens`` tokens after each sequence."""


@dataclass
class EpisodeRollout(Rollout):
    """The rollout of multi-turn episodes: a ``Rollout`` that carries what the environment said of each row.

    Attributes:
        rewards: (N,) float32 episode returns, the sum of the step rewards: the episodes' scores.
        turns: (N,) policy turns taken.
    """

    rewards: torch.Tensor | None = None
    turns: torch.Tensor | None = None


@dataclass
class Episodes:
    """The episodes of a batch of prompt rows (row ``i * num_samples + j``: episode j of prompt row i).

    Attributes:
        rollout: the token rows with ``completion_mask``, ``policy_mask``, ``engine_logps`` (module doc), the
            returns and turns; ``ended``: the environment ended the episode by its own rule (not a budget).
        messages: each episode's chat messages, the policy's included.
    """

    rollout: EpisodeRollout
    messages: list[list[Message]]

    @property
    def rewards(self) -> torch.Tensor:
        return self.rollout.rewards

    @property
    def turns(self) -> torch.Tensor:
        return self.rollout.turns


class _Episode:
    """One running episode: its environment, tokens, log-probs and return."""

    def __init__(self, environment: Environment, row: dict[str, Any], tokenizer: Any) -> None:
        self.env = environment
        self.tokens = EpisodeTokens(tokenizer, environment.reset(row), environment.tools)
        self.opening = list(self.tokens.messages)
        self.logps: list[float] = [0.0] * len(self.tokens.input_ids)
        self.reward = 0.0
        self.turns = 0
        self.reported = True  # every turn came with its log-probs
        self.ended = False
        self.running = True

    @property
    def budget(self) -> int:
        return self.env.max_tokens - self.tokens.policy_tokens

    def play(self, turn: Turn) -> None:
        """Append the policy's turn (cut to the token budget), step the environment, append its answer."""
        budget = self.budget
        ids = list(turn.token_ids[:budget])
        self.logps += list(turn.logps[:budget]) if turn.logps is not None else [0.0] * len(ids)
        self.reported &= turn.logps is not None
        text = self.tokens.add_policy(ids)
        self.turns += 1
        if len(turn.token_ids) > budget:  # cut mid-turn: the budget ends the episode, the message is not answered
            self.running = False
            return
        step = self.env.step(text)
        self.reward += step.reward
        if step.done:
            self.running, self.ended = False, not step.truncated
            return
        if self.budget <= 0:
            self.running = False
            return
        delta = self.tokens.add_environment(step.messages)
        self.logps += [0.0] * len(delta)


def run_episodes(sample_turns: SampleTurns, environment: Environment, rows: Sequence[dict[str, Any]],
                 tokenizer: Any, num_samples: int = 1, sampling: SamplingConfig | None = None) -> Episodes:
    """Play ``num_samples`` episodes of ``environment`` (spawned per episode) from each prompt row.

    Args:
        sample_turns: samples one policy turn for each unfinished episode (``SampleTurns``).
        environment: the environment (its configuration: each episode plays a ``spawn``ed copy).
        rows: the prompt rows (``Environment.reset``'s argument).
        tokenizer: the policy's tokenizer, with its chat template; its pad token pads the rows.
        num_samples: episodes per prompt row.
        sampling: how the turns were sampled (recorded in the rollout).

    The rollout has ``engine_logps`` when every turn came with its log-probs.
    """
    episodes = [_Episode(environment.spawn(), dict(row), tokenizer) for row in rows for _ in range(num_samples)]
    while running := [e for e in episodes if e.running]:
        turns = sample_turns([e.tokens.input_ids for e in running], max(e.budget for e in running))
        if len(turns) != len(running):
            raise ValueError(f"sample_turns answered {len(turns)} turns for {len(running)} episodes")
        for episode, turn in zip(running, turns):
            episode.play(turn)
    rollout = _layout(episodes, tokenizer.pad_token_id, num_samples, sampling)
    return Episodes(rollout, [e.tokens.messages for e in episodes])


def _layout(episodes: list[_Episode], pad: int, num_samples: int,
            sampling: SamplingConfig | None) -> EpisodeRollout:
    """Left-padded opening prompts, then the rest of each episode right-padded."""
    width = max(e.tokens.prompt_length for e in episodes)
    length = max(len(e.tokens.input_ids) - e.tokens.prompt_length for e in episodes)
    n = len(episodes)
    input_ids = torch.full((n, width + length), pad, dtype=torch.long)
    attention_mask = torch.zeros((n, width + length), dtype=torch.long)
    completion_mask, policy_mask = torch.zeros_like(attention_mask), torch.zeros_like(attention_mask)
    engine_logps = torch.zeros((n, width + length), dtype=torch.float32)
    for row, e in enumerate(episodes):
        p, total = e.tokens.prompt_length, len(e.tokens.input_ids)
        cols = slice(width - p, width - p + total)  # (total,) columns of this episode's tokens
        input_ids[row, cols] = torch.tensor(e.tokens.input_ids)
        attention_mask[row, cols] = 1
        completion_mask[row, width : width - p + total] = 1
        policy_mask[row, cols] = torch.tensor(e.tokens.policy_mask)
        engine_logps[row, cols] = torch.tensor(e.logps)
    prompt_index = torch.arange(n) // num_samples
    opening = [episodes[i * num_samples].opening for i in range(n // num_samples)]
    return EpisodeRollout(
        input_ids, attention_mask, completion_mask, width, torch.tensor([e.ended for e in episodes]), prompt_index,
        sampling=sampling, prompt_messages=opening, policy_mask=policy_mask,
        engine_logps=engine_logps * policy_mask if all(e.reported for e in episodes) else None,
        rewards=torch.tensor([e.reward for e in episodes], dtype=torch.float32),
        turns=torch.tensor([e.turns for e in episodes]))


def prompt_rows(batch: dict[str, Any], tokenizer: Any, columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The prompt rows of a batch for ``Environment.reset``: ``prompt`` is the text of the last user message when
    the batch has the prompt's ``prompt_messages`` (then ``messages`` holds them), else the decoded prompt tokens;
    each of ``columns`` is the row's value of that declared data column (``batch[name]``)."""
    messages = batch.get("prompt_messages")
    rows = []
    for i, (ids, mask) in enumerate(zip(batch["prompt_ids"], batch["prompt_mask"])):
        if messages is not None and messages[i] is not None:
            users = [m["content"] for m in messages[i] if m.get("role") == "user"]
            row = {"prompt": users[-1] if users else "", "messages": messages[i]}
        else:
            row = {"prompt": tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True).strip()}
        rows.append(row | {name: batch[name][i].item() for name in columns})
    return rows


Generate = Callable[[torch.Tensor, torch.Tensor, SamplingConfig, int], Rollout]


def turns_from_generate(generate: Generate, sampling: SamplingConfig, pad_token_id: int) -> SampleTurns:
    """A ``SampleTurns`` from a ``PolicyWithReference.generate``-like function: the sequences left-padded into one
    batch, at most ``min(sampling.max_new_tokens, max_new_tokens)`` new tokens, one sample each; each turn is the
    response through its first stop token, with the engine's log-probs when the rollout has them."""

    def sample(sequences: list[list[int]], max_new_tokens: int) -> list[Turn]:
        width = max(len(s) for s in sequences)
        prompt_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros_like(prompt_ids)
        for row, ids in enumerate(sequences):
            prompt_ids[row, width - len(ids):] = torch.tensor(ids)
            prompt_mask[row, width - len(ids):] = 1
        new = min(sampling.max_new_tokens, max_new_tokens)
        turn_sampling = dataclasses.replace(sampling, max_new_tokens=new,
                                            min_new_tokens=min(sampling.min_new_tokens, new))
        rollout = generate(prompt_ids, prompt_mask, turn_sampling, 1)
        turns = []
        for row in range(len(sequences)):
            keep = rollout.response_mask[row].bool()
            ids = rollout.response_ids[row][keep].tolist()
            logps = None
            if rollout.engine_logps is not None:
                logps = rollout.engine_logps[row, rollout.prompt_length:][keep].tolist()
            turns.append(Turn(ids, logps))
        return turns

    return sample

"""Where an on-policy objective's rollouts come from: inline or ahead of the trainer (``max_staleness``), single
responses or multi-turn episodes (``environment``).

``SamplingLoop`` drives a ``lit_align.generation.async_rollouts`` source for the objective: each training step
submits its batch and gets back the rollouts to train on (none while an asynchronous pipeline fills; at the last
batch of an epoch, every batch still in flight). With ``max_staleness > 0`` the worker thread samples from a
``GenerationCopy`` of the policy's weights (docs/onpolicy.md, "Asynchronous generation"). ``play_episodes`` turns
a batch of prompts into an ``EpisodeRollout`` through ``lit_align.generation.episodes``.
"""

from __future__ import annotations

import copy
import threading
from contextlib import nullcontext
from typing import Any, Protocol

import torch

from lit_align.errors import UserError
from lit_align.generation.async_rollouts import RolloutSource, Sampled, rollout_source
from lit_align.generation.episodes import EpisodeRollout, prompt_rows, run_episodes, turns_from_generate



class SamplingHost(Protocol):
    """What the sampling loop reads of the on-policy objective that owns it (``OnPolicyObjective``; a protocol, so
    that this module, which the objective imports, never imports it back)."""

    policy: Any
    trainer: Any
    sampling: Any
    environment: Any
    num_samples: int
    epochs_per_batch: int
    mini_batches: int
    max_staleness: int
    global_step: int

    def sample_responses(self, batch: dict[str, Any]) -> Any: ...


class GenerationCopy:
    """A copy of the policy that the rollout worker samples from, refreshed from the trained weights (under the
    weights lock) before each batch it samples: one more set of the policy model's weights in memory.

    ``policy`` is a shallow copy of the ``PolicyWithReference`` whose ``policy`` module is a deep copy of the
    trained one (the reference and the generation backend are shared), so its ``generate`` samples from the copy;
    it has a tokenizer of its own (a fast tokenizer is not safe to share between threads). ``activate`` is per
    thread: only the worker thread, which calls it, sees the copy.
    """

    def __init__(self, policy: Any) -> None:
        self.source = policy.policy
        self.model = copy.deepcopy(policy.policy).requires_grad_(False)
        self.policy = copy.copy(policy)
        self.policy._modules = dict(policy._modules, policy=self.model)
        self.policy.tokenizer = copy.deepcopy(policy.tokenizer)
        self._local = threading.local()

    def refresh(self) -> None:
        with torch.no_grad():
            for mine, trained in zip(self.model.parameters(), self.source.parameters()):
                mine.copy_(trained)

    def activate(self) -> None:
        self._local.active = True

    def current(self, policy: Any) -> Any:
        """The copy on the worker thread, ``policy`` everywhere else."""
        return self.policy if getattr(self._local, "active", False) else policy


def play_episodes(objective: SamplingHost, batch: dict[str, Any], policy: Any) -> EpisodeRollout:
    """``num_samples`` episodes of the objective's environment per prompt of ``batch``, sampled from ``policy``
    (a ``PolicyWithReference``, whose tokenizer renders the episodes)."""
    environment, tokenizer = objective.environment, policy.tokenizer
    sample = turns_from_generate(policy.generate, objective.sampling, tokenizer.pad_token_id)
    rows = prompt_rows(batch, tokenizer, list(environment.data_columns))
    return run_episodes(sample, environment, rows, tokenizer, objective.num_samples, objective.sampling).rollout


class SamplingLoop:
    """The objective's rollout source and what a checkpoint keeps of it.

    Args:
        objective: the on-policy objective (its ``sample_responses`` samples a batch; its ``max_staleness``,
            ``epochs_per_batch`` and ``mini_batches`` set the pace).
    """

    def __init__(self, objective: SamplingHost) -> None:
        self.objective = objective
        self.copy: GenerationCopy | None = None
        self.source: RolloutSource | None = None
        self.requeued: list[Any] = []  # a resumed run's pending batches, submitted before the next one

    def start(self) -> RolloutSource:
        """The source, made at the first step (weights on their device, the version that of the trainer)."""
        if self.source is not None:
            return self.source
        objective = self.objective
        steps = objective.epochs_per_batch * objective.mini_batches
        if objective.max_staleness == 0:
            self.source = rollout_source(objective.sample_responses, version=objective.global_step)
            return self.source
        if objective.trainer.world_size > 1:
            raise UserError(f"max_staleness={objective.max_staleness} samples on a worker thread, which runs on one "
                            "device only (sharded generation is a collective of every rank): set max_staleness: 0")
        self.copy = GenerationCopy(objective.policy)

        def sample_ahead(batch):
            self.copy.activate()
            return objective.sample_responses(batch)

        self.source = rollout_source(sample_ahead, objective.max_staleness, steps, refresh=self.copy.refresh,
                                     version=objective.global_step)
        return self.source

    def policy(self) -> Any:
        """The policy that samples on this thread: the generation copy on the worker, else the trained one."""
        return self.objective.policy if self.copy is None else self.copy.current(self.objective.policy)

    def step(self, batch: Any, last_of_epoch: bool) -> list[Sampled]:
        """Submit ``batch`` (after any re-queued ones); the batches to train on now, oldest first."""
        source = self.start()
        for pending in self.requeued:
            source.submit(pending)
        self.requeued = []
        source.submit(batch)
        ready = [sampled] if (sampled := source.next()) is not None else []
        while last_of_epoch and (sampled := source.next(drain=True)) is not None:
            ready.append(sampled)
        return ready

    def weights_update(self):
        """Around each optimizer step: the worker never reads half-updated weights; the version counts it."""
        return nullcontext() if self.source is None else self.source.weights_update()

    def state_dict(self) -> dict[str, Any]:
        """The batches submitted and not trained on yet (module doc of ``async_rollouts``)."""
        pending = self.requeued + (self.source.pending() if self.source is not None else [])
        return {"pending": pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.requeued = list(state.get("pending", []))

    def close(self) -> None:
        """Stop the worker; batches not trained on stay in ``state_dict`` for a checkpoint taken later."""
        if self.source is not None:
            self.requeued = self.state_dict()["pending"]
            self.source.close()
            self.source = None

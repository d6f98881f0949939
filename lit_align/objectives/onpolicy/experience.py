"""The working data of an on-policy update: what was sampled, how it scored, and what the sampling-time policy and
the reference made of it, one row per response.

``Experience`` holds the fields every on-policy objective has; an objective that needs more declares them in a
subclass (``RLHF``'s values, advantages and returns, ``GRPO``'s advantages) and builds it from the base with
``extend``. Mini-batches are cut with ``rows``. Per-token tensors are (N, T-1), aligned like
``lit_align.models.logprobs.completion_token_logprobs`` (column t scores token t + 1), zero off the response.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

import torch

from lit_align.generation.rollout import Rollout, select_rows
from lit_align.losses.importance import ImportanceCorrection, ImportanceWeights

E = TypeVar("E", bound="Experience")


@dataclass(kw_only=True)
class Experience:
    """One batch of sampled responses ready for the updates. Row ``i * k + j`` is sample j of prompt i.

    Attributes:
        rollout: The sampled rows (ids, masks, ``ended``, ``prompt_index``) and how they were drawn
            (``rollout.sampling``: every log-prob of these rows is taken at its temperature).
        scores: (N,) the reward of every row, after the missing-EOS penalty.
        old_logps: (N, T-1) per-token log-probs of the sampling-time policy.
        response_mask: (N, T-1) bool, the tokens a loss trains on (the policy's own tokens).
        ref_logps: (N, T-1) per-token log-probs of the reference pi_0; None when the objective runs without one.
        importance: The engine/trainer mismatch correction of every token (``importance_weights`` of the
            sampling-time log-probs against ``rollout.engine_logps``), None when the objective corrects nothing.
        correction: The correction's settings (``importance_correction``), None when it corrects nothing.
    """

    rollout: Rollout
    scores: torch.Tensor
    old_logps: torch.Tensor
    response_mask: torch.Tensor
    ref_logps: torch.Tensor | None = None
    importance: ImportanceWeights | None = None
    correction: ImportanceCorrection | None = None

    # -- the rollout's rows, for short -------------------------------------------------------------------------

    @property
    def input_ids(self) -> torch.Tensor:
        return self.rollout.input_ids

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.rollout.attention_mask

    @property
    def completion_mask(self) -> torch.Tensor:
        return self.rollout.completion_mask

    @property
    def ended(self) -> torch.Tensor:
        return self.rollout.ended

    @property
    def prompt_index(self) -> torch.Tensor:
        return self.rollout.prompt_index

    @property
    def temperature(self) -> float:
        """The temperature the rows were sampled at: the one every log-prob of them is taken at."""
        return self.rollout.sampling.temperature

    @property
    def num_rows(self) -> int:
        return self.rollout.input_ids.shape[0]

    # -- slicing and extending ---------------------------------------------------------------------------------

    def rows(self: E, index: torch.Tensor) -> E:
        """The experience of the rows ``index`` (a mini-batch): every per-row field, the rollout's included."""
        return select_rows(self, index)

    def extend(self, cls: type[E], **fields) -> E:
        """This experience as the subclass ``cls``, with its additional ``fields``."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return cls(**own, **fields)

    def loss_mask(self) -> torch.Tensor:
        """The tokens whose policy-gradient terms count: ``response_mask`` less what a masking correction dropped."""
        return self.response_mask if self.importance is None else self.importance.keep

    def token_weights(self) -> torch.Tensor | None:
        """(N, T-1) the correction's factor of each token's policy-gradient term, None without a correction."""
        return None if self.importance is None else self.importance.weights

    def sequence_weights(self) -> torch.Tensor | None:
        """(N,) one factor per row for a loss with one policy-gradient term per sequence, None without a
        correction: the product of the row's token weights (a sequence mode's weight is the same on each of its
        tokens, so it is taken once; a token a masking mode dropped drops the row, whose term cannot be split)."""
        if self.importance is None:
            return None
        weights, mask = self.importance.weights, self.response_mask
        if self.correction.sequence_level:
            return weights.amax(-1)
        return torch.where(mask, weights, torch.ones_like(weights)).log().sum(-1).exp()

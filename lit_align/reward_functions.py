"""Rewards computed by Python functions of the decoded text, as well as by reward models.

A reward function scores the responses to prompts as text::

    def my_reward(prompts: list[str], responses: list[str]) -> list[float]: ...

and is named in a config by its import path, wherever an on-policy objective takes its ``reward_model``::

    reward_model: my_module.my_reward                    # one function
    reward_model: [my_module.correct, my_module.short]   # several, summed
    reward_model:                                        # with weights
      - {class_path: lit_align.reward_functions.RewardFunction, init_args: {path: my_module.correct, weight: 2.0}}
      - {class_path: lit_align.reward_functions.RewardFunction, init_args: {path: my_module.short, weight: 0.5}}

Rows are decoded with the policy's tokenizer, special tokens skipped: the prompt is every real token before the
response, the response the tokens of ``completion_mask``. A function may return ``None`` for a row it has no
opinion on: the row's reward is then the weighted sum of the other functions' (0 when none has one).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

TextReward = Callable[[list[str], list[str]], Sequence[float | None]]
_IMPORT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def import_function(path: str) -> TextReward:
    """The callable at ``path`` (``package.module.name``), with an error naming what could not be imported."""
    module_name, _, name = path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"reward function {path!r} cannot be imported ({error}): give module.function of a "
                         "module on the Python path") from error
    if not callable(function):
        raise ValueError(f"reward function {path!r} is a {type(function).__name__}, not a callable")
    return function


def is_function_path(source: str) -> bool:
    """Whether ``source`` names a Python callable (``module.function``) rather than a reward model: a dotted
    import path that is no file or directory and no ``.ckpt``."""
    return (bool(_IMPORT_PATH.fullmatch(source)) and not source.endswith(".ckpt")
            and not Path(source).expanduser().exists())


class RewardFunction(nn.Module):
    """One reward function with its weight.

    Args:
        path: Import path of ``fn(prompts: list[str], responses: list[str]) -> list[float]``, e.g.
            ``my_module.my_reward``.
        weight: Its weight in the sum of every reward function of the objective.
    """

    def __init__(self, path: str, weight: float = 1.0) -> None:
        super().__init__()
        self.path = path
        self.weight = weight
        self.function = import_function(path)

    def forward(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """(N,) float32 rewards; NaN where the function returned None."""
        values = list(self.function(prompts, responses))
        if len(values) != len(responses):
            raise ValueError(f"reward function {self.path!r} returned {len(values)} rewards for {len(responses)} "
                             "responses")
        return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)


class RewardFunctions(nn.Module):
    """The weighted sum of reward functions, scoring rows of policy token ids by their decoded text; what an
    on-policy objective holds as its ``reward_model`` when it is given functions.

    Args:
        functions: The reward functions (``RewardFunction``, or import paths with weight 1).
    """

    def __init__(self, functions: Sequence[RewardFunction | str]) -> None:
        super().__init__()
        if not functions:
            raise ValueError("give at least one reward function")
        for f in functions:
            if not isinstance(f, (RewardFunction, str)):
                raise TypeError(f"a list of rewards holds reward functions (import paths or RewardFunction), not a "
                                f"{type(f).__name__}: give a reward model on its own")
        self.functions = nn.ModuleList(f if isinstance(f, RewardFunction) else RewardFunction(f) for f in functions)
        self.tokenizer = None  # the policy's, set by bind(): reads the policy's own ids

    def bind(self, tokenizer) -> None:
        """Decode rows with ``tokenizer`` (the policy's)."""
        self.tokenizer = tokenizer

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               completion_mask: torch.Tensor) -> tuple[list[str], list[str]]:
        """Prompt and response text of every row, special tokens skipped."""
        if self.tokenizer is None:
            raise RuntimeError("RewardFunctions.bind(tokenizer) must be called before scoring")
        ids = input_ids.cpu()
        response = completion_mask.cpu().bool()
        prompt = attention_mask.cpu().bool() & ~response
        decode = self.tokenizer.decode
        return ([decode(ids[i][prompt[i]].tolist(), skip_special_tokens=True) for i in range(ids.shape[0])],
                [decode(ids[i][response[i]].tolist(), skip_special_tokens=True) for i in range(ids.shape[0])])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                completion_mask: torch.Tensor) -> torch.Tensor:
        """(N,) float32 weighted sum of the functions' rewards of the rows, on the rows' device."""
        prompts, responses = self.decode(input_ids, attention_mask, completion_mask)
        rewards = torch.stack([f.weight * f(prompts, responses) for f in self.functions])  # (functions, N)
        return rewards.nansum(0).to(input_ids.device)


def reward_functions_of(reward_model) -> RewardFunctions | None:
    """``reward_model`` as ``RewardFunctions`` when it names functions (an import path, a ``RewardFunction``, or a
    list of them); None when it is a reward model (a directory, hub id, ``.ckpt`` or module)."""
    if isinstance(reward_model, RewardFunctions):
        return reward_model
    if isinstance(reward_model, RewardFunction):
        return RewardFunctions([reward_model])
    if isinstance(reward_model, str):
        return RewardFunctions([reward_model]) if is_function_path(reward_model) else None
    if isinstance(reward_model, (list, tuple)):
        return RewardFunctions(list(reward_model))
    return None

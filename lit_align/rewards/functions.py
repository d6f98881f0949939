"""Rewards computed by Python functions of the decoded text, as well as by reward models.

A reward function scores the responses to prompts as text, with lit-align's signature or TRL's::

    def my_reward(prompts: list[str], responses: list[str]) -> list[float]: ...
    def trl_reward(completions, prompts=None, completion_ids=None, **kwargs) -> list[float]: ...  # TRL's

A function whose parameters name ``completions`` is called TRL's way, by keyword (``prompts``, ``completions``,
``completion_ids``, ``trainer_state`` (``global_step``, ``epoch``, ``max_steps``), ``log_metric`` (logged under its
name), ``log_extra`` (ignored: no completions table), as many as it accepts; TRL's dataset columns are not passed):
copied from TRL's docs, it runs unchanged. Its completions are plain strings, or with ``conversational: true``
(``RewardFunction``) TRL's conversational form: each completion ``[{"role": "assistant", "content": text}]`` and
each prompt its chat messages as the data gave them (conversational data), or ``[{"role": "user", "content":
text}]`` with the prompt's decoded text (plain-text data).

and is named in a config by its import path, wherever an on-policy objective takes its ``reward_model``::

    reward_model: my_module.my_reward                    # one function
    reward_model: [my_module.correct, my_module.short]   # several, summed
    reward_model:                                        # with weights
      - {class_path: lit_align.rewards.functions.RewardFunction, init_args: {path: my_module.correct, weight: 2.0}}
      - {class_path: lit_align.rewards.functions.RewardFunction, init_args: {path: my_module.short, weight: 0.5}}

Rows are decoded with the policy's tokenizer, special tokens skipped (``lit_align.rewards.dispatch``): the prompt
is every real token before the response, the response the tokens of ``completion_mask``. A function may return
``None`` for a row it has no opinion on: the row's reward is then the weighted sum of the other functions' (0 when
none has one; TRL gives such a row no advantage instead). Each function's rewards are logged as
``rewards/<name>/mean`` and ``rewards/<name>/std`` (TRL's names; ``<name>`` the function's own), beside the
objective's total.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

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
        path: Import path of ``fn(prompts: list[str], responses: list[str]) -> list[float]``, or of a function with
            TRL's signature ``fn(completions, prompts=..., **kwargs)``, e.g. ``my_module.my_reward``.
        weight: Its weight in the sum of every reward function of the objective.
        conversational: Give a TRL-style function TRL's conversational form (lists of messages) instead of strings.
    """

    def __init__(self, path: str, weight: float = 1.0, conversational: bool = False) -> None:
        super().__init__()
        self.path = path
        self.weight = weight
        self.conversational = conversational
        self.function = import_function(path) if isinstance(path, str) else path
        self.name = getattr(self.function, "__name__", None) or str(path).rpartition(".")[2]
        parameters = inspect.signature(self.function).parameters
        self.trl_style = "completions" in parameters
        self.accepts = (None if any(p.kind is p.VAR_KEYWORD for p in parameters.values())
                        else set(parameters))  # None: any keyword

    @classmethod
    def of(cls, function, weight: float = 1.0, conversational: bool = False) -> RewardFunction:
        """A reward function given as a Python callable (in code; a config names an import path)."""
        return cls(function, weight, conversational)

    def call(self, prompts: list[str], responses: list[str], completion_ids: list[list[int]] | None = None,
             prompt_messages: list[list[dict] | None] | None = None, **context):
        """The function's values for the rows, called its own way (lit-align's positional or TRL's keywords, with
        TRL's ``trainer_state``, ``log_metric`` and ``log_extra`` in ``context``). In TRL's conversational form a
        prompt is its chat messages where ``prompt_messages`` has them, else its text as one user turn."""
        if not self.trl_style:
            return self.function(prompts, responses)
        if self.conversational:
            messages = prompt_messages or [None] * len(prompts)
            prompts = [m if m is not None else [{"role": "user", "content": p}] for p, m in zip(prompts, messages)]
            responses = [[{"role": "assistant", "content": r}] for r in responses]
        arguments = {"prompts": prompts, "completions": responses, "completion_ids": completion_ids, **context}
        return self.function(**{k: v for k, v in arguments.items() if self.accepts is None or k in self.accepts})

    def forward(self, prompts: list[str], responses: list[str], completion_ids: list[list[int]] | None = None,
                prompt_messages: list[list[dict] | None] | None = None, **context) -> torch.Tensor:
        """(N,) float32 rewards; NaN where the function returned None."""
        values = list(self.call(prompts, responses, completion_ids, prompt_messages, **context))
        if len(values) != len(responses):
            raise ValueError(f"reward function {self.path!r} returned {len(values)} rewards for {len(responses)} "
                             "responses")
        return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)


class RewardFunctions(nn.Module):
    """The weighted sum of reward functions of the rows' text; what an on-policy objective holds as its
    ``reward_model`` when it is given functions (``lit_align.rewards.dispatch.FunctionReward`` decodes the rows).

    Args:
        functions: The reward functions (``RewardFunction``, or import paths with weight 1).
    """

    def __init__(self, functions: Sequence[RewardFunction | str]) -> None:
        super().__init__()
        if not functions:
            raise ValueError("give at least one reward function")
        functions = [RewardFunction.of(f) if callable(f) and not isinstance(f, nn.Module) else f for f in functions]
        for f in functions:
            if not isinstance(f, (RewardFunction, str)):
                raise TypeError(f"a list of rewards holds reward functions (import paths or RewardFunction), not a "
                                f"{type(f).__name__}: give a reward model on its own")
        self.functions = nn.ModuleList(f if isinstance(f, RewardFunction) else RewardFunction(f) for f in functions)
        names = [f.name for f in self.functions]
        self.names = [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
        self.last: dict[str, torch.Tensor] = {}  # each function's rewards of the last rows scored (unweighted)
        self.logged: dict[str, list[float]] = {}  # what TRL-style functions logged with log_metric since then

    def forward(self, prompts: list[str], responses: list[str], completion_ids: list[list[int]] | None = None,
                prompt_messages: list[list[dict] | None] | None = None,
                trainer_state: SimpleNamespace | None = None) -> torch.Tensor:
        """(N,) float32 weighted sum of the functions' rewards of the rows (prompt and response text, the
        response's token ids, the prompt's chat messages where the data had them); ``trainer_state`` is what
        TRL-style functions receive as theirs."""
        self.logged = {}
        context = {"trainer_state": trainer_state,
                   "log_metric": lambda name, value: self.logged.setdefault(name, []).append(float(value)),
                   "log_extra": lambda column, values: None}  # TRL's completions table: none here
        values = [f(prompts, responses, completion_ids, prompt_messages, **context) for f in self.functions]
        self.last = dict(zip(self.names, values))
        rewards = torch.stack([f.weight * v for f, v in zip(self.functions, values)])  # (functions, N)
        return rewards.nansum(0)

    def metrics(self) -> dict[str, torch.Tensor]:
        """TRL's per-function diagnostics of the last rows scored: ``rewards/<name>/mean`` as the rows' values
        (their mean is logged; rows a function returned None for are left out) and ``rewards/<name>/std``, the
        unbiased standard deviation over those rows (a mean of per-batch values when a step scores several)."""
        out = {name: torch.tensor(values) for name, values in self.logged.items()}  # log_metric's, by its names
        for name, values in self.last.items():
            values = values[~values.isnan()]
            out[f"rewards/{name}/mean"] = values
            if values.numel() > 1:
                out[f"rewards/{name}/std"] = values.std()
        return out


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
    if callable(reward_model) and not isinstance(reward_model, nn.Module):
        return RewardFunctions([reward_model])
    return None

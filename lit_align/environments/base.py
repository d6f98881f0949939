"""The environment of a multi-turn episode, at the level of chat messages.

An episode starts from a prompt row (``reset``) and alternates the policy's assistant messages with the
environment's answers (``step``): tool results (role ``tool``) or environment turns (role ``user``), a reward and
whether the episode ended. The episode return is the sum of the step rewards. The caller renders the messages
into tokens (``lit_align.environments.render``), masks what the policy did not write out of every loss, and
enforces ``max_tokens``; the environment enforces ``max_turns``.

Tool calls are parsed from the assistant's text in the common JSON form the chat templates with tools ask for,

    <tool_call>{"name": "calculator", "arguments": {"expression": "3*(4+5)"}}</tool_call>

or, as a fallback, a message that is nothing but such a JSON object (optionally in a ```json fence). A malformed
call is answered with an error message the model can read, never with an exception.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from lit_align.errors import UserError

Message = dict[str, Any]
ENV_ROLES = ("tool", "user")
_TAGGED = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@dataclass
class EnvStep:
    """The environment's answer to one assistant message.

    Attributes:
        messages: what the environment or its tools answer, each ``{"role": "tool" | "user", "content": str}``
            (a tool message may carry ``name``); empty when the episode ended.
        reward: this step's reward (the episode return is the sum over steps).
        done: whether the episode ended.
        truncated: whether it ended because the turn budget was spent rather than by the environment's rule.
    """

    messages: list[Message] = field(default_factory=list)
    reward: float = 0.0
    done: bool = False
    truncated: bool = False

    def __post_init__(self) -> None:
        for message in self.messages:
            if message.get("role") not in ENV_ROLES or not isinstance(message.get("content"), str):
                raise ValueError(f"an environment answers with role tool or user and text content, got {message!r}")


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: the tool's name and its keyword arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ParsedToolCalls:
    """What an assistant message asked for, in its order: a ``ToolCall`` per well-formed call, an error message (one
    line of text for the model) per malformed one."""

    items: tuple[ToolCall | str, ...] = ()

    @property
    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(item for item in self.items if isinstance(item, ToolCall))

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(item for item in self.items if isinstance(item, str))

    @property
    def attempted(self) -> bool:
        """Whether the message tried to call a tool at all (well-formed or not)."""
        return bool(self.items)


def _parse_call(payload: str) -> ToolCall | str:
    """A ``ToolCall`` from one JSON payload, or the error message for the model."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as err:
        return f"error: the tool call is not valid JSON ({err.msg} at character {err.pos})"
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return 'error: a tool call is a JSON object {"name": ..., "arguments": {...}}'
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # OpenAI's wire format sends the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return f"error: the arguments of {data['name']!r} are not a JSON object"
    if not isinstance(arguments, dict):
        return f"error: the arguments of {data['name']!r} are not a JSON object"
    return ToolCall(data["name"], arguments)


def parse_tool_calls(text: str) -> ParsedToolCalls:
    """The tool calls of an assistant message: ``<tool_call>{json}</tool_call>`` blocks, else a bare JSON call.

    An unclosed ``<tool_call>`` (a generation cut by its token budget) or invalid JSON is an error, not a call.
    """
    blocks = _TAGGED.findall(text)
    if blocks:
        payloads = [(body, bool(closing)) for body, closing in blocks]
    else:
        stripped = text.strip()
        fenced = _FENCE.match(stripped)
        stripped = fenced.group(1) if fenced else stripped
        if not (stripped.startswith("{") and '"name"' in stripped):
            return ParsedToolCalls()
        payloads = [(stripped, True)]
    missing = "error: the tool call is missing its </tool_call>"
    return ParsedToolCalls(tuple(_parse_call(body.strip()) if closed else missing for body, closed in payloads))


class Environment:
    """Base class of multi-turn environments, chosen by ``class_path`` in YAML.

    Subclasses implement ``start`` (the opening messages of a row) and ``respond`` (the answer to one assistant
    message); ``reset`` and ``step`` keep the turn count and end the episode when ``max_turns`` is spent. One
    instance runs one episode at a time: ``spawn`` gives a fresh copy per concurrent episode.

    Args:
        max_turns: assistant messages per episode; the episode ends after this many.
        max_tokens: tokens the policy may write per episode, over all its turns (enforced by the caller).
    """

    tools: list[dict[str, Any]] | None = None
    """JSON-schema function specs of the tools, for the chat template's ``tools=`` argument (None: no tools)."""
    data_columns: dict[str, type] = {}
    """Columns of the prompt rows the environment reads besides the prompt (``{name: bool | int | float}``): the
    on-policy objective asks its data for them, and ``reset`` finds them in the row."""

    def __init__(self, max_turns: int = 4, max_tokens: int = 512) -> None:
        if max_turns < 1:
            raise UserError(f"environment max_turns must be at least 1, got {max_turns}")
        if max_tokens < 1:
            raise UserError(f"environment max_tokens must be at least 1, got {max_tokens}")
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.row: dict[str, Any] = {}
        self.turns = 0
        self.done = True

    def spawn(self) -> Environment:
        """A fresh copy of this environment (its configuration, no episode) for one more concurrent episode."""
        fresh = copy.deepcopy(self)
        fresh.row, fresh.turns, fresh.done = {}, 0, True
        return fresh

    @property
    def last_turn(self) -> bool:
        """Whether the assistant message being answered is the last one the turn budget allows."""
        return self.turns >= self.max_turns

    def reset(self, row: dict[str, Any]) -> list[Message]:
        """Start an episode from a prompt row; returns its opening chat messages."""
        self.row, self.turns, self.done = row, 0, False
        return self.start(row)

    def step(self, assistant_message: str) -> EnvStep:
        """Answer the policy's message; once the turn budget is spent the episode ends (``truncated``)."""
        if self.done:
            raise RuntimeError("step() after the episode ended: call reset(row) first")
        self.turns += 1
        result = self.respond(assistant_message)
        if not result.done and self.last_turn:
            result = EnvStep([], result.reward, done=True, truncated=True)
        if result.done:
            result.messages = []
        self.done = result.done
        return result

    def start(self, row: dict[str, Any]) -> list[Message]:
        """The opening messages of an episode (a subclass's hook)."""
        raise NotImplementedError

    def respond(self, assistant_message: str) -> EnvStep:
        """The answer to one assistant message (a subclass's hook; ``self.turns`` counts it already)."""
        raise NotImplementedError


class ToolEnvironment(Environment):
    """An environment whose assistant either calls tools or answers: tool calls are executed and their results
    sent back; a message without a tool call is the final answer, scored by ``score``, and ends the episode.

    Subclasses set ``tools`` and implement ``functions`` (tool name -> callable taking the arguments as keywords
    and returning text; raise ``ValueError`` or ``TypeError`` for bad arguments) and ``score``.
    """

    def functions(self) -> dict[str, Callable[..., str]]:
        """The tools' implementations by name."""
        raise NotImplementedError

    def score(self, answer: str) -> float:
        """The reward of the final answer, given the episode's row in ``self.row``."""
        raise NotImplementedError

    def respond(self, assistant_message: str) -> EnvStep:
        parsed = parse_tool_calls(assistant_message)
        if not parsed.attempted:
            return EnvStep([], self.score(assistant_message), done=True)
        if self.last_turn:  # no turn left to read the results: skip running the tools
            return EnvStep([], 0.0)
        return EnvStep([
            {"role": "tool", "name": item.name, "content": self.call(item)} if isinstance(item, ToolCall)
            else {"role": "tool", "content": item}
            for item in parsed.items
        ])

    def call(self, call: ToolCall) -> str:
        """The text a tool answers a call with; an error message on an unknown tool or bad arguments."""
        function = self.functions().get(call.name)
        if function is None:
            return f"error: unknown tool {call.name!r}; the tools are {', '.join(sorted(self.functions()))}"
        try:
            return str(function(**call.arguments))
        except (ValueError, TypeError, ArithmeticError) as err:
            return f"error: {err}"

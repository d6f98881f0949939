"""Multi-turn environments and tools at the level of chat messages, and their rendering into tokens.

``base``: the ``Environment`` interface (reset from a prompt row, step with the assistant's message), the tool-call
parser and ``ToolEnvironment``. ``calculator``: the example environment. ``render``: an episode's messages into one
token sequence with a mask of the tokens the policy wrote, through the tokenizer's own chat template.
"""

from lit_align.environments.base import (
    EnvStep,
    Environment,
    Message,
    ParsedToolCalls,
    ToolCall,
    ToolEnvironment,
    parse_tool_calls,
)
from lit_align.environments.calculator import CALCULATOR_TOOL, CalculatorEnvironment, evaluate
from lit_align.environments.render import EpisodeTokens, environment_delta, render

__all__ = [
    "CALCULATOR_TOOL",
    "CalculatorEnvironment",
    "EnvStep",
    "EpisodeTokens",
    "Environment",
    "Message",
    "ParsedToolCalls",
    "ToolCall",
    "ToolEnvironment",
    "environment_delta",
    "evaluate",
    "parse_tool_calls",
    "render",
]

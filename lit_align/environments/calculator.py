"""An example environment: arithmetic questions, a calculator tool and a rule-based reward.

A row ``{"prompt": "What is 3*(4+5)?", "answer": 27}`` opens the episode with the question. The policy may call
``calculator`` (``<tool_call>{"name": "calculator", "arguments": {"expression": "3*(4+5)"}}</tool_call>``) and
reads the result in a tool message; its first message without a tool call is its final answer, and the reward is
1 when the last number in it equals the row's answer (0 otherwise, and 0 when the turn budget runs out).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any, Callable

from lit_align.environments.base import Message, ToolEnvironment
from lit_align.errors import UserError

MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 1e100  # every intermediate result stays below this: no huge powers, no huge products
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")

CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression of numbers, + - * / ** and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "the expression, e.g. 3*(4+5)"}},
            "required": ["expression"],
        },
    },
}


def _check_power(base: int | float, exponent: int | float) -> None:
    """Refuse a power whose result would exceed ``MAX_MAGNITUDE`` (before computing it) or be complex."""
    if base < 0 and exponent != int(exponent):
        raise ValueError("a negative number to a fractional power is not a real number")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ValueError(f"{base} ** {exponent} is too large")


def _evaluate(node: ast.AST) -> int | float:
    """The value of one node of an arithmetic expression; anything else is refused."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _UNARY[type(node.op)](_evaluate(node.operand))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        value = _BINARY[type(node.op)](left, right)
    else:
        raise ValueError(f"only numbers, + - * / ** and parentheses are allowed, not {ast.unparse(node)!r}")
    if isinstance(value, complex) or not abs(value) < MAX_MAGNITUDE:
        raise ValueError("the result is too large")
    return value


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression (numbers, + - * / ** and parentheses), parsed with ``ast``, never
    ``eval``. Raises ``ValueError`` with a message for the model on anything else, on division by zero and on
    results of magnitude ``MAX_MAGNITUDE`` or more. Example: ``evaluate("3*(4+5)") == 27``."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not an arithmetic expression: {err.msg}") from None
    try:
        return _evaluate(tree.body)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("the result is too large") from None


def format_number(value: int | float) -> str:
    """A result as the model should read it: integers without ``.0``, floats to 12 significant digits."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value) if isinstance(value, int) else f"{value:.12g}"


def final_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands separators allowed), or None."""
    numbers = _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3})", "", text))
    return float(numbers[-1]) if numbers else None


class CalculatorEnvironment(ToolEnvironment):
    """Arithmetic questions answered with the help of a calculator tool; reward 1 for a correct final answer.

    Args:
        max_turns: assistant messages per episode (tool calls and the final answer); the episode ends after this
            many.
        max_tokens: tokens the policy may write per episode, over all its turns (enforced by the caller).
        system_prompt: an optional system message opening every episode (None: the question alone; some chat
            templates refuse a system role).
        prompt_key: the row's field holding the question.
        answer_key: the row's field holding the numeric answer.
        tolerance: relative tolerance of the comparison of the final answer with the row's answer.
    """

    tools = [CALCULATOR_TOOL]

    def __init__(
        self,
        max_turns: int = 4,
        max_tokens: int = 512,
        system_prompt: str | None = None,
        prompt_key: str = "prompt",
        answer_key: str = "answer",
        tolerance: float = 1e-6,
    ) -> None:
        super().__init__(max_turns=max_turns, max_tokens=max_tokens)
        if not tolerance >= 0:
            raise UserError(f"environment tolerance must be >= 0, got {tolerance}")
        self.system_prompt = system_prompt
        self.prompt_key = prompt_key
        self.answer_key = answer_key
        self.tolerance = tolerance
        self.data_columns = {answer_key: float}

    def start(self, row: dict[str, Any]) -> list[Message]:
        for key in (self.prompt_key, self.answer_key):
            if key not in row:
                raise UserError(f"calculator environment: the prompt row has no field {key!r} (fields: "
                                f"{', '.join(map(str, row))}); set prompt_key / answer_key")
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": str(row[self.prompt_key])}]

    def functions(self) -> dict[str, Callable[..., str]]:
        return {"calculator": lambda expression: format_number(evaluate(str(expression)))}

    def score(self, answer: str) -> float:
        given = final_number(answer)
        expected = float(self.row[self.answer_key])
        if given is None:
            return 0.0
        return float(abs(given - expected) <= self.tolerance * max(1.0, abs(expected)))

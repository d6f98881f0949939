"""An episode's messages as one token sequence, through the tokenizer's own chat template.

The policy's tokens are kept exactly as sampled; only what the policy did not write is rendered: the opening
prompt, then after each policy turn the *delta* of the template's rendering — the end of the assistant turn the
policy did not write itself, the environment's or tools' messages, and the next generation prompt:

    before = render(messages[:-1] + [assistant: SENTINEL])                    (no generation prompt)
    after  = render(messages[:-1] + [assistant: SENTINEL] + new, add_generation_prompt=True)
    delta  = (text after SENTINEL in before, less the stop token the policy ended with) + after[len(before):]

which needs the template to only append (``before`` a prefix of ``after``): a template that re-renders earlier
turns is refused. ``policy_mask`` is 1 on the policy's tokens and 0 on the prompt and every delta, so the tokens of
the environment, the tools and the template are masked out of every loss.

Tools go to ``apply_chat_template(..., tools=tools)`` when the template uses them (its rendering changes with
``tools``); otherwise they are described in the system message (or the first user message, for templates without
a system role) and tool results are sent as user turns wrapped in ``<tool_response>`` tags.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from jinja2 import TemplateError

from lit_align.environments.base import Message
from lit_align.errors import UserError

SENTINEL = "LITALIGNPOLICYTURN"
_PROBE_TOOL = {"type": "function", "function": {"name": "probe", "description": "probe",
                                                "parameters": {"type": "object", "properties": {}}}}
_USER = [{"role": "user", "content": "hi"}]


def _template_name(tokenizer: Any) -> str:
    return f"the chat template of tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r}"


def _apply(tokenizer: Any, messages: list[Message], tools: list[dict] | None, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def supports_tools(tokenizer: Any) -> bool:
    """Whether the chat template renders a ``tools=`` argument (its rendering changes when tools are given)."""
    return _apply(tokenizer, _USER, [_PROBE_TOOL], True) != _apply(tokenizer, _USER, None, True)


def accepts_system(tokenizer: Any) -> bool:
    """Whether the chat template accepts a system message."""
    try:
        _apply(tokenizer, [{"role": "system", "content": "hi"}] + _USER, None, True)
    except TemplateError:
        return False
    return True


def tool_instructions(tools: list[dict]) -> str:
    """The tools described in plain text, for templates that do not take ``tools=``."""
    specs = "\n".join(json.dumps(tool.get("function", tool)) for tool in tools)
    return ("You can call these tools:\n" + specs + '\nTo call one, write <tool_call>{"name": ..., "arguments": '
            "{...}}</tool_call>; its result comes back between <tool_response> and </tool_response>.")


def _describe_tools(tokenizer: Any, messages: list[Message], tools: list[dict]) -> list[Message]:
    """The messages with the tools' description in the system message, or the first user message."""
    text = tool_instructions(tools)
    first = messages[0] if messages else None
    if first is not None and first["role"] == "system":
        return [{**first, "content": first["content"] + "\n\n" + text}] + messages[1:]
    if accepts_system(tokenizer):
        return [{"role": "system", "content": text}] + messages
    if first is not None and first["role"] == "user":
        return [{**first, "content": text + "\n\n" + first["content"]}] + messages[1:]
    raise UserError(f"{_template_name(tokenizer)} has neither tools nor a system role, and the episode does not "
                    "start with a user message to describe the tools in")


def _tool_results_as_user(messages: list[Message]) -> list[Message]:
    """Tool messages as user turns of ``<tool_response>`` blocks (consecutive results in one turn)."""
    out: list[Message] = []
    previous_tool = False
    for message in messages:
        if message["role"] != "tool":
            out.append(message)
            previous_tool = False
            continue
        block = f"<tool_response>\n{message['content']}\n</tool_response>"
        if previous_tool:
            out[-1] = {"role": "user", "content": out[-1]["content"] + "\n" + block}
        else:
            out.append({"role": "user", "content": block})
        previous_tool = True
    return out


def render(tokenizer: Any, messages: list[Message], tools: list[dict] | None = None,
           add_generation_prompt: bool = False) -> str:
    """The template's text of ``messages``: tools natively where the template has them, else as described above."""
    if supports_tools(tokenizer):
        return _apply(tokenizer, messages, tools or None, add_generation_prompt)
    if tools:
        messages = _describe_tools(tokenizer, messages, tools)
    return _apply(tokenizer, _tool_results_as_user(messages), None, add_generation_prompt)


def _encode(tokenizer: Any, text: str) -> list[int]:
    # the template writes the special tokens itself (BOS included), as apply_chat_template(tokenize=True) does
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _after_stop_token(tokenizer: Any, closing: str, policy_ids: Sequence[int]) -> str:
    """The template's end of an assistant turn less the stop token the policy wrote (if it wrote one)."""
    if not policy_ids or policy_ids[-1] not in tokenizer.all_special_ids:
        return closing  # the policy's turn was cut before its stop token: the template closes it
    stop = tokenizer.convert_ids_to_tokens(policy_ids[-1])
    at = closing.find(stop)
    return closing[at + len(stop):] if at >= 0 and not closing[:at].strip() else closing


def environment_delta(tokenizer: Any, messages: list[Message], new_messages: list[Message],
                      policy_ids: Sequence[int], tools: list[dict] | None = None) -> list[int]:
    """The token ids to append after the policy's turn so that the sequence continues with ``new_messages`` and
    the next generation prompt.

    Args:
        tokenizer: a tokenizer with a chat template.
        messages: the episode so far, ending with the policy's assistant message.
        new_messages: the environment's answer (``EnvStep.messages``).
        policy_ids: the token ids the policy wrote in its last turn (their last one, when it is a special token
            the template closes the turn with, stands for that part of the template's text).
        tools: the environment's tool specs.
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("environment_delta needs the episode to end with the policy's assistant message")
    probe = messages[:-1] + [{"role": "assistant", "content": SENTINEL}]
    before = render(tokenizer, probe, tools)
    after = render(tokenizer, probe + list(new_messages), tools, add_generation_prompt=True)
    if not after.startswith(before) or SENTINEL not in before:
        raise UserError(f"{_template_name(tokenizer)} does not only append when the environment answers (its "
                        "rendering of the earlier turns changes), so an episode cannot be one token sequence")
    closing = before[before.rindex(SENTINEL) + len(SENTINEL):]
    return _encode(tokenizer, _after_stop_token(tokenizer, closing, policy_ids) + after[len(before):])


class EpisodeTokens:
    """One episode as one token sequence, with ``policy_mask`` 1 exactly on the tokens the policy wrote.

    Args:
        tokenizer: a tokenizer with a chat template.
        messages: the opening messages (``Environment.reset``).
        tools: the environment's tool specs (``Environment.tools``).
    """

    def __init__(self, tokenizer: Any, messages: list[Message], tools: list[dict] | None = None) -> None:
        self.tokenizer = tokenizer
        self.tools = tools
        self.messages: list[Message] = list(messages)
        self.input_ids: list[int] = _encode(tokenizer, render(tokenizer, self.messages, tools, True))
        self.policy_mask: list[int] = [0] * len(self.input_ids)
        self.prompt_length = len(self.input_ids)
        self._last_policy_ids: list[int] = []

    @property
    def policy_tokens(self) -> int:
        """How many tokens the policy wrote so far (the count ``max_tokens`` bounds)."""
        return sum(self.policy_mask)

    def add_policy(self, token_ids: Sequence[int]) -> str:
        """Append the policy's sampled tokens (mask 1); returns their text for ``Environment.step``."""
        self._last_policy_ids = list(token_ids)
        self.input_ids += self._last_policy_ids
        self.policy_mask += [1] * len(self._last_policy_ids)
        text = self.tokenizer.decode(self._last_policy_ids, skip_special_tokens=True)
        self.messages.append({"role": "assistant", "content": text})
        return text

    def add_environment(self, messages: list[Message]) -> list[int]:
        """Append the environment's answer and the next generation prompt (mask 0); returns the appended ids."""
        delta = environment_delta(self.tokenizer, self.messages, messages, self._last_policy_ids, self.tools)
        self.messages += list(messages)
        self.input_ids += delta
        self.policy_mask += [0] * len(delta)
        return delta

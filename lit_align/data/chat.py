"""Conversations to text with the tokenizer's chat template: where the prompt ends and where each completion ends.

The prompt is the conversation before the reply, rendered with the generation prompt (``<|im_start|>assistant\\n``,
``<|start_header_id|>assistant<|end_header_id|>\\n\\n``, ``<start_of_turn>model\\n``, ...), exactly what the model
is given when it generates. A completion is what the template writes after that prompt for the reply's messages,
cut after the token that closes the reply:

- The end-of-turn token is found by rendering, row by row: it is the first special token the template writes
  after the content of the reply's last assistant message (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama-3,
  ``</s>`` for Llama-2/Mistral and Zephyr, ``<end_of_turn>`` for Gemma, ``<|end|>`` for Phi-3). Whatever the
  template writes after it (ChatML's newline, Phi-3's trailing ``<|endoftext|>``) belongs to the next turn and is
  not trained on. Such a completion is closed and gets no EOS of its own: one end-of-turn token ends it.
- A template that closes a turn with no special token (plain text between turns) leaves the completion open: its
  trailing whitespace is dropped and the row encoder appends the tokenizer's EOS.

A template that writes today's date (Llama-3.x's ``strftime_now("%d %b %Y")`` in its system turn) renders with the
date pinned to ``TEMPLATE_DATE``: the rows a run trains on, and the content digests of the run manifest, the
reference cache and the reward stage, must not change from one day to the next.

The rendering must hold what the rows hold: every assistant message's content (as written or trimmed) must appear
in the rendered completion, in order, or the run stops naming the row and the template (a template that drops the
content would otherwise train on pairs of identical sequences).
"""

from __future__ import annotations

import contextlib
import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from lit_align.data.sources import DataError


#: The date a chat template's ``strftime_now`` sees: fixed, so that a rendered row never changes by itself (the
#: date Llama-3.1/3.2's template falls back to when no clock is given).
TEMPLATE_DATE = datetime.datetime(2024, 7, 26)


class _PinnedDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls.combine(TEMPLATE_DATE.date(), TEMPLATE_DATE.time(), tzinfo=tz)


@contextlib.contextmanager
def pinned_template_date() -> Iterator[None]:
    """Chat templates rendered inside the block see ``TEMPLATE_DATE`` as today (transformers gives templates a
    ``strftime_now`` that reads its module's ``datetime.now``)."""
    from transformers.utils import chat_template_utils as utils

    original = getattr(utils, "datetime", None)
    if original is not datetime.datetime:  # another layout of transformers: nothing known to pin
        yield
        return
    utils.datetime = _PinnedDatetime
    try:
        yield
    finally:
        utils.datetime = original


class ChatTemplateError(DataError):
    """The tokenizer's chat template (or its absence) cannot render the data faithfully. A fault of the template,
    not of one row: it is raised even with ``invalid_rows: skip``."""


@dataclass
class RenderedCompletion:
    """A completion's text and whether the template already closed it with its end-of-turn token."""

    text: str
    closed: bool


class ChatRenderer:
    """Renders conversational rows with ``tokenizer.chat_template``.

    Args:
        tokenizer: A tokenizer with a chat template.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.name = getattr(tokenizer, "name_or_path", "") or "(unnamed)"
        if getattr(tokenizer, "chat_template", None) is None:
            raise ChatTemplateError(
                f"conversational data needs a tokenizer with a chat template, and the tokenizer {self.name!r} has "
                "none (no chat_template); use a chat model's tokenizer or give the data as strings"
            )
        specials = {*tokenizer.all_special_tokens}
        specials |= {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
        # longest first, so that a token never matches as the prefix of a longer one
        ordered = sorted((s for s in specials if s), key=len, reverse=True)
        self._special = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def render(
        self, prompt: list[dict], completions: list[list[dict]], fields: tuple[str, ...], source: str, index: int
    ) -> tuple[str, list[RenderedCompletion]]:
        where = f"{source}, row {index}"
        prompt_text = self._apply(prompt, True, where)
        rendered = []
        for field, completion in zip(fields, completions):
            full = self._apply(prompt + completion, False, where)
            if not full.startswith(prompt_text):
                raise ChatTemplateError(
                    f"{where}: the chat template of {self.name!r} renders the prompt differently once the {field!r} "
                    "reply follows it, so the prompt/completion boundary is unknown; use a template whose rendering "
                    "of the prompt with add_generation_prompt is a prefix of the whole conversation's"
                )
            rendered.append(self._close(full[len(prompt_text):], completion, field, where))
        return prompt_text, rendered

    def _apply(self, messages: list[dict], generation_prompt: bool, where: str) -> str:
        try:
            with pinned_template_date():
                text = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=generation_prompt
                )
        except TemplateError as err:  # raise_exception() in the template, e.g. "roles must alternate": the row's fault
            raise DataError(f"{where}: the chat template of {self.name!r} refuses the row: {err}") from err
        return text

    def _close(self, text: str, messages: list[dict], field: str, where: str) -> RenderedCompletion:
        masked = self._mask(text)  # content never matches inside a special token (e.g. "s" in "</s>")
        start, end = 0, 0
        replies = [(k, m) for k, m in enumerate(messages) if m["role"] == "assistant"]
        for number, (k, message) in enumerate(replies):
            content = self._mask(message["content"].strip())
            last = number == len(replies) - 1
            found = masked.rfind(content, start) if last else masked.find(content, start)
            if found < 0:
                shown = text if len(text) <= 80 else text[:77] + "..."
                raise ChatTemplateError(
                    f"{where}: the chat template of {self.name!r} drops the assistant's content of {field!r} "
                    f"(message {k} is not in the rendered completion {shown!r}), so chosen and rejected would train "
                    "as the same text; fix the template so that it writes message['content']"
                )
            start = end = found + len(content)
        tail = text[end:]
        closing = self._special.search(tail) if self._special is not None else None
        if closing is not None:
            return RenderedCompletion(text[: end + closing.end()], closed=True)
        return RenderedCompletion(text[:end] + tail.rstrip(), closed=False)

    def _mask(self, text: str) -> str:
        if self._special is None:
            return text
        return self._special.sub(lambda m: "\0" * len(m.group()), text)


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The special token the tokenizer's chat template closes an assistant reply with (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``, ``<|end|>``, ...), found the way the row encoder finds it: by rendering a
    probe reply. None without a template, or when the template closes replies with plain text."""
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    try:
        renderer = ChatRenderer(tokenizer)
        _, (reply,) = renderer.render([{"role": "user", "content": "Hello there"}],
                                      [[{"role": "assistant", "content": "Fine, thank you"}]], ("reply",),
                                      "the chat template", 0)
    except DataError:  # a template that cannot render a plain exchange names no end-of-turn
        return None
    if not reply.closed or renderer._special is None:
        return None
    return renderer._special.findall(reply.text)[-1]

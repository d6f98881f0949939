"""From raw rows to token ids: the data formats, validation with row-level errors, and truncation.

A row becomes a prompt and zero or more completions (chosen and rejected for pairs, one for SFT, none for
prompt-only data). Formats:

- ``standard``: ``prompt``, ``chosen``, ``rejected`` are strings;
- ``conversational``: they are lists of ``{role, content}`` messages, rendered with the tokenizer's chat template
  (``prompt`` may be omitted when ``chosen``/``rejected`` are whole conversations: the shared leading messages
  become the prompt);
- ``implicit``: no prompt column; ``chosen`` and ``rejected`` are full transcripts sharing a prefix (Anthropic HH).
  The prompt is their common prefix, cut back to the end of the last ``prompt_delimiter`` in it.

Columns an objective declares besides these (a label, a score: ``lit_align.data.columns``) are read from the same
row, after the renames, into ``Example.values``; a missing or bad value makes the row invalid like a bad text field.

The prompt/completion boundary is decided on whole strings and messages and the two sides are tokenised
separately, so it never falls inside a token (the prompt ids are what the model is given when it generates).
BOS: the tokenizer's own BOS starts every prompt exactly once (a template or text that already starts with it keeps
its own). End of a completion: exactly one closing token, never followed by anything. A conversational completion
ends with the end-of-turn token its chat template writes after the reply (see ``lit_align.data.chat``: ChatML's
``<|im_end|>``, Llama-3's ``<|eot_id|>``, Gemma's ``<end_of_turn>``, ...); a string completion, or one whose
template writes no end-of-turn token, gets the tokenizer's EOS unless it already ends with it.

A conversational completion is the assistant's reply: assistant messages, with tool results allowed between them,
the first and the last being the assistant's. A pair whose two completions encode to the same token ids (after
rendering, or after truncation to ``max_length``) trains on nothing and is dropped and counted.

Truncation: a prompt longer than ``max_prompt_length`` keeps its BOS and its last tokens; a completion longer than
what ``max_length`` leaves keeps its first tokens (and so loses its end-of-turn token). Every sequence is then at
most ``max_length`` tokens and every completion at least one. Refused at start-up, as settings that cannot hold
this: ``max_length`` < 2, ``max_prompt_length`` < 1 or >= ``max_length``, and ``max_prompt_length`` 1 with a
tokenizer that adds a BOS token (the prompt would be BOS alone, none of the row's text); the same setting with a
chat template that writes BOS itself is refused at the first prompt it would cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from lit_align.data.chat import ChatRenderer, ChatTemplateError, RenderedCompletion
from lit_align.data.columns import Column, ColumnValue, normalise_columns, read_values
from lit_align.data.sources import DataError
from lit_align.models.loading import tokenizer_adds_bos
from lit_align.errors import UserError

Format = Literal["auto", "standard", "conversational", "implicit"]
KNOWN_ROLES = frozenset({"system", "user", "assistant", "tool"})
REPLY_ROLES = frozenset({"assistant", "tool"})


class LengthSettingError(UserError, ValueError):
    """``max_length`` / ``max_prompt_length`` that no truncation can honour."""


@dataclass
class Example:
    """One tokenised row: prompt ids and the completion ids (chosen first), with the row's index, the values
    of the columns the objective declared (``lit_align.data.columns``), converted to their types, and the prompt's
    chat messages (``{role, content}`` dicts) when it was a conversation rendered with the chat template (None for a
    plain-text prompt): what a reward model with another tokenizer renders with its own template. They are the
    prompt as the row gave it, before ``max_prompt_length`` cut its ids."""

    index: int
    prompt_ids: list[int]
    completion_ids: list[list[int]]
    values: dict[str, ColumnValue] = field(default_factory=dict)
    prompt_messages: list[dict[str, str]] | None = None


@dataclass
class FormatStats:
    """What was dropped while tokenising, reported to the user instead of disappearing silently."""

    rows: int = 0
    kept: int = 0
    identical_pairs: int = 0
    #: Of ``identical_pairs``, those whose completions differ only beyond ``max_length``.
    identical_after_truncation: int = 0
    invalid: int = 0
    truncated_prompts: int = 0
    truncated_completions: int = 0

    def summary(self, source: str) -> str:
        return (
            f"{source}: kept {self.kept} of {self.rows} rows (dropped {self.identical_pairs} with chosen == rejected"
            f"{self._after_cut()}, {self.invalid} invalid; truncated {self.truncated_prompts} prompts, "
            f"{self.truncated_completions} completions)"
        )

    def _after_cut(self) -> str:
        n = self.identical_after_truncation
        return f" ({n} of them only after truncation to max_length)" if n else ""


def _all_equal(completions: list[list[int]]) -> bool:
    """Whether a row's completions (two or more) are the same token ids: such a pair has nothing to compare."""
    return len(completions) >= 2 and all(ids == completions[0] for ids in completions[1:])


class RowEncoder:
    """Validates rows and turns them into ``Example``s.

    Args:
        tokenizer: The policy's tokenizer.
        completion_fields: Columns holding completions, e.g. ``("chosen", "rejected")``, ``("chosen",)`` or ``()``.
        fmt: Data format, or ``auto`` to detect it from the first row.
        columns: Renames from this data's column names to the canonical ones, e.g. ``{"question": "prompt"}``.
        max_length: Longest prompt + completion, in tokens (at least 2).
        max_prompt_length: Longest prompt, below ``max_length``; longer prompts keep their BOS and last tokens.
            At least 1, and at least 2 with a tokenizer that adds BOS.
        prompt_delimiter: The ``implicit`` format's marker of where the last response begins.
        invalid_rows: ``error`` stops at the first bad row with a message naming it; ``skip`` drops and counts.
        data_columns: Further columns to read into each ``Example.values``, e.g. ``{"label": bool}``, by their
            names after ``columns``; a missing or bad value makes the row invalid (``lit_align.data.columns``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        completion_fields: tuple[str, ...],
        fmt: Format = "auto",
        columns: dict[str, str] | None = None,
        max_length: int = 512,
        max_prompt_length: int = 256,
        prompt_delimiter: str = "\n\nAssistant:",
        invalid_rows: Literal["error", "skip"] = "error",
        data_columns: Mapping[str, Column | type] | None = None,
    ) -> None:
        self._bos_added = tokenizer_adds_bos(tokenizer)
        _check_lengths(tokenizer, max_length, max_prompt_length, self._bos_added)
        self.tokenizer = tokenizer
        self.completion_fields = completion_fields
        self.fmt = fmt
        self.columns = columns or {}
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.prompt_delimiter = prompt_delimiter
        self.invalid_rows = invalid_rows
        self.data_columns = normalise_columns(data_columns)
        self._renderer: ChatRenderer | None = None

    # -- public ------------------------------------------------------------------------------------------------

    def encode_all(self, rows, source: str) -> tuple[list[Example], FormatStats]:
        stats = FormatStats()
        texts: list[tuple[int, str, list[RenderedCompletion], dict[str, ColumnValue], list[dict] | None]] = []
        fmt = self.fmt
        for index, raw in enumerate(rows):
            stats.rows += 1
            row = {self.columns.get(k, k): v for k, v in raw.items()}
            try:
                # a bad row cannot show the format: detection waits for the first good one under "skip"
                row_fmt = self._detect(row, source, index) if fmt == "auto" else fmt
                prompt, completions = self._split(row, row_fmt, source, index)
                rendered = self._render(prompt, completions, source, index)
                values = read_values(self.data_columns, row, f"{source}, row {index}", self.columns)
                fmt = row_fmt
            except ChatTemplateError:
                raise  # the template's fault, not the row's: skipping would drop every row and hide why
            except DataError:
                if self.invalid_rows == "error":
                    raise
                stats.invalid += 1
                continue
            messages = [dict(m) for m in prompt] if isinstance(prompt, list) else None
            texts.append((index, *rendered, values, messages))
        examples = self._tokenize(texts, stats)
        stats.kept = len(examples)
        if not examples:
            raise DataError(f"{source}: no usable rows ({stats.summary(source)})")
        return examples, stats

    # -- row validation and splitting --------------------------------------------------------------------------

    def _detect(self, row: dict, source: str, index: int) -> Format:
        first = self.completion_fields[0] if self.completion_fields else "prompt"
        self._require(row, first, source, index)
        if isinstance(row[first], list):
            return "conversational"
        if "prompt" not in row and self.completion_fields:
            return "implicit"
        return "standard"

    def _require(self, row: dict, field: str, source: str, index: int) -> Any:
        if field not in row:
            mapped = f" (after the column mapping {self.columns})" if self.columns else ""
            raise DataError(
                f"{source}, row {index}: missing field {field!r}{mapped}; the row has {sorted(row)}. "
                "Map other column names with `columns`."
            )
        value = row[field]
        if value is None:
            raise DataError(f"{source}, row {index}: field {field!r} is null")
        return value

    def _text(self, row: dict, field: str, source: str, index: int) -> str:
        value = self._require(row, field, source, index)
        if not isinstance(value, str):
            raise DataError(f"{source}, row {index}: field {field!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(f"{source}, row {index}: field {field!r} is empty")
        return value

    def _messages(self, row: dict, field: str, source: str, index: int) -> list[dict]:
        value = self._require(row, field, source, index)
        if not isinstance(value, list) or not value:
            raise DataError(f"{source}, row {index}: field {field!r} must be a non-empty list of messages")
        for number, message in enumerate(value):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise DataError(f"{source}, row {index}: {field}[{number}] must be a {{role, content}} message")
            if message["role"] not in KNOWN_ROLES:
                raise DataError(
                    f"{source}, row {index}: {field}[{number}] has unknown role {message['role']!r} "
                    f"(expected one of {sorted(KNOWN_ROLES)})"
                )
            if not isinstance(message["content"], str):
                raise DataError(f"{source}, row {index}: {field}[{number}].content must be a string")
        return value

    def _split(self, row: dict, fmt: Format, source: str, index: int) -> tuple[str | list, list]:
        fields = self.completion_fields
        if fmt == "standard":
            return self._text(row, "prompt", source, index), [self._text(row, f, source, index) for f in fields]
        if fmt == "conversational":
            completions = [self._messages(row, f, source, index) for f in fields]
            if "prompt" in row:
                prompt, offset = self._messages(row, "prompt", source, index), 0
            else:
                prompt, completions = _shared_leading_messages(completions, source, index)
                offset = len(prompt)  # the reply starts at this message of each field
            for field, completion in zip(fields, completions):
                _check_reply(completion, field, offset, source, index)
            return prompt, completions
        if fmt == "implicit":
            transcripts = [self._text(row, f, source, index) for f in fields]
            return self._implicit_prompt(transcripts, source, index)
        raise ValueError(f"unknown data format {fmt!r}")

    def _implicit_prompt(self, transcripts: list[str], source: str, index: int) -> tuple[str, list[str]]:
        shared = transcripts[0]
        for other in transcripts[1:]:
            n = 0
            while n < min(len(shared), len(other)) and shared[n] == other[n]:
                n += 1
            shared = shared[:n]
        cut = shared.rfind(self.prompt_delimiter)
        if cut < 0:
            raise DataError(
                f"{source}, row {index}: the transcripts share no {self.prompt_delimiter!r}, so the prompt cannot "
                "be found; set `prompt_delimiter` or give a prompt column"
            )
        end = cut + len(self.prompt_delimiter)
        completions = [t[end:] for t in transcripts]
        for field, text in zip(self.completion_fields, completions):
            if not text.strip():
                raise DataError(f"{source}, row {index}: field {field!r} has an empty response after the prompt")
        return transcripts[0][:end], completions

    # -- tokenisation --------------------------------------------------------------------------------------------

    def _render(self, prompt, completions, source: str, index: int) -> tuple[str, list[RenderedCompletion]]:
        if isinstance(prompt, str):
            return prompt, [RenderedCompletion(c, closed=False) for c in completions]
        if self._renderer is None:
            self._renderer = ChatRenderer(self.tokenizer)
        return self._renderer.render(prompt, completions, self.completion_fields, source, index)

    def _tokenize(self, texts: list, stats: FormatStats) -> list[Example]:
        if not texts:
            return []  # every row dropped: encode_all reports it (tokenizers fail on an empty batch)
        prompts = self.tokenizer([p for _, p, *_ in texts], add_special_tokens=False).input_ids
        flat = [c for _, _, cs, *_ in texts for c in cs]
        flat_ids = self.tokenizer([c.text for c in flat], add_special_tokens=False).input_ids if flat else []
        eos, bos = self.tokenizer.eos_token_id, self.tokenizer.bos_token_id
        examples, cursor = [], 0
        for (index, _, completions, values, messages), prompt_ids in zip(texts, prompts):
            outs = []
            for completion, ids in zip(flat[cursor : cursor + len(completions)], flat_ids[cursor:]):
                if not completion.closed and eos is not None and ids[-1:] != [eos]:
                    ids = ids + [eos]
                outs.append(ids)
            cursor += len(completions)
            if _all_equal(outs):  # in token space, as rendered: the same sequence twice
                stats.identical_pairs += 1
                continue
            if self._bos_added and prompt_ids[:1] != [bos]:
                prompt_ids = [bos] + prompt_ids  # once: templates that already start with BOS keep theirs
            cut_prompt = len(prompt_ids) > self.max_prompt_length
            if cut_prompt:
                prompt_ids = self._keep_prompt_end(prompt_ids, bos)
            budget = self.max_length - len(prompt_ids)  # >= 1: max_prompt_length < max_length
            cut_completions = sum(len(ids) > budget for ids in outs)
            outs = [ids[:budget] for ids in outs]
            if _all_equal(outs):  # a long shared start: the completions differ only past the cut
                stats.identical_pairs += 1
                stats.identical_after_truncation += 1
                continue
            stats.truncated_prompts += cut_prompt
            stats.truncated_completions += cut_completions
            examples.append(Example(index, prompt_ids, outs, values, messages))
        return examples

    def _keep_prompt_end(self, prompt_ids: list[int], bos: int | None) -> list[int]:
        head = prompt_ids[:1] if bos is not None and prompt_ids[0] == bos else []
        keep = self.max_prompt_length - len(head)
        if keep < 1:  # only a template's own BOS gets here: the tokenizer's is refused at start-up
            raise LengthSettingError(
                f"max_prompt_length ({self.max_prompt_length}) leaves room only for the BOS token the chat "
                "template writes, so no prompt text would reach the model; set max_prompt_length to 2 or more"
            )
        return head + prompt_ids[len(prompt_ids) - keep :]


def _shared_leading_messages(conversations: list[list[dict]], source: str, index: int) -> tuple[list, list]:
    n = 0
    while all(len(c) > n + 1 for c in conversations) and all(c[n] == conversations[0][n] for c in conversations):
        n += 1
    if n == 0:
        raise DataError(f"{source}, row {index}: the conversations share no leading messages to use as the prompt")
    return conversations[0][:n], [c[n:] for c in conversations]


def _check_reply(messages: list[dict], field: str, offset: int, source: str, index: int) -> None:
    """A completion is the assistant's reply: assistant turns (tool results between them), first and last the
    assistant's, the last one not empty. ``offset``: the position of the reply's first message in ``field``."""
    where, last = f"{source}, row {index}", len(messages) - 1
    if messages[0]["role"] != "assistant":
        raise DataError(
            f"{where}: {field}[{offset}] is a {messages[0]['role']!r} turn, but the completion must start with the "
            "assistant's reply; put the turns before the reply in `prompt`"
        )
    if messages[last]["role"] != "assistant":
        raise DataError(
            f"{where}: {field}[{offset + last}] is a {messages[last]['role']!r} turn, but the completion must end "
            "with the assistant's reply; drop the turns after it"
        )
    for k, message in enumerate(messages):
        if message["role"] not in REPLY_ROLES:
            raise DataError(
                f"{where}: {field}[{offset + k}] is a {message['role']!r} turn inside the completion, which holds "
                "only the assistant's reply (tool results may sit between its turns); end the row before it"
            )
    if not messages[last]["content"].strip():
        raise DataError(f"{where}: {field}[{offset + last}] (the assistant's reply) is empty")


def _check_lengths(tokenizer, max_length: int, max_prompt_length: int, bos_added: bool) -> None:
    if max_length < 2:
        raise LengthSettingError(
            f"max_length ({max_length}) must be at least 2: one prompt token and one completion token"
        )
    if max_prompt_length < 1:
        raise LengthSettingError(f"max_prompt_length ({max_prompt_length}) must be at least 1")
    if max_prompt_length >= max_length:
        raise LengthSettingError(
            f"max_prompt_length ({max_prompt_length}) must be smaller than max_length ({max_length}) so that "
            "every completion keeps at least one token"
        )
    if bos_added and max_prompt_length < 2:
        raise LengthSettingError(
            f"max_prompt_length ({max_prompt_length}) leaves room only for the tokenizer's BOS token "
            f"{tokenizer.bos_token!r}, so no prompt text would reach the model; set max_prompt_length to 2 or more"
        )

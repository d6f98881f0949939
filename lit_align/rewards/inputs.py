"""What a reward model reads when its tokenizer is not the policy's: text in, its own token ids out.

A reward model with another vocabulary or another chat template than the policy's would read the policy's token ids
as other words. Three steps bridge the two, shared by the on-policy objectives and ``RewardModelJudge``:

1. ``PolicyTextDecoder`` turns each rollout row (left-padded prompt + right-padded response, the layout of
   ``lit_align.generation.rollout.sample``) back into a prompt and a response. The response is decoded without special tokens
   (the policy's EOS or end-of-turn token goes; the reward model's template or EOS closes it again). A batch holds
   only token ids, so the prompt of conversational data is a conversation rendered with the policy's chat
   template: ``ChatTemplateReader`` inverts that template. It renders a probe conversation with marker contents,
   which shows the markup the template puts before, between and after turns, parses the prompt with that markup,
   and keeps the messages only when rendering them again gives back the prompt's exact text. A prompt cut at its
   start by ``max_prompt_length`` keeps the turns after the cut (what is left of a user turn stays, a fragment of
   a system message or reply goes) when their rendering ends with the prompt's text. Anything else (plain-text
   data, a template the probe cannot read) stays plain text, decoded without special tokens.
2. ``RewardInputs.encode`` turns (prompt, response) into the reward model's ids. A conversation, when the reward
   model's tokenizer has a chat template, is rendered with it (the prompt's messages, then the response as the
   assistant turn) and that rendering is tokenised in one go, as ``apply_chat_template(..., tokenize=True)`` does;
   the template closes the turn itself, so no EOS is added. Otherwise the prompt text (with the tokenizer's BOS,
   once) is followed by the response and EOS, tokenised separately: the layout lit-align's data encoder gives a
   reward model trained on plain-text pairs.
3. ``RewardInputs.score`` right-pads the sequences (the scorer reads the last real token), moves them to the reward
   model's device and scores them in batches.
"""

from __future__ import annotations

from typing import Literal, Union

import torch
from torch import nn

from lit_align.models.loading import tokenizer_adds_bos

Message = dict[str, str]
Prompt = Union[str, list[Message]]
ChatTemplateUse = Literal["auto", "always", "never"]

# Marker contents of the probe conversation: plain words that no template trims, escapes or splits.
_MARKS = {"system": "litalignprobesystem", "user": "litalignprobeuserone", "assistant": "litalignprobeassistant",
          "user2": "litalignprobeusertwo"}
# The turn after each: the alternating conversations the reader parses.
_FOLLOWING_ROLE = {"system": "user", "user": "assistant", "assistant": "user"}
# The longest input assumed when neither the tokenizer nor the model config states one.
FALLBACK_MAX_LENGTH = 4096


def reads_policy_ids(reward_tokenizer, policy_tokenizer) -> bool:
    """Whether a reward model with ``reward_tokenizer`` can score the policy's token ids as they are: the same
    vocabulary, chat template, BOS and EOS."""
    if reward_tokenizer is None or reward_tokenizer is policy_tokenizer:
        return True
    return (
        reward_tokenizer.get_vocab() == policy_tokenizer.get_vocab()
        and getattr(reward_tokenizer, "chat_template", None) == getattr(policy_tokenizer, "chat_template", None)
        and (reward_tokenizer.bos_token_id, reward_tokenizer.eos_token_id)
        == (policy_tokenizer.bos_token_id, policy_tokenizer.eos_token_id)
    )


def default_max_length(model: nn.Module, tokenizer) -> int:
    """The longest input the reward model takes: the smaller of its tokenizer's and its position embeddings' limits."""
    limits = [getattr(tokenizer, "model_max_length", None),
              getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    # tokenizers without a limit report a huge sentinel (int(1e30))
    limits = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else FALLBACK_MAX_LENGTH


class ChatTemplateReader:
    """Recovers the messages of a prompt rendered by ``tokenizer``'s chat template (with the generation prompt).

    Reads conversations of alternating user and assistant turns ending with a user turn, optionally led by one
    system message: the shapes preference and prompt data sets have. ``messages`` returns ``None`` for anything
    else, and for every text that the recovered messages do not render back to (exactly, or as its end for a
    prompt cut at its start). A template that writes the system prompt inside the first user turn (Llama-2)
    gives that turn back with the system text in it: it renders the same.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._bos = tokenizer.bos_token or ""
        self._heads: list[tuple[str, str]] = []  # (markup before the first message, that message's role)
        self._between: dict[tuple[str, str], str] = {}  # (role, next role) -> markup between their contents
        self._end = ""  # after the last user turn, through the generation prompt
        if getattr(tokenizer, "chat_template", None):
            try:
                self._learn()
            except Exception:  # noqa: BLE001 - a template that cannot render the probe cannot be read
                self._heads = []
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        specials = set(tokenizer.all_special_tokens) | {t.content for t in added.values() if t.special}
        self._markup = [m for m in (*self._between.values(), self._end, *specials) if m]  # never in a content

    @property
    def readable(self) -> bool:
        return bool(self._heads)

    def messages(self, text: str) -> list[Message] | None:
        """The messages whose rendering (generation prompt included) is ``text``, or ``None``.

        A prompt cut at its start (``max_prompt_length`` keeps the end of long prompts) is read too: what is left
        of a user turn is its first message, a leading fragment of a system message or reply is dropped; the
        rendering of what is read must then end with ``text``, and no content may hold the template's markup.
        """
        text = self._without_bos(text)
        try:
            for head, role in self._heads:  # without a system message first: a template may add a default one
                if text.startswith(head):
                    messages = self._turns(text[len(head):], role)
                    if messages is not None and self._render(messages) == text:
                        return messages
            return self._cut_messages(text) if self._heads and text.endswith(self._end) else None
        except Exception:  # noqa: BLE001 - a template that refuses what was read: the prompt stays text
            return None

    def _cut_messages(self, text: str) -> list[Message] | None:
        # What the first separator in the text leads into tells whose turn the cut fell in.
        into_reply = text.find(self._between[("user", "assistant")])
        into_user = [(text.find(sep), sep) for key, sep in self._between.items() if key[1] == "user" and sep]
        into_user = min(((at, sep) for at, sep in into_user if at >= 0), default=(-1, ""))
        if into_user[0] >= 0 and (into_reply < 0 or into_user[0] < into_reply):
            rest = text[into_user[0] + len(into_user[1]):]  # a fragment of a reply or system message: dropped
        else:  # a fragment of a user turn: kept, without what is left of the markup that opened it
            rest = text[len(self._opener_tail(text, self._heads[0][0])):].lstrip()
        messages = self._turns(rest, "user")
        if messages and self._free_of_markup(messages) and self._render(messages).endswith(rest):
            return messages
        return None

    @staticmethod
    def _opener_tail(text: str, opener: str) -> str:
        """The longest end of ``opener`` that ``text`` starts with (the cut may fall inside the markup)."""
        return next((opener[cut:] for cut in range(len(opener)) if text.startswith(opener[cut:])), "")

    def _free_of_markup(self, messages: list[Message]) -> bool:
        return all(mark not in message["content"] for message in messages for mark in self._markup)

    def _learn(self) -> None:
        marks = _MARKS
        probe = [{"role": "user", "content": marks["user"]}, {"role": "assistant", "content": marks["assistant"]},
                 {"role": "user", "content": marks["user2"]}]
        head, user_to_assistant, assistant_to_user, end = _cut(self._render(probe), [m["content"] for m in probe])
        self._between = {("user", "assistant"): user_to_assistant, ("assistant", "user"): assistant_to_user}
        self._end = end
        heads = [(head, "user")]
        try:
            system = [{"role": "system", "content": marks["system"]}, probe[0]]
            system_head, system_to_user, system_end = _cut(self._render(system), [marks["system"], marks["user"]])
            if system_end == end:
                heads.append((system_head, "system"))
                self._between[("system", "user")] = system_to_user
        except Exception:  # noqa: BLE001 - templates that refuse system messages read conversations without one
            pass
        self._heads = heads

    def _turns(self, rest: str, role: str) -> list[Message] | None:
        messages: list[Message] = []
        while True:
            if role == "user" and rest.endswith(self._end):
                last = len(rest) - len(self._end)
                cut = rest.find(self._between[("user", "assistant")])
                if cut < 0 or cut >= last:  # no other turn before the generation prompt: the last message
                    return messages + [{"role": "user", "content": rest[:last]}]
            following = _FOLLOWING_ROLE[role]
            separator = self._between.get((role, following), "")
            cut = rest.find(separator) if separator else -1
            if cut < 0:
                return None
            messages.append({"role": role, "content": rest[:cut]})
            rest, role = rest[cut + len(separator):], following

    def _render(self, messages: list[Message]) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self._without_bos(text)

    def _without_bos(self, text: str) -> str:
        # the data encoder adds the tokenizer's BOS when the template does not: compare without it
        return text[len(self._bos):] if self._bos and text.startswith(self._bos) else text


def _cut(text: str, marks: list[str]) -> list[str]:
    """``text`` split at ``marks`` in order: the len(marks) + 1 pieces around them."""
    pieces, rest = [], text
    for mark in marks:
        if rest.count(mark) != 1:
            raise ValueError(f"the chat template does not render {mark!r} once")
        before, rest = rest.split(mark)
        pieces.append(before)
    return pieces + [rest]


class PolicyTextDecoder:
    """Prompts (messages where the policy's chat template rendered them, else text) and responses of rollout rows.

    Args:
        tokenizer: The policy's tokenizer.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.reader = ChatTemplateReader(tokenizer)

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
    ) -> tuple[list[Prompt], list[str]]:
        """Rows of (N, T) ids: the prompt is every real token before the response, the response ``completion_mask``."""
        ids = input_ids.cpu()
        response_mask = completion_mask.cpu().bool()
        prompt_mask = attention_mask.cpu().bool() & ~response_mask
        prompts: dict[tuple[int, ...], Prompt] = {}  # the samples of one prompt share its decoding
        rows_prompts, responses = [], []
        for row in range(ids.shape[0]):
            key = tuple(ids[row][prompt_mask[row]].tolist())
            if key not in prompts:
                prompts[key] = self.prompt(list(key))
            rows_prompts.append(prompts[key])
            responses.append(self._decode(ids[row][response_mask[row]].tolist(), skip_special_tokens=True))
        return rows_prompts, responses

    def prompt(self, ids: list[int]) -> Prompt:
        """The messages of a rendered conversation, or the prompt's text without special tokens."""
        return self.text_prompt(self._decode(ids, skip_special_tokens=False))

    def text_prompt(self, text: str) -> Prompt:
        """The same for a prompt given as text (special tokens kept, as the prediction records write it)."""
        messages = self.reader.messages(text) if self.reader.readable else None
        if messages is not None:
            return messages
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return self._decode(ids, skip_special_tokens=True)

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


class RewardInputs:
    """Text -> the reward model's token ids, padded the way the scorer reads them (see the module docstring).

    Args:
        tokenizer: The reward model's tokenizer.
        max_length: Longest prompt + response in tokens; longer prompts keep their end (and their BOS), responses
            their start.
        chat_template: ``auto`` renders conversations with the reward model's chat template (when it has one) and
            scores plain-text prompts as text; ``always`` also wraps a plain-text prompt as one user turn (a chat
            reward model scoring plain-text data); ``never`` scores text only (conversations as their turns'
            contents, one paragraph each).
        append_eos: End a plain-text response with the tokenizer's EOS (where a lit-align reward model reads its
            score). A chat template's own end of turn is never followed by a second one.
    """

    def __init__(
        self, tokenizer, max_length: int = FALLBACK_MAX_LENGTH, chat_template: ChatTemplateUse = "auto",
        append_eos: bool = True,
    ) -> None:
        if chat_template not in ("auto", "always", "never"):
            raise ValueError(f"chat_template must be auto, always or never; got {chat_template!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (a prompt token and a response token), got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chat_template = chat_template
        self.append_eos = append_eos
        self._adds_bos = tokenizer_adds_bos(tokenizer)

    def uses_template(self, prompt: Prompt) -> bool:
        if self.chat_template == "never" or not getattr(self.tokenizer, "chat_template", None):
            return False
        return self.chat_template == "always" or not isinstance(prompt, str)

    def encode(self, prompts: list[Prompt], responses: list[str]) -> list[list[int]]:
        """The reward model's ids of every (prompt, response)."""
        return [self.encode_one(p, r) for p, r in zip(prompts, responses)]

    def encode_one(self, prompt: Prompt, response: str) -> list[int]:
        tok = self.tokenizer
        if self.uses_template(prompt):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            prompt_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
            ids = self._with_bos(tok(full, add_special_tokens=False).input_ids)
            if len(ids) <= self.max_length:
                return ids
            # too long: cut at the prompt/response boundary (the template may render the prompt differently once
            # a reply follows; then the whole rendering is the "prompt" and keeps its end)
            split = len(prompt_text) if full.startswith(prompt_text) else len(full)
            prompt_ids = tok(full[:split], add_special_tokens=False).input_ids
            response_ids = tok(full[split:], add_special_tokens=False).input_ids if full[split:] else []
        else:
            text = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
            prompt_ids = tok(text, add_special_tokens=False).input_ids
            response_ids = tok(response, add_special_tokens=False).input_ids
            eos = tok.eos_token_id
            if self.append_eos and eos is not None and response_ids[-1:] != [eos]:
                response_ids = response_ids + [eos]
        return self._truncated(self._with_bos(prompt_ids), response_ids)

    def _with_bos(self, ids: list[int]) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] + ids if self._adds_bos and ids[:1] != [bos] else ids

    def _truncated(self, prompt_ids: list[int], response_ids: list[int]) -> list[int]:
        response_ids = response_ids[: self.max_length - 1]
        room = self.max_length - len(response_ids)
        if len(prompt_ids) > room:
            bos = self.tokenizer.bos_token_id
            head = prompt_ids[:1] if bos is not None and prompt_ids[:1] == [bos] else []  # room >= 1
            prompt_ids = head + prompt_ids[len(prompt_ids) - (room - len(head)):]
        return prompt_ids + response_ids

    def pad(self, sequences: list[list[int]], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (B, T) ``input_ids`` and ``attention_mask``: the scorer reads the last real token."""
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id or 0  # masked out either way
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return input_ids.to(device), attention_mask.to(device)

    @torch.no_grad()
    def score(self, model: nn.Module, prompts: list[Prompt], responses: list[str],
              batch_size: int | None = None) -> torch.Tensor:
        """(N,) float32 rewards from ``model(input_ids, attention_mask)``, on the model's device."""
        if not prompts:
            return torch.zeros(0)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        sequences = self.encode(prompts, responses)
        size = batch_size or len(sequences)
        scores = [
            model(*self.pad(sequences[start : start + size], device)).float().reshape(-1)
            for start in range(0, len(sequences), size)
        ]
        return torch.cat(scores)


class RetokenizedReward:
    """Scores rollouts of a policy with a reward model of another tokenizer: decode, re-encode, score.

    Args:
        reward_model: The scorer, ``forward(input_ids, attention_mask) -> (B,)``, with a ``tokenizer``.
        policy_tokenizer: The tokenizer of the policy that produced the rollouts.
        inputs: How the reward model's inputs are made (defaults: its limits, ``chat_template="auto"``).
    """

    def __init__(self, reward_model: nn.Module, policy_tokenizer, inputs: RewardInputs | None = None) -> None:
        self.reward_model = reward_model
        self.decoder = PolicyTextDecoder(policy_tokenizer)
        self.inputs = inputs or reward_inputs_of(reward_model)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 completion_mask: torch.Tensor) -> torch.Tensor:
        prompts, responses = self.decoder(input_ids, attention_mask, completion_mask)
        return self.inputs.score(self.reward_model, prompts, responses).to(input_ids.device)


def reward_inputs_of(reward_model: nn.Module, **overrides) -> RewardInputs:
    """The ``RewardInputs`` of a reward model: its own (``RewardScorer.inputs``) or, for another module with a
    ``tokenizer``, its limits and the defaults; then ``overrides`` that are not ``None``."""
    own = getattr(reward_model, "inputs", None)
    if isinstance(own, RewardInputs):
        settings = {"max_length": own.max_length, "chat_template": own.chat_template, "append_eos": own.append_eos}
    else:
        settings = {"max_length": default_max_length(reward_model, reward_model.tokenizer)}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return RewardInputs(reward_model.tokenizer, **settings)

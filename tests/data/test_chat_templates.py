"""Chat templates end to end: the prompt/completion boundary, BOS and the end-of-turn token for the template
families users bring (ChatML, Llama-3, Llama-2/Mistral, Gemma, Phi-3, Zephyr), and the rows and templates that
would make a run train on something else than the rows hold.

Every tokenizer is the embedded tiny one dressed as a family (``chat_template_helpers``): offline and fast.
"""

from __future__ import annotations

import copy

import pytest

from support.chat_templates import BY_NAME, FAMILIES, build_tokenizer, family_tokenizer
from lit_align.data import DataError, RowEncoder
from lit_align.data.chat import ChatTemplateError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def rows_for(family):
    system = [{"role": "system", "content": "Answer briefly."}] if family.system else []
    return [
        {"prompt": [user("What is a cat like?")], "chosen": [assistant("A cat is calm.")],
         "rejected": [assistant("A cat is loud.")]},
        {"prompt": [*system, user("Hi"), assistant("Hello, how can I help?"), user("Name a fruit.")],
         "chosen": [assistant("An apple.")], "rejected": [assistant("A rock.")]},
        # whole conversations, no prompt column: the shared leading messages are the prompt
        {"chosen": [user("Count to two."), assistant("One, two.")],
         "rejected": [user("Count to two."), assistant("No.")]},
    ]


def encode(tokenizer, rows, fields=("chosen", "rejected"), **kwargs):
    kwargs.setdefault("max_length", 512)
    kwargs.setdefault("max_prompt_length", 256)
    return RowEncoder(tokenizer, fields, "conversational", **kwargs).encode_all(rows, "chat.jsonl")


def full_rendering_ids(tokenizer, family, messages):
    """The token ids of the whole conversation as the template renders it, with the tokenizer's own BOS."""
    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False).input_ids
    if family.adds_bos and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id] + ids
    return ids


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_template_boundary_bos_and_one_end_of_turn(family):
    tokenizer = family_tokenizer(family.name)
    rows = rows_for(family)
    examples, stats = encode(tokenizer, rows)
    assert stats.kept == len(rows) and not stats.truncated_prompts and not stats.truncated_completions
    end_of_turn = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    for ex, row in zip(examples, rows):
        for field, completion in zip(("chosen", "rejected"), ex.completion_ids):
            messages = row["prompt"] + row[field] if "prompt" in row else row[field]
            full = full_rendering_ids(tokenizer, family, messages)
            # the example is the template's own rendering, token for token, up to the end of the reply ...
            assert full[: len(ex.prompt_ids)] == ex.prompt_ids
            assert full[: len(ex.prompt_ids) + len(completion)] == ex.prompt_ids + completion
            # ... and what the template writes after the closing token is layout only (newlines, a final EOS)
            rest = full[len(ex.prompt_ids) + len(completion):]
            assert tokenizer.decode(rest, skip_special_tokens=True).strip() == ""
            # exactly one end-of-turn token closes the completion, and nothing follows it
            assert completion[-1] == end_of_turn and completion.count(end_of_turn) == 1
            if tokenizer.eos_token_id != end_of_turn:
                assert tokenizer.eos_token_id not in completion
            reply = messages[-1]["content"]
            assert reply in tokenizer.decode(completion)
            # the generation prompt belongs to the prompt, not to the completion the model learns
            assert tokenizer.decode(ex.prompt_ids).endswith(family.generation_prompt)
            assert not tokenizer.decode(completion).startswith(family.generation_prompt.strip())
        if family.bos is not None:
            bos = tokenizer.bos_token_id
            assert ex.prompt_ids[0] == bos and ex.prompt_ids[1] != bos
            assert all(bos not in c for c in ex.completion_ids)
            if sum(m["role"] == "user" for m in row["chosen"] + row.get("prompt", [])) == 1:
                assert (ex.prompt_ids + ex.completion_ids[0]).count(bos) == 1  # Llama-2 writes one per user turn
        else:
            assert tokenizer("a").input_ids == tokenizer("a", add_special_tokens=False).input_ids  # adds nothing


def test_chatml_completion_ends_with_one_im_end_and_no_newline():
    """Qwen-style ChatML, where EOS is <|im_end|>: the template's own <|im_end|> closes the reply; no second EOS,
    and the newline the template writes after it belongs to the next turn."""
    tokenizer = family_tokenizer("chatml")
    (ex, *_), _ = encode(tokenizer, rows_for(BY_NAME["chatml"]))
    assert tokenizer.decode(ex.completion_ids[0]) == "A cat is calm.<|im_end|>"
    assert tokenizer.decode(ex.completion_ids[1]) == "A cat is loud.<|im_end|>"


def test_phi3_reply_closed_by_end_not_by_the_trailing_eos():
    tokenizer = family_tokenizer("phi3")
    (ex, *_), _ = encode(tokenizer, rows_for(BY_NAME["phi3"]))
    assert tokenizer.decode(ex.completion_ids[0]) == "A cat is calm.<|end|>"


def test_template_without_end_of_turn_token_gets_one_eos(tokenizer):
    """A template that separates turns with plain text: the reply gets the tokenizer's EOS, once."""
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = ("{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
                           "{% if add_generation_prompt %}assistant:\n{% endif %}")
    rows = [{"prompt": [user("Hi")], "chosen": [assistant("Yes.")], "rejected": [assistant("No.")]}]
    (ex,), _ = encode(plain, rows)
    assert plain.decode(ex.prompt_ids) == "<s>user:\nHi\n\nassistant:\n"
    assert plain.decode(ex.completion_ids[0]) == "Yes.</s>"  # the blank line between turns is not trained on
    assert ex.completion_ids[0].count(plain.eos_token_id) == 1


def test_template_that_drops_the_assistant_content_is_refused():
    """Before: both replies rendered as '<|im_start|>assistant\\n<|im_end|>', a run trained on equal pairs."""
    tokenizer = build_tokenizer(BY_NAME["chatml"], template="drops_assistant_content")
    rows = rows_for(BY_NAME["chatml"])
    with pytest.raises(ChatTemplateError) as err:
        encode(tokenizer, rows)
    message = str(err.value)
    assert message.startswith("chat.jsonl, row 0: the chat template of ")
    assert "drops the assistant's content of 'chosen'" in message and "message['content']" in message
    with pytest.raises(ChatTemplateError):  # a template fault: not skipped like a bad row
        encode(tokenizer, rows, invalid_rows="skip")


def test_pairs_identical_once_rendered_are_dropped_and_counted():
    """Gemma's template trims the content: replies that differ only in surrounding spaces are one sequence."""
    tokenizer = family_tokenizer("gemma")
    rows = rows_for(BY_NAME["gemma"])
    rows.append({"prompt": [user("Say yes.")], "chosen": [assistant("Yes.")], "rejected": [assistant("  Yes. ")]})
    examples, stats = encode(tokenizer, rows)
    assert [e.index for e in examples] == [0, 1, 2]
    assert stats.identical_pairs == 1 and stats.kept == 3 and stats.rows == 4
    assert "dropped 1 with chosen == rejected" in stats.summary("chat.jsonl")


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": [user("Hi")], "chosen": [assistant("Hello."), user("And?")], "rejected": [assistant("No.")]},
         "chat.jsonl, row 1: chosen[1] is a 'user' turn, but the completion must end with the assistant's reply"),
        ({"prompt": [user("Hi")], "chosen": [assistant("Hello.")], "rejected": [user("Hi again"), assistant("No.")]},
         "chat.jsonl, row 1: rejected[0] is a 'user' turn, but the completion must start with the assistant's reply"),
        # whole conversations: the message is named by its place in the row's field
        ({"chosen": [user("Hi"), assistant("Hello."), user("Bye")], "rejected": [user("Hi"), assistant("No.")]},
         "chat.jsonl, row 1: chosen[2] is a 'user' turn, but the completion must end with the assistant's reply"),
        ({"prompt": [user("Hi")], "chosen": [assistant("A"), user("B"), assistant("C")],
          "rejected": [assistant("No.")]},
         "chat.jsonl, row 1: chosen[1] is a 'user' turn inside the completion"),
        ({"prompt": [user("Hi")], "chosen": [assistant("Hello.")], "rejected": [assistant("   ")]},
         "chat.jsonl, row 1: rejected[0] (the assistant's reply) is empty"),
    ],
    ids=["ends-with-user", "starts-with-user", "conversation-ends-with-user", "user-inside", "empty-reply"],
)
def test_completion_must_be_the_assistants_reply(row, message):
    tokenizer = family_tokenizer("chatml")
    good = rows_for(BY_NAME["chatml"])[0]
    with pytest.raises(DataError, match="^" + message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        encode(tokenizer, [good, row])
    examples, stats = encode(tokenizer, [good, row], invalid_rows="skip")
    assert [e.index for e in examples] == [0] and stats.invalid == 1


def test_tool_results_inside_the_reply_are_trained_on():
    tokenizer = family_tokenizer("chatml")
    reply = [assistant("Let me look."), {"role": "tool", "content": "sunny"}, assistant("It is sunny.")]
    rows = [{"prompt": [user("Weather?")], "chosen": reply, "rejected": [assistant("No idea.")]}]
    (ex,), _ = encode(tokenizer, rows)
    text = tokenizer.decode(ex.completion_ids[0])
    assert text.startswith("Let me look.") and "sunny" in text and text.endswith("It is sunny.<|im_end|>")


def test_a_row_the_template_refuses_is_named_and_can_be_skipped():
    """Llama-2's template raises on roles that do not alternate: a fault of that row, not of the template."""
    tokenizer = family_tokenizer("llama2")
    good = rows_for(BY_NAME["llama2"])[0]
    bad = {"prompt": [user("Hi"), user("Hi again")], "chosen": [assistant("Yes.")], "rejected": [assistant("No.")]}
    with pytest.raises(DataError, match=r"^chat\.jsonl, row 1: the chat template of .* refuses the row: "
                                        r"Conversation roles must alternate"):
        encode(tokenizer, [good, bad])
    examples, stats = encode(tokenizer, [good, bad], invalid_rows="skip")
    assert [e.index for e in examples] == [0] and stats.invalid == 1


def test_template_whose_prompt_is_not_a_prefix_of_the_conversation_is_refused(tokenizer):
    odd = copy.deepcopy(tokenizer)  # the generation prompt says "<|assistant|>\n", a written reply has no newline
    odd.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    rows = [{"prompt": [user("Hi")], "chosen": [assistant("Yes.")], "rejected": [assistant("No.")]}]
    with pytest.raises(ChatTemplateError, match=r"^chat\.jsonl, row 0: the chat template of .* renders the prompt "
                                                r"differently once the 'chosen' reply follows it"):
        encode(odd, rows, invalid_rows="skip")

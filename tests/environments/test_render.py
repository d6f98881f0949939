"""Rendering an episode with the tokenizer's own chat template: deltas, the policy mask and the prefix check."""

from __future__ import annotations

import copy
import json

import pytest
from template_tokenizers import template_tokenizer

from lit_align.environments import CalculatorEnvironment
from lit_align.environments.render import (
    EpisodeTokens,
    accepts_system,
    environment_delta,
    render,
    supports_tools,
)
from lit_align.errors import UserError

ROW = {"prompt": "What is 3*(4+5)?", "answer": 27}
CALL = "<tool_call>" + json.dumps({"name": "calculator", "arguments": {"expression": "3*(4+5)"}}) + "</tool_call>"
TEMPLATES = ["chatml_tools", "chatml", "llama3", "gemma"]


def policy_ids(tokenizer, text: str, stop: bool = True) -> list[int]:
    """What a policy writes: the text's tokens, then the template's end-of-turn token (its EOS here)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids + [tokenizer.eos_token_id] if stop else ids


def play(tokenizer, replies: list[str], stop: bool = True) -> tuple[EpisodeTokens, list]:
    """An episode of the calculator environment with scripted policy replies."""
    env = CalculatorEnvironment()
    episode = EpisodeTokens(tokenizer, env.reset(ROW), env.tools)
    steps = []
    for reply in replies:
        steps.append(env.step(episode.add_policy(policy_ids(tokenizer, reply, stop))))
        if not steps[-1].done:
            episode.add_environment(steps[-1].messages)
    return episode, steps


def test_template_capabilities_are_read_from_the_template():
    assert [supports_tools(template_tokenizer(name)) for name in TEMPLATES] == [True, False, False, False]
    assert [accepts_system(template_tokenizer(name)) for name in TEMPLATES] == [True, True, True, False]


@pytest.mark.parametrize("name", TEMPLATES)
def test_episode_is_the_templates_rendering_with_the_policys_tokens_masked_in(name):
    tokenizer = template_tokenizer(name)
    episode, steps = play(tokenizer, [CALL, "It is 27."])
    assert [step.reward for step in steps] == [0.0, 1.0] and steps[-1].done
    # the sequence reads as the template's own rendering of the whole conversation (up to its final newline)
    text = tokenizer.decode(episode.input_ids)
    full = render(tokenizer, episode.messages, CalculatorEnvironment.tools)
    assert full.startswith(text) and not full[len(text):].strip()
    # mask 1 exactly on the policy's tokens, in order; the tool result and the template's tokens are 0
    written = [i for i, keep in zip(episode.input_ids, episode.policy_mask) if keep]
    assert written == policy_ids(tokenizer, CALL) + policy_ids(tokenizer, "It is 27.")
    assert episode.policy_tokens == len(written)
    masked_out = tokenizer.decode([i for i, keep in zip(episode.input_ids, episode.policy_mask) if not keep])
    assert "<tool_response>\n27\n</tool_response>" in masked_out and "calculator" in masked_out
    assert episode.policy_mask[: episode.prompt_length] == [0] * episode.prompt_length


def test_native_tools_go_through_the_template_and_others_through_a_system_or_user_message():
    env = CalculatorEnvironment()
    messages = env.reset(ROW)
    native = render(template_tokenizer("chatml_tools"), messages, env.tools, True)
    assert "<tools>\n" + json.dumps(env.tools[0]) in native
    assert "You can call these tools" in render(template_tokenizer("llama3"), messages, env.tools, True).split(
        "<|start_header_id|>user")[0]
    gemma = render(template_tokenizer("gemma"), messages, env.tools, True)
    assert gemma.startswith("<bos><start_of_turn>user\nYou can call these tools")


@pytest.mark.parametrize("name", ["chatml_tools", "llama3"])
def test_a_turn_cut_before_its_stop_token_is_closed_by_the_template(name):
    tokenizer = template_tokenizer(name)
    episode = EpisodeTokens(tokenizer, [{"role": "user", "content": ROW["prompt"]}], CalculatorEnvironment.tools)
    episode.add_policy(policy_ids(tokenizer, CALL, stop=False))
    delta = episode.add_environment([{"role": "tool", "name": "calculator", "content": "27"}])
    assert delta[0] == tokenizer.eos_token_id  # the end of turn the policy did not write, masked out
    stopped = EpisodeTokens(tokenizer, [{"role": "user", "content": ROW["prompt"]}], CalculatorEnvironment.tools)
    stopped.add_policy(policy_ids(tokenizer, CALL))
    stopped.add_environment([{"role": "tool", "name": "calculator", "content": "27"}])
    assert stopped.input_ids == episode.input_ids and sum(stopped.policy_mask) == sum(episode.policy_mask) + 1


def test_a_template_that_re_renders_earlier_turns_is_refused_naming_it():
    tokenizer = copy.deepcopy(template_tokenizer("chatml"))
    turns = "' + (messages | length | string) + '"  # the system line counts the turns: it changes at every turn
    tokenizer.chat_template = tokenizer.chat_template.replace("You are a helpful assistant.", turns)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": CALL}]
    with pytest.raises(UserError, match="chat template of tokenizer 'chatml' does not only append") as err:
        environment_delta(tokenizer, messages, [{"role": "tool", "content": "27"}], [tokenizer.eos_token_id])
    assert "\n" not in str(err.value)

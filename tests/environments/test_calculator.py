"""The calculator environment: the safe evaluator, the tool-call parser, reset/step/reward/done and the budgets."""

from __future__ import annotations

import json

import pytest

from lit_align.environments import CalculatorEnvironment, Environment, EnvStep, ToolCall, evaluate, parse_tool_calls
from lit_align.errors import UserError

ROW = {"prompt": "What is 3*(4+5)?", "answer": 27}


def call(expression: str) -> str:
    payload = {"name": "calculator", "arguments": {"expression": expression}}
    return f"Let me compute.\n<tool_call>{json.dumps(payload)}</tool_call>"


@pytest.mark.parametrize(
    "expression, value",
    [("3*(4+5)", 27), ("2**10", 1024), ("-3 + 4/2", -1.0), ("2**-1", 0.5), ("((1.5))*+2", 3.0), ("7 - -7", 14)],
)
def test_evaluator_computes_arithmetic(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    "expression, message",
    [
        ("__import__('os').system('true')", "only numbers"),
        ("abs(-1)", "only numbers"),
        ("x + 1", "only numbers"),
        ("True + 1", "only numbers"),
        ("'a' * 3", "only numbers"),
        ("[1][0]", "only numbers"),
        ("2 if 1 else 3", "only numbers"),
        ("7 // 2", "only numbers"),
        ("10**10**10", "too large"),
        ("9**99 * 9**99", "too large"),
        ("1e300", "too large"),
        ("(-8)**0.5", "not a real number"),
        ("1/0", "division by zero"),
        ("0**-1", "division by zero"),
        ("1 +", "not an arithmetic expression"),
        ("1+" * 150 + "1", "longer than"),
    ],
)
def test_evaluator_refuses_names_calls_and_huge_results(expression, message):
    with pytest.raises(ValueError, match=message):
        evaluate(expression)


def test_parser_reads_tagged_bare_and_fenced_calls():
    as_string = json.dumps({"name": "calculator", "arguments": json.dumps({"expression": "2"})})  # OpenAI's form
    parsed = parse_tool_calls(call("1+1") + f"\n<tool_call>\n{as_string}\n</tool_call>")
    assert parsed.calls == (ToolCall("calculator", {"expression": "1+1"}), ToolCall("calculator", {"expression": "2"}))
    assert parsed.errors == ()
    bare = '{"name": "calculator", "parameters": {"expression": "2*3"}}'
    assert parse_tool_calls(bare).calls == (ToolCall("calculator", {"expression": "2*3"}),)
    assert parse_tool_calls(f"```json\n{bare}\n```").calls == (ToolCall("calculator", {"expression": "2*3"}),)
    assert not parse_tool_calls("The answer is 27.").attempted


@pytest.mark.parametrize(
    "text, message",
    [
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        ('<tool_call>{"arguments": {}}</tool_call>', "JSON object"),
        ('<tool_call>{"name": "calculator", "arguments": [1]}</tool_call>', "not a JSON object"),
        ('<tool_call>{"name": "calculator", "arguments": {"expression": "1"', "missing its </tool_call>"),
        ('{"name": "calculator", "arguments": {', "not valid JSON"),
    ],
)
def test_parser_turns_malformed_calls_into_errors(text, message):
    parsed = parse_tool_calls(text)
    assert parsed.attempted and parsed.calls == () and message in parsed.errors[0]


def test_episode_with_a_tool_call_then_a_correct_answer():
    env = CalculatorEnvironment(max_turns=3)
    assert env.reset(ROW) == [{"role": "user", "content": "What is 3*(4+5)?"}]
    step = env.step(call("3*(4+5)"))
    assert step == EnvStep([{"role": "tool", "name": "calculator", "content": "27"}], 0.0, done=False)
    step = env.step("So the answer is 27.")
    assert (step.messages, step.reward, step.done, step.truncated) == ([], 1.0, True, False)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("again")


def test_wrong_answer_and_tool_errors_go_back_to_the_model():
    env = CalculatorEnvironment(system_prompt="Use the calculator.")
    assert env.reset(ROW)[0] == {"role": "system", "content": "Use the calculator."}
    step = env.step('<tool_call>{"name": "calc", "arguments": {}}</tool_call>' + call("1/0") + "<tool_call>{")
    contents = [message["content"] for message in step.messages]
    assert not step.done and all(message["role"] == "tool" for message in step.messages)
    assert contents == ["error: unknown tool 'calc'; the tools are calculator", "error: division by zero",
                        "error: the tool call is missing its </tool_call>"]  # in the order of the calls
    assert env.step(call("abs(1)")).messages[0]["content"].startswith("error: only numbers")
    assert env.step("It is 28, or 1,000.").reward == 0.0


def test_turn_budget_ends_the_episode_without_reward():
    env = CalculatorEnvironment(max_turns=2)
    env.reset({"question": "2+2?", "solution": "4.0"} | ROW)
    assert not env.step(call("2+2")).done
    step = env.step(call("2+2"))
    assert (step.messages, step.reward, step.done, step.truncated) == ([], 0.0, True, True)
    fresh = env.spawn()
    assert fresh.done and fresh.turns == 0 and fresh.max_turns == 2
    fresh = CalculatorEnvironment(prompt_key="question", answer_key="solution")
    fresh.reset({"question": "2+2?", "solution": "4.0"})
    assert fresh.step("4").reward == 1.0


def test_configuration_errors_are_one_line_user_errors():
    with pytest.raises(UserError, match="max_turns"):
        CalculatorEnvironment(max_turns=0)
    with pytest.raises(UserError, match="'answer'"):
        CalculatorEnvironment().reset({"prompt": "1+1?"})
    with pytest.raises(ValueError, match="role tool or user"):
        EnvStep([{"role": "assistant", "content": "x"}])


def test_environment_is_chosen_by_class_path():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(Environment, "environment")
    config = parser.parse_string(
        "environment:\n  class_path: lit_align.environments.CalculatorEnvironment\n  init_args:\n    max_turns: 2\n"
    )
    env = parser.instantiate_classes(config).environment
    assert isinstance(env, CalculatorEnvironment) and env.max_turns == 2 and env.max_tokens == 512

"""The evaluation report: win rate, reward, KL(pi || pi_0) and length, the reward-model judge, and the LLM judge
against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from support.judge_server import FakeJudgeServer, _candidates
from lit_align.cli.app import build_cli
from lit_align.evaluation import Judge, LLMJudge, RewardModelJudge, Verdict
from lit_align.evaluation.report import judge_prompts, markdown_table, summarise, update_report

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-test-4f1c9e0d"


# -- the table -------------------------------------------------------------------------------------------------


def test_a_judge_that_reads_messages_gets_the_prompts_messages():
    """Rows of a conversation reach a reward-model judge as the data's messages; other judges, and plain-text
    prompts, get the text the policy was given."""
    from types import SimpleNamespace

    chat = [{"role": "user", "content": "hi"}]
    rows = [{"prompt": "<|user|>\nhi"}, {"prompt": "<|user|>\nhi"}, {"prompt": "plain"}]
    prediction = {"batch": {"prompt_messages": [chat, None]},
                  "rollout": SimpleNamespace(prompt_index=torch.tensor([0, 0, 1]))}
    assert RewardModelJudge.reads_messages and not LLMJudge.reads_messages
    assert judge_prompts(RewardModelJudge(), rows, prediction) == [chat, chat, "plain"]
    assert judge_prompts(Judge(), rows, prediction) == ["<|user|>\nhi", "<|user|>\nhi", "plain"]


def test_summarise_hand_worked():
    """wins 1, 0, 0.5 (a tie), 0.8 -> hard win rate (1 + 0 + 0.5 + 1) / 4 = 62.5 %, mean P(win) 57.5 %;
    KL 2, 4, 6, 8 -> mean 5, population std sqrt((9 + 1 + 1 + 9) / 4) = sqrt(5); lengths 3, 5, 7, 9 -> 6;
    two of four ended -> 50 %; two prompts (index 0 and 1) with two samples each."""
    rows = [
        {"index": 0, "sample": 0, "win": 1.0, "kl": 2.0, "length": 3, "ended": True, "reward": 1.0},
        {"index": 0, "sample": 1, "win": 0.0, "kl": 4.0, "length": 5, "ended": False, "reward": 2.0},
        {"index": 1, "sample": 0, "win": 0.5, "kl": 6.0, "length": 7, "ended": True, "reward": 3.0},
        {"index": 1, "sample": 1, "win": 0.8, "kl": 8.0, "length": 9, "ended": False, "reward": 4.0},
    ]
    s = summarise(rows, "X")
    assert (s["prompts"], s["samples"]) == (2, 4)
    assert s["win_rate"] == pytest.approx(62.5) and s["win_prob"] == pytest.approx(57.5)
    assert s["kl"] == pytest.approx(5.0) and s["kl_std"] == pytest.approx(math.sqrt(5))
    assert s["length"] == pytest.approx(6.0) and s["ended"] == pytest.approx(50.0)
    assert s["reward"] == pytest.approx(2.5) and math.isnan(s["reference_reward"])


def test_report_keeps_one_row_per_method(tmp_path):
    base = {"prompts": 2, "samples": 2, "win_prob": 50.0, "reward": 0.1, "reference_reward": 0.0, "kl": 1.0,
            "kl_std": 0.0, "length": 4.0, "ended": 100.0}
    update_report(tmp_path, {**base, "method": "DPO", "win_rate": 40.0})
    update_report(tmp_path, {**base, "method": "PMLE", "win_rate": 55.0})
    update_report(tmp_path, {**base, "method": "DPO", "win_rate": 47.3})  # re-evaluated: replaces its row
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [(r["method"], float(r["win_rate"])) for r in rows] == [("PMLE", 55.0), ("DPO", 47.3)]
    table = (tmp_path / "report.md").read_text()
    assert table.count("\n") == 4 and "| DPO | 2 | 2 | 47.30 |" in table
    assert "n/a" in markdown_table([{**base, "method": "M", "win_rate": float("nan")}])


# -- the reward-model judge ------------------------------------------------------------------------------------


class LengthReward(nn.Module):
    """Reward = number of real tokens, so a response k tokens longer than the reference wins with sigma(k)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, input_ids, attention_mask):
        return attention_mask.sum(-1).float()


def test_reward_model_judge_is_bradley_terry_on_the_rewards(tokenizer):
    judge = RewardModelJudge(LengthReward(tokenizer))
    prompt, reference = "Describe the rain.", " wet"
    response = reference + " and cold"
    extra = len(tokenizer(response, add_special_tokens=False).input_ids) - len(
        tokenizer(reference, add_special_tokens=False).input_ids)
    assert extra > 0
    [verdict] = judge.compare_batch([prompt], [response], [reference])
    assert verdict.win == pytest.approx(torch.sigmoid(torch.tensor(float(extra))).item())
    assert verdict.reward - verdict.reference_reward == pytest.approx(extra)
    assert judge.compare(prompt, reference, reference).win == pytest.approx(0.5)


def test_reward_model_judge_loads_a_saved_sequence_classifier(tmp_path, tokenizer):
    """A Hugging Face sequence-classification directory, loaded through load_reward_model, scores exactly like
    the model it was saved from on prompt ids + response ids + EOS."""
    from lit_align.rewards.model import build_reward_scorer

    scorer = build_reward_scorer("tiny", seed=3)
    with torch.no_grad():  # a non-zero head, so that rewards differ between texts
        scorer.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    scorer.save_pretrained(tmp_path / "rm")
    judge = RewardModelJudge(str(tmp_path / "rm"))
    judge.setup(torch.device("cpu"))
    prompt, response = "Describe a village.", " A village is careful and kind."
    ids = tokenizer(prompt).input_ids + tokenizer(response, add_special_tokens=False).input_ids
    ids = ids + [tokenizer.eos_token_id]
    expected = scorer.eval()(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert judge.rewards([prompt], [response]).item() == pytest.approx(expected.item(), abs=1e-5)


# -- the LLM judge against a fake server -----------------------------------------------------------------------






def test_llm_judge_names_the_winner_whatever_the_order(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    with FakeJudgeServer() as server:
        judge = LLMJudge(server.url, "judge-model", api_key_env="JUDGE_KEY", timeout=5, max_retries=0, seed=1)
        verdicts = judge.compare_batch(["p"] * 8, ["a longer reply"] * 4 + ["short"] * 4,
                                       ["short"] * 4 + ["a longer reply"] * 4)
    assert [v.win for v in verdicts] == [1.0] * 4 + [0.0] * 4
    assert len(server.requests) == 8
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in server.requests} == {f"Bearer {SECRET}"}
    assert {r["body"]["model"] for r in server.requests} == {"judge-model"}
    # the order was randomised: the policy's response was shown first in some requests and second in others
    first = [_candidates(r["body"]["messages"][-1]["content"])[0] == "a longer reply" for r in server.requests[:4]]
    assert 0 < sum(first) < 4


def test_llm_judge_retries_server_errors_and_scores_unparsed_replies_as_ties(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with FakeJudgeServer(fail_first=2) as server:
        judge = LLMJudge(server.url, "m", api_key_env=None, timeout=5, max_retries=2)
        monkeypatch.setattr("lit_align.evaluation.llm_judge.time.sleep", lambda s: None)
        assert judge.compare("p", "longer", "short").win == 1.0
        assert len(server.requests) == 3  # two 500s, then the answer
    with FakeJudgeServer(reply="I cannot decide.") as server:
        judge = LLMJudge(server.url, "m", api_key_env=None, timeout=5, max_retries=0)
        assert judge.compare("p", "longer", "short") == Verdict(0.5)
        assert judge.unparsed == 1
    with FakeJudgeServer(limit=0) as server:
        judge = LLMJudge(server.url, "m", api_key_env=None, timeout=5, max_retries=0)
        with pytest.raises(RuntimeError, match="HTTP 429"):
            judge.compare("p", "longer", "short")


def test_llm_judge_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    judge = LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env="NO_SUCH_KEY")
    with pytest.raises(RuntimeError, match="NO_SUCH_KEY"):
        judge.setup(torch.device("cpu"))


# -- `lit-align evaluate` on the embedded default ---------------------------------------------------------------


def _evaluate(*extra: str) -> None:
    build_cli([
        "evaluate", "--config", str(ROOT / "configs" / "dpo.yaml"), "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", "--trainer.default_root_dir=runs/eval",
        "--trainer.limit_predict_batches=2", "--data.init_args.eval_batch_size=4",
        "--predictions.sampling.max_new_tokens=6", "--output_dir=report", *extra,
    ])


def test_evaluate_with_the_llm_judge_writes_the_report_and_never_the_key(run_dir, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    with FakeJudgeServer(limit=20) as server:
        _evaluate("--judge=LLMJudge", f"--judge.base_url={server.url}", "--judge.model=judge-model",
                  "--judge.api_key_env=JUDGE_KEY", "--judge.max_retries=0", "--method=tiny-dpo")
    assert len(server.requests) == 8  # 2 batches of 4 prompts, one sample each
    rows = list(csv.DictReader(open("report/report.csv")))
    assert [r["method"] for r in rows] == ["tiny-dpo"] and int(rows[0]["prompts"]) == 8
    # the fake judge prefers the longer text: the win rate is the share of responses longer than their reference
    samples = [json.loads(line) for line in open("report/samples.jsonl")]
    assert all(len(s["response"]) != len(s["reference"]) for s in samples)  # no order-dependent ties
    expected = 100 * sum(len(s["response"]) > len(s["reference"]) for s in samples) / len(samples)
    assert float(rows[0]["win_rate"]) == pytest.approx(expected)
    # untrained policy == its reference copy: KL exactly 0 on every sample
    assert all(s["kl"] == 0.0 for s in samples)
    assert "| tiny-dpo | 8 | 8 |" in open("report/report.md").read()
    for path in Path(".").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="ignore"), path


def test_evaluate_with_a_reward_model_and_a_separate_reference(run_dir):
    """A trained checkpoint evaluated against the untrained tiny model as pi_0: the KL column is the mean over
    samples of sum_t (ln pi - ln pi_0), which is no longer zero; rewards come from the judge."""
    from support.cli import fit_args

    build_cli(fit_args("dpo.yaml", "--model.init_args.learning_rate=0.05", "--export.enabled=false", steps=3))
    _evaluate("--judge=RewardModelJudge", "--judge.reward_model=tiny", "--reference_model=tiny",
              "--ckpt_path=runs/test/checkpoints/last.ckpt")
    row = next(csv.DictReader(open("report/report.csv")))
    samples = [json.loads(line) for line in open("report/samples.jsonl")]
    assert row["method"] == "DPO" and len(samples) == 8
    assert float(row["kl"]) == pytest.approx(sum(s["kl"] for s in samples) / 8, rel=1e-5)
    assert any(abs(s["kl"]) > 1e-3 for s in samples)
    assert all(s["win"] == pytest.approx(1 / (1 + math.exp(s["reference_reward"] - s["reward"])), abs=1e-5)
               for s in samples)
    assert float(row["reward"]) == pytest.approx(sum(s["reward"] for s in samples) / 8, rel=1e-5, abs=1e-6)
    assert re.search(r"\| DPO \| 8 \| 8 \|", open("report/report.md").read())


def test_kl_column_scores_the_distribution_the_samples_came_from():
    """Responses sampled at temperature T come from pi_T: the KL column is the log-ratio of pi_T and pi_0,T, not of
    the untempered models (which at T != 1 estimates no KL); greedy decoding leaves it empty."""
    from lit_align.evaluation import EvaluationReport
    from lit_align.models.logprobs import completion_token_logprobs
    from lit_align.policy.with_reference import PolicyWithReference
    from lit_align.generation.rollout import SamplingConfig, sample

    policy = PolicyWithReference(model="tiny", reference="copy")
    with torch.no_grad():
        for p in policy.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tokenizer = policy.tokenizer
    prompts = tokenizer(["Describe the sea.", "A cat?"], padding=True, return_tensors="pt")
    rollout = sample(policy.policy, prompts.input_ids, prompts.attention_mask,
                     SamplingConfig(max_new_tokens=6, temperature=0.5), tokenizer.eos_token_id, tokenizer.pad_token_id)
    module = type("M", (), {"policy": policy})()
    report = EvaluationReport()
    with torch.no_grad():
        tempered = report._sequence_kl(module, rollout, 0.5)
        ids, mask, completion = rollout.input_ids, rollout.attention_mask, rollout.completion_mask
        expected = (completion_token_logprobs(policy(ids, mask), ids, completion, 0.5)[0]
                    - completion_token_logprobs(policy.reference_logits(ids, mask), ids, completion, 0.5)[0]).sum(-1)
        untempered = report._sequence_kl(module, rollout, 1.0)
    torch.testing.assert_close(tempered, expected.float(), atol=1e-5, rtol=0)
    assert (tempered - untempered).abs().max() > 1e-3
    assert torch.isnan(report._sequence_kl(module, rollout, 0.0)).all()

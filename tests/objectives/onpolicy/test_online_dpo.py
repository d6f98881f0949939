"""Online DPO: pairs from the current policy, judged by a reward model or a Judge, trained with the DPO loss."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from support.cli import fit_args
from torch import nn

from lit_align.cli.app import build_cli
from lit_align.evaluation.judges import Judge, Verdict
from lit_align.objectives import OnlineDPO
from lit_align.generation.rollout import SamplingConfig

SAMPLING = SamplingConfig(max_new_tokens=8, temperature=1.0)
SEEN: list[tuple[str, str, str]] = []


class LongerJudge(Judge):
    """Prefers the longer response (a judge as a user writes one); a tie is 0.5."""

    def compare(self, prompt, response, reference):
        SEEN.append((prompt, response, reference))
        return Verdict(win=0.5 if len(response) == len(reference) else float(len(response) > len(reference)))


class CountReward(nn.Module):
    """How often token 10 occurs in the sequence."""

    def forward(self, input_ids, attention_mask):
        return ((input_ids == 10) & attention_mask.bool()).float().sum(-1)


def prompts(tokenizer):
    ids = tokenizer("Describe the sea.").input_ids
    return {"prompt_ids": torch.tensor([ids, ids]), "prompt_mask": torch.ones(2, len(ids), dtype=torch.long),
            "index": torch.arange(2)}


def moved_off_reference(module):
    with torch.no_grad():  # so that the log-ratios are not all 0
        for p in module.policy.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def test_judge_picks_the_chosen_response_and_the_loss_is_dpo_on_it(tokenizer):
    torch.manual_seed(0)
    module = moved_off_reference(OnlineDPO(judge=LongerJudge(), sampling=SAMPLING, beta=0.5))
    assert module.reward_model is None
    SEEN.clear()
    exp = module.make_experience(prompts(tokenizer))
    lengths = [len(tokenizer.decode(exp.input_ids[i][exp.completion_mask[i].bool()], skip_special_tokens=True))
               for i in range(4)]
    assert [s[1] for s in SEEN] == [tokenizer.decode(exp.input_ids[i][exp.completion_mask[i].bool()],
                                                     skip_special_tokens=True) for i in (0, 2)]
    assert SEEN[0][0] == "Describe the sea."  # the prompt as text
    for pair in range(2):  # the judge's win probability is the a1 row's score, its complement the a2 row's
        a1, a2 = lengths[2 * pair], lengths[2 * pair + 1]
        win = 0.5 if a1 == a2 else float(a1 > a2)
        assert exp.scores[2 * pair : 2 * pair + 2].tolist() == [win, 1 - win]
    loss, metrics = module.experience_loss(exp)
    # independently: ln pi and ln pi0 of every row, DPO with the judge's pick as chosen (a1 on a tie)
    logps = module.policy_token_logps(exp).sum(-1).detach()
    ref = exp.ref_logps.sum(-1)
    first = exp.scores[0::2] >= exp.scores[1::2]
    ratio = logps - ref
    margin = torch.where(first, ratio[0::2] - ratio[1::2], ratio[1::2] - ratio[0::2])
    torch.testing.assert_close(loss, -F.logsigmoid(0.5 * margin).mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metrics["rewards/margins"], 0.5 * margin, atol=1e-5, rtol=1e-5)


def test_reward_model_scores_choose_and_swapping_the_scores_flips_the_margin(tokenizer):
    torch.manual_seed(0)
    module = moved_off_reference(OnlineDPO(reward_model=CountReward(), sampling=SAMPLING))
    exp = module.make_experience(prompts(tokenizer))
    exp.scores = torch.tensor([1.0, 0.0, 0.0, 1.0])  # pair 0: a1 chosen; pair 1: a2 chosen
    _, metrics = module.experience_loss(exp)
    swapped = dataclasses.replace(exp, scores=torch.tensor([0.0, 1.0, 1.0, 0.0]))
    _, flipped = module.experience_loss(swapped)
    torch.testing.assert_close(flipped["rewards/margins"], -metrics["rewards/margins"])
    assert metrics["rewards/margins"].abs().min() > 0


def test_online_ipo_regresses_the_summed_margin(tokenizer):
    """TRL's online IPO: (h - 1/(2 beta))^2 on the summed log-ratio margin of the chosen over the rejected."""
    torch.manual_seed(0)
    module = moved_off_reference(OnlineDPO(reward_model=CountReward(), sampling=SAMPLING, beta=0.5,
                                           loss_type="ipo"))
    exp = module.make_experience(prompts(tokenizer))
    exp.scores = torch.tensor([1.0, 0.0, 0.0, 1.0])  # pair 0: a1 chosen; pair 1: a2 chosen
    loss, _ = module.experience_loss(exp)
    ratio = module.policy_token_logps(exp).sum(-1).detach() - exp.ref_logps.sum(-1)
    margin = torch.stack([ratio[0] - ratio[1], ratio[3] - ratio[2]])
    torch.testing.assert_close(loss, ((margin - 1.0) ** 2).mean(), atol=1e-5, rtol=1e-5)


def test_online_dpo_needs_a_live_reference():
    from lit_align import PolicyWithReference

    with pytest.raises(ValueError, match="copy or lora"):
        OnlineDPO(judge=LongerJudge(), policy=PolicyWithReference(model="tiny", reference="none"))


@pytest.mark.parametrize("extra", [pytest.param([], marks=pytest.mark.extended),  # trains a reward stage first
                                   ["--model.judge=test_online_dpo.LongerJudge"]], ids=["reward_stage", "judge"])
def test_config_trains_two_steps(run_dir, extra):
    cli = build_cli(fit_args("online_dpo.yaml", "--data.limit_rows=16", "--export.enabled=false",
                             "--trainer.log_every_n_steps=1", *extra, steps=2))
    module = cli.model
    assert type(module) is OnlineDPO and cli.trainer.global_step == 2
    policy, reference = module.policy.policy.state_dict(), module.policy.reference.weights.state_dict()
    assert any(not torch.equal(policy[k], reference[k]) for k in policy)  # the policy trained, pi_0 did not
    assert (module.reward_model is None) == bool(extra)  # a judge replaces the reward stage
    (metrics,) = (run_dir / "runs/test").glob("logs/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    for name in ("train/loss", "train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins",
                 "train/rewards/accuracies", "train/logps/chosen", "train/logps/rejected"):
        assert any(row.get(name) for row in rows), name

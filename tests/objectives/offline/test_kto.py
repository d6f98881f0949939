"""KTO: the loss worked by hand, the mismatched pairs of its reference point, and configs/kto.yaml through the CLI."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from support.cli import fit_args

from lit_align import PolicyWithReference
from lit_align.cli.app import build_cli
from lit_align.models.logprobs import sequence_logprobs
from lit_align.losses import kto_loss, kto_reference_point
from lit_align.objectives import KTO
from lit_align.objectives.offline.kto import mismatched_rows


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_loss_by_hand():
    # r = ln pi - ln pi0 = [2, -2]; z0 = 1, beta = 0.5, w_d = 2, w_u = 0.5:
    #   desirable:   2   * (1 - s(0.5 * (2 - 1)))  = 2 * (1 - s(0.5)) = 0.755081
    #   undesirable: 0.5 * (1 - s(0.5 * (1 + 2)))  = 0.5 * (1 - s(1.5)) = 0.091213
    out = kto_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-3.0, -1.0]), torch.tensor([True, False]),
                   torch.tensor(1.0), beta=0.5, desirable_weight=2.0, undesirable_weight=0.5)
    expected = torch.tensor([2 * (1 - sigmoid(0.5)), 0.5 * (1 - sigmoid(1.5))])
    torch.testing.assert_close(out.losses, expected)
    torch.testing.assert_close(out.losses, torch.tensor([0.755081, 0.091213]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.rewards, torch.tensor([1.0, -1.0]))  # beta * r


def test_kto_loss_flipping_label_and_ratio_swaps_the_loss():
    # s(beta (r - z0)) for a desirable row with ratio r equals s(beta (z0 - r')) for an undesirable one with
    # r' = 2 z0 - r: the two halves are mirror images around the reference point
    ratio = torch.tensor([0.3, -1.2, 2.0])
    z0 = torch.tensor(0.4)
    zeros = torch.zeros(3)
    good = kto_loss(ratio, zeros, torch.ones(3, dtype=torch.bool), z0).losses
    bad = kto_loss(2 * z0 - ratio, zeros, torch.zeros(3, dtype=torch.bool), z0).losses
    torch.testing.assert_close(good, bad)


def test_kto_reference_point_is_the_clamped_mean_log_ratio_without_gradient():
    policy = torch.tensor([0.5, -1.5], requires_grad=True)
    assert kto_reference_point(policy, torch.zeros(2)).item() == 0.0  # mean -0.5, clamped at 0
    z0 = kto_reference_point(torch.tensor([-1.0, -2.0], requires_grad=True), torch.tensor([-2.0, -4.0]))
    assert z0.item() == pytest.approx(1.5) and not z0.requires_grad  # mean of 1 and 2


def test_mismatched_rows_pair_each_prompt_with_the_previous_completion():
    pad = 0
    # row 0: prompt [5, 6], completion [7]; row 1: prompt [8], completion [9, 10, 11] (right-padded rows)
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
        "completion_mask": torch.tensor([[0, 0, 1, 0], [0, 1, 1, 1]]),
        "index": torch.tensor([3, 4]),
    }
    out = mismatched_rows(batch, pad)
    assert out["input_ids"].tolist() == [[5, 6, 9, 10, 11], [8, 7, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert out["completion_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert out["index"].tolist() == [3, 4]


def test_kto_refuses_a_reference_that_cannot_score_mismatched_pairs():
    with pytest.raises(ValueError, match="KTO's reference point.*copy or lora"):
        KTO(policy=PolicyWithReference(model="tiny", reference="cache"))


def test_config_trains_two_steps_and_matches_an_independent_computation(run_dir):
    cli = build_cli(fit_args("kto.yaml", "--trainer.log_every_n_steps=1", "--data.limit_rows=16",
                             "--data.batch_size=8", "--export.enabled=false", steps=2))
    module = cli.model
    assert type(module) is KTO and cli.trainer.global_step == 2
    policy_state, reference_state = module.policy.policy.state_dict(), module.policy.reference.weights.state_dict()
    assert any(not torch.equal(policy_state[k], reference_state[k]) for k in policy_state)  # the policy trained
    (metrics,) = (run_dir / "runs/test").glob("logs/version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    for name in ("train/loss", "train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins",
                 "train/logps/chosen", "train/logps/rejected", "train/kl"):
        assert any(row.get(name) for row in rows), name

    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch["label"].any() and (~batch["label"]).any()
    # a few steps of maximum likelihood on the batch's completions make the policy likelier than pi_0 on every
    # completion of the data, the mismatched ones included: z0 > 0, so the clamp does not hide it
    optimizer = torch.optim.SGD(module.policy.trainable_parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        (-sequence_logprobs(module.policy(batch["input_ids"], batch["attention_mask"]), batch["input_ids"],
                            batch["completion_mask"]).mean()).backward()
        optimizer.step()
    with torch.no_grad():
        loss, metrics = module.compute_loss(batch, "val")

        def ratios(rows):
            ids, mask, comp = rows["input_ids"], rows["attention_mask"], rows["completion_mask"]
            return (sequence_logprobs(module.policy(ids, mask), ids, comp)
                    - sequence_logprobs(module.policy.reference_logits(ids, mask), ids, comp))

        # the reference point from separate (unpacked) rows of prompt i + completion i-1
        ids, comp = batch["input_ids"], batch["completion_mask"].bool()
        prompt = batch["attention_mask"].bool() & ~comp
        mismatched = [torch.cat([ids[i][prompt[i]], ids[i - 1][comp[i - 1]]]) for i in range(ids.shape[0])]
        z0 = torch.stack([ratios({"input_ids": row[None], "attention_mask": torch.ones_like(row)[None],
                                  "completion_mask": torch.cat([torch.zeros(int(prompt[i].sum()), dtype=torch.long),
                                                                torch.ones(int(comp[i - 1].sum()), dtype=torch.long)])[None]})
                          for i, row in enumerate(mismatched)]).mean().clamp(min=0)
        ratio = ratios(batch)
    assert z0 > 0
    torch.testing.assert_close(metrics["kl"], z0, atol=1e-4, rtol=1e-4)
    expected = torch.where(batch["label"], 1 - torch.sigmoid(0.1 * (ratio - z0)),
                           1 - torch.sigmoid(0.1 * (z0 - ratio)))
    torch.testing.assert_close(loss, expected.mean(), atol=1e-5, rtol=1e-5)


def test_reference_point_averages_every_rank_before_the_clamp(tokenizer):
    """Under several ranks z0 is max(0, mean over all ranks' mismatched log-ratios): the sum and count are
    all-reduced, so a rank whose own mean is negative still gets the positive global one."""
    from types import SimpleNamespace

    module = KTO(policy=PolicyWithReference(model="tiny", reference="copy"))
    prompt, completion = tokenizer("Hi").input_ids, tokenizer(" there").input_ids
    ids = torch.tensor([prompt + completion, prompt + completion])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "completion_mask": torch.tensor([[0] * len(prompt) + [1] * len(completion)] * 2), "index": torch.arange(2)}
    with torch.no_grad():
        for p in module.policy.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
        local = mismatched_rows(batch, tokenizer.pad_token_id)
        ratio = (module.row_logps(local).policy - module.row_logps(local, "reference").policy)
    other = {"sum": 10.0 - ratio.sum().item(), "count": 2.0}  # the other rank: the global mean is 10 / 4 = 2.5
    reduced = []

    def reduce(tensor, reduce_op):
        reduced.append(reduce_op)
        return tensor + torch.tensor([other["sum"], other["count"]])

    module._trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(reduce=reduce))
    try:
        z0 = module.reference_point(batch)
    finally:
        module._trainer = None
    assert reduced == ["sum"]
    assert z0.item() == pytest.approx(2.5, rel=1e-5)

"""The oracle task: labels follow the tilted Bradley-Terry model, exact KL matches sampling, the oracle reward."""

from __future__ import annotations

import math

import torch

from lit_align.data.oracle import OracleDataModule
from lit_align.data.tabular_oracle import TabularOracle
from lit_align.models.logprobs import sequence_logprobs
from lit_align.models.oracle import exact_sequence_kl, logits_fn, response_logprobs, sample_responses


def _z(wins: torch.Tensor, probs: torch.Tensor) -> float:
    """Standardised difference between observed wins and the model's expected wins."""
    probs = probs.double()
    return ((wins.double() - probs).sum() / (probs * (1 - probs)).sum().sqrt()).item()


def test_lm_oracle_labels_have_the_model_frequencies():
    dm = OracleDataModule(num_pairs=1500, val_pairs=0, num_prompts=4, response_length=1, gamma=0.5, tokenizer="tiny")
    task = dm.build_task()
    pairs = task.pairs["train"]
    # independent ln pi*(a|x): a plain forward of the target on prompt + response, last-position log-softmax
    x = task.prompts[pairs["prompt_index"]]
    logits = task.target(input_ids=torch.cat([x, pairs["a"]], 1)).logits[:, -2].float()
    assert torch.allclose(logits.log_softmax(-1).gather(1, pairs["a"]).squeeze(1), pairs["target_a"], atol=1e-5)
    probs = task.preference_probability()
    assert probs.std() > 0.1  # the scaled target makes labels informative, not coin flips
    assert abs(_z(pairs["a_wins"], probs)) < 4
    for low, high in ((0.0, 0.3), (0.3, 0.7), (0.7, 1.0)):  # calibrated within bins too
        inside = (probs >= low) & (probs < high)
        assert inside.sum() > 100 and abs(_z(pairs["a_wins"][inside], probs[inside])) < 4


def test_examples_put_the_winner_first_and_batches_match_preference_layout():
    dm = OracleDataModule(num_pairs=32, val_pairs=8, num_prompts=4, response_length=2, tokenizer="tiny", batch_size=4)
    dm.setup()
    pairs = dm.task.pairs["train"]
    for example in dm.train_examples[:8]:
        i = example.index
        a, b = pairs["a"][i].tolist(), pairs["b"][i].tolist()
        assert example.completion_ids == ([a, b] if pairs["a_wins"][i] else [b, a])
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 8 + 2) and batch["completion_mask"].sum().item() == 8 * 2
    assert batch["prompt_ids"].shape == (4, 8) and len(dm.val_examples) == 8


def test_oracle_reward_is_gamma_times_target_logprob_with_left_padding():
    dm = OracleDataModule(num_pairs=8, val_pairs=0, num_prompts=4, response_length=2, gamma=0.3, tokenizer="tiny")
    dm.setup()
    batch = dm.collator()(dm.train_examples[:4])
    reward = dm.reward()
    chosen = batch["input_ids"][:4]
    expected = 0.3 * sequence_logprobs(dm.task.target(input_ids=chosen).logits, chosen, batch["completion_mask"][:4])
    assert torch.allclose(reward(chosen, batch["attention_mask"][:4]), expected, atol=1e-5)
    # the same rows behind two columns of left padding give the same rewards
    padded = torch.nn.functional.pad(chosen, (2, 0))
    mask = torch.nn.functional.pad(batch["attention_mask"][:4], (2, 0))
    assert torch.allclose(reward(padded, mask), expected, atol=1e-4)


def test_exact_sequence_kl_matches_monte_carlo():
    """KL(p||q) = E_{a~p}[ln p(a) - ln q(a)]: 4000 exact samples per prompt agree within 4 standard errors."""
    dm = OracleDataModule(num_pairs=1, val_pairs=0, num_prompts=2, target_logit_scale=4.0, tokenizer="tiny")
    task = dm.build_task()
    p, q = logits_fn(task.target), logits_fn(task.reference)
    exact = exact_sequence_kl(p, q, task.prompts, 2)
    rows = task.prompts.repeat_interleave(4000, 0)
    samples = sample_responses(p, rows, 2, torch.Generator().manual_seed(0))
    log_ratio = (response_logprobs(p, rows, samples) - response_logprobs(q, rows, samples)).view(2, 4000)
    error = log_ratio.std(-1) / math.sqrt(4000)
    assert exact.min() > 0.1
    assert ((log_ratio.mean(-1) - exact).abs() < 4 * error).all()


def test_tabular_toy_labels_have_the_model_frequencies():
    oracle = TabularOracle.toy(trials=2, gamma=2.0, std=1.0, seed=3)
    pairs = oracle.sample_pairs(20000, torch.Generator().manual_seed(0))
    # P(chosen > rejected) is at least 1/2 on average, and a > b is recovered from symmetric relabelling
    probs = oracle.preference_probability(pairs.prompt, pairs.chosen, pairs.rejected)
    # each (x, a, b) appears as (chosen, rejected) with probability P(a > b): counts of both orders match it
    trial = 1000 * torch.arange(2).repeat_interleave(20000)
    flat = lambda c, r: (pairs.prompt * 100 + c * 10 + r).flatten() + trial  # noqa: E731
    forward, backward = flat(pairs.chosen, pairs.rejected), flat(pairs.rejected, pairs.chosen)
    keys, counts = torch.unique(torch.cat([forward, backward]), return_counts=True)
    wins = torch.zeros_like(keys, dtype=torch.float64)
    wins.index_add_(0, torch.searchsorted(keys, forward), torch.ones(forward.numel(), dtype=torch.float64))
    totals = counts.double()
    model = torch.zeros_like(wins)
    model[torch.searchsorted(keys, forward)] = probs.flatten()
    keep = (totals >= 50) & (model > 0)
    z = (wins[keep] - totals[keep] * model[keep]) / (totals[keep] * model[keep] * (1 - model[keep])).sqrt()
    assert keep.sum() > 50 and z.abs().max() < 4.5 and z.mean().abs() < 0.5

"""PMLE (PAPER 2a): its loss by hand, its KL estimators against exact gradients by enumeration, and a CLI fit.

Hand-worked values:
    pmle_loss, gamma = 0.5, ln pi(a+) = -2, ln pi(a-) = -4: gamma * (ln pi(a+) - ln pi(a-)) = 1
        loss = -ln s(1) = ln(1 + e^-1) = ln(1.3678794) = 0.3132617; rewards gamma * ln pi = -1.0 and -2.0
        d loss / d ln pi(a+) = -gamma * s(-1) = -0.5 * 0.2689414 = -0.1344707 (and +0.1344707 for a-)
    sampled_kl_surrogate, k = 2, ln pi = [-1, -2], ln pi0 = [-1.5, -1]:
        kl = [0.5, -1]; leave-one-out baselines = [-1, 0.5]; advantages = [1.5, -1.5]
        value = kl = [0.5, -1]; d/d ln pi = advantages = [1.5, -1.5]
    k = 3, ln pi = [-1, -2, -3], ln pi0 = [-1, -1, -1]: kl = [0, -1, -2]
        baselines = [(-1 - 2) / 2, (0 - 2) / 2, (0 - 1) / 2] = [-1.5, -1, -0.5]; advantages = [1.5, 0, -1.5]
    token_kl_surrogate, KL_t = [0.1, 0.2, 0.3], mask = [1, 1, 0]:
        value = 0.1 + 0.2 = 0.3; d/d ln pi(a_t) = KL still to come = [0.2, 0, 0]; d/d KL_t = mask = [1, 1, 0]
"""

from __future__ import annotations

import csv
import itertools
import math
import os

import pytest
import torch

from support.cli import fit_args
from lit_align.cli.app import build_cli
from lit_align.data import PreferenceDataModule
from lit_align.models.logprobs import token_kl
from lit_align.losses import pmle_loss, sampled_kl_surrogate, token_kl_surrogate
from lit_align.models.loading import load_causal_lm
from lit_align.objectives import PMLE
from lit_align.policy.with_reference import PolicyWithReference

# -- the loss, by hand ----------------------------------------------------------------------------------------


def test_pmle_loss_hand_value_rewards_and_gradient():
    chosen = torch.tensor([-2.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-4.0], dtype=torch.float64, requires_grad=True)
    out = pmle_loss(chosen, rejected, gamma=0.5)
    assert out.losses.item() == pytest.approx(0.3132617, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-1.0) and out.rejected_rewards.item() == pytest.approx(-2.0)
    out.losses.sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.1344707, abs=1e-6)
    assert rejected.grad.item() == pytest.approx(0.1344707, abs=1e-6)


def test_pmle_loss_is_ln2_for_equal_likelihoods_and_flips_when_swapped():
    a, b = torch.tensor([-3.0, -7.0]), torch.tensor([-5.0, -1.0])
    torch.testing.assert_close(pmle_loss(a, a, 0.3).losses, torch.full((2,), math.log(2.0)))
    forward, swapped = pmle_loss(a, b, 0.3).losses, pmle_loss(b, a, 0.3).losses
    # -ln s(z) - (-ln s(-z)) = -z
    torch.testing.assert_close(forward - swapped, -0.3 * (a - b))


def test_loo_surrogate_hand_values():
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    surrogate, kl = sampled_kl_surrogate(lp, torch.tensor([-1.5, -1.0]), num_samples=2)
    torch.testing.assert_close(surrogate.detach(), torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(kl, torch.tensor([0.5, -1.0]))
    assert not kl.requires_grad
    surrogate.sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([1.5, -1.5]))

    lp3 = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    surrogate, _ = sampled_kl_surrogate(lp3, torch.full((3,), -1.0), num_samples=3)
    surrogate.sum().backward()
    torch.testing.assert_close(lp3.grad, torch.tensor([1.5, 0.0, -1.5]))
    with pytest.raises(ValueError, match="num_samples >= 2"):
        sampled_kl_surrogate(lp, lp.detach(), num_samples=1)


def test_loo_surrogate_importance_weighted_hand_values():
    """Samples of pi_t scored under a moved pi: ln pi = [-1, -2], ln pi0 = [-1.5, -1], ln pi_t = [-1, -2 - ln 2]:
    rho = pi / pi_t = [1, 2]; kl = [0.5, -1], advantages [1.5, -1.5] as above, times rho:
    value = [0.5, -2], d/d ln pi = [1.5, -3]. With pi_t = pi it is the unweighted surrogate."""
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    sampling = torch.tensor([-1.0, -2.0 - math.log(2.0)])
    surrogate, kl = sampled_kl_surrogate(lp, torch.tensor([-1.5, -1.0]), 2, sampling_logps=sampling)
    torch.testing.assert_close(surrogate.detach(), torch.tensor([0.5, -2.0]))
    torch.testing.assert_close(kl, torch.tensor([0.5, -2.0]))
    surrogate.sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([1.5, -3.0]))
    same, _ = sampled_kl_surrogate(lp, torch.tensor([-1.5, -1.0]), 2, sampling_logps=lp.detach())
    plain, _ = sampled_kl_surrogate(lp, torch.tensor([-1.5, -1.0]), 2)
    torch.testing.assert_close(same, plain)


def test_token_surrogate_hand_values():
    kls = torch.tensor([[0.1, 0.2, 0.3]], requires_grad=True)
    logps = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    surrogate, kl = token_kl_surrogate(kls, logps, torch.tensor([[1, 1, 0]]))
    assert surrogate.item() == pytest.approx(0.3) and kl.item() == pytest.approx(0.3)
    surrogate.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[0.2, 0.0, 0.0]]))
    torch.testing.assert_close(kls.grad, torch.tensor([[1.0, 1.0, 0.0]]))


# -- THE gradient test: expected estimator gradients by enumeration vs the exact gradient of KL(pi || pi0) --------


def _categorical_case(seed=0, prompts=3, responses=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(prompts, responses, generator=g, dtype=torch.float64).requires_grad_(True)
    ref_logp = torch.randn(prompts, responses, generator=g, dtype=torch.float64).log_softmax(-1)
    return logits, ref_logp


def _exact_kl_gradient(logits, ref_logp):
    logp = logits.log_softmax(-1)
    kl = (logp.exp() * (logp - ref_logp)).sum()  # sum over prompts of KL(pi(x) || pi0(x))
    return torch.autograd.grad(kl, logits)[0]


def _expected_gradient(logits, ref_logp, k, per_sample_loss):
    """Sum over all k-tuples of samples of P(tuple) * grad(mean over the tuple of the per-sample loss)."""
    prompts, responses = logits.shape
    tuples = torch.tensor(list(itertools.product(range(responses), repeat=k)))  # (R^k, k)
    logp = logits.log_softmax(-1)
    lp, lr = logp[:, tuples], ref_logp[:, tuples]  # (B, M, k); rows of a tuple are consecutive
    weight = lp.detach().sum(-1).exp()  # (B, M): product of the sample probabilities, not differentiated
    losses = per_sample_loss(lp.reshape(-1), lr.reshape(-1), k).view(prompts, len(tuples), k).mean(-1)
    return torch.autograd.grad((weight * losses).sum(), logits)[0], weight


@pytest.mark.parametrize("k", [2, 3])
def test_loo_surrogate_expected_gradient_equals_exact_kl_gradient(k):
    logits, ref_logp = _categorical_case()
    exact = _exact_kl_gradient(logits, ref_logp)
    assert exact.abs().max() > 0.05  # a case where the KL gradient is far from zero
    expected, weight = _expected_gradient(logits, ref_logp, k, lambda p, r, n: sampled_kl_surrogate(p, r, n)[0])
    torch.testing.assert_close(weight.sum(-1), torch.ones(3, dtype=torch.float64))  # the enumeration is complete
    torch.testing.assert_close(expected, exact, atol=1e-10, rtol=1e-8)


def test_naive_backprop_through_sampled_log_ratio_has_zero_expected_gradient():
    logits, ref_logp = _categorical_case()
    exact = _exact_kl_gradient(logits, ref_logp)
    naive, _ = _expected_gradient(logits, ref_logp, 2, lambda p, r, n: p - r)
    assert not torch.allclose(naive, exact, atol=1e-3)  # the trap: it does not regularise ...
    torch.testing.assert_close(naive, torch.zeros_like(naive), atol=1e-12, rtol=0)  # ... its expectation is zero


def _two_step_case(seed=1, vocab=3):
    """Sequences of at most 2 tokens; token 0 is EOS, so (0,) ends after one step and (a, b) for a > 0 after two."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randn(vocab, generator=g, dtype=torch.float64).requires_grad_(True)  # logits of step 1
    second = torch.randn(vocab, vocab, generator=g, dtype=torch.float64).requires_grad_(True)  # row a: step 2
    ref_first = torch.randn(vocab, generator=g, dtype=torch.float64)
    ref_second = torch.randn(vocab, vocab, generator=g, dtype=torch.float64)
    sequences = [(0, 0)] + [(a, b) for a in range(1, vocab) for b in range(vocab)]
    mask = torch.tensor([[1, 0]] + [[1, 1]] * (len(sequences) - 1))  # (S, 2)
    return first, second, ref_first, ref_second, sequences, mask


def _sequence_tensors(first, second, sequences):
    """Per-sequence logits (S, 2, V) and log-probs of the chosen tokens (S, 2) of a two-step policy."""
    logits = torch.stack([torch.stack([first, second[a]]) for a, _ in sequences])
    tokens = torch.tensor(sequences)
    return logits, logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)


def test_token_full_expected_gradient_equals_exact_kl_gradient():
    first, second, ref_first, ref_second, sequences, mask = _two_step_case()
    logits, token_logps = _sequence_tensors(first, second, sequences)
    ref_logits, ref_token_logps = _sequence_tensors(ref_first, ref_second, sequences)
    seq_logp = (token_logps * mask).sum(-1)  # (S,)
    prob = seq_logp.detach().exp()
    assert prob.sum().item() == pytest.approx(1.0)  # every sequence enumerated
    exact_kl = (seq_logp.exp() * (seq_logp - (ref_token_logps * mask).sum(-1))).sum()
    exact = torch.autograd.grad(exact_kl, (first, second), retain_graph=True)

    kls = token_kl(logits, ref_logits).double()  # (S, 2); token_kl computes in float32
    surrogate, kl = token_kl_surrogate(kls, token_logps, mask)
    assert (prob * kl).sum().item() == pytest.approx(exact_kl.item(), abs=1e-6)  # the value is unbiased
    estimated = torch.autograd.grad((prob * surrogate).sum(), (first, second), retain_graph=True)
    for got, want in zip(estimated, exact):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)

    # Differentiating sum_t KL_t alone misses how the policy picks the states the later KLs are taken at.
    direct = torch.autograd.grad((prob * (kls * mask).sum(-1)).sum(), (first, second))
    assert not torch.allclose(direct[0], exact[0], atol=1e-3)


# -- the objective --------------------------------------------------------------------------------------------


def _batch(size=4):
    data = PreferenceDataModule(path="tiny", tokenizer="tiny", batch_size=size, max_length=64, max_prompt_length=32)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def _sequence_logp(model, prompt, completion):
    """ln pi(completion | prompt) of one unpadded sequence, computed directly from the model's logits."""
    ids = torch.tensor([prompt + completion])
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    picked = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)
    return picked[len(prompt) - 1 :].sum()


def test_beta_zero_equals_reference_free_sigmoid_loss():
    torch.manual_seed(0)
    module = PMLE(gamma=0.5, beta=0.0, policy=PolicyWithReference(reference="none"))
    assert module.policy.reference.weights is None
    batch = _batch()
    loss, metrics = module.compute_loss(batch, "train")
    assert "objective/kl" not in metrics

    model, n = module.policy.policy, batch["index"].numel()
    losses = []
    for row in range(n):
        prompt = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()].tolist()
        chosen_row, rejected_row = batch["input_ids"][row], batch["input_ids"][n + row]
        chosen = chosen_row[batch["completion_mask"][row].bool()].tolist()
        rejected = rejected_row[batch["completion_mask"][n + row].bool()].tolist()
        margin = _sequence_logp(model, prompt, chosen) - _sequence_logp(model, prompt, rejected)
        losses.append(math.log1p(math.exp(-0.5 * margin.item())))  # -ln s(gamma * margin)
    assert loss.item() == pytest.approx(sum(losses) / n, rel=1e-5)


def test_reference_is_not_inside_the_sigmoid():
    torch.manual_seed(0)
    module = PMLE(gamma=0.5, beta=0.0, policy=PolicyWithReference(reference="copy"))
    batch = _batch()
    before, _ = module.compute_loss(batch, "train")
    with torch.no_grad():
        for p in module.policy.reference.weights.parameters():
            p.add_(torch.randn_like(p))  # a very different reference
    after, _ = module.compute_loss(batch, "train")
    assert before.item() == after.item()


def test_beta_above_zero_needs_a_live_reference():
    with pytest.raises(ValueError, match="copy or lora"):
        PMLE(beta=0.1, policy=PolicyWithReference(reference="none"))
    with pytest.raises(ValueError, match="more samples"):
        PMLE(beta=0.1, num_kl_samples=1)
    assert PMLE(beta=0.1).policy.reference.name == "copy"  # the default policy follows beta
    assert PMLE(beta=0.0).policy.reference.name == "none"


def test_kl_term_is_zero_at_the_reference_and_has_gradient():
    torch.manual_seed(0)
    for estimator in ("loo", "token_full"):
        module = PMLE(beta=1.0, kl_estimator=estimator)
        batch = _batch(2)
        surrogate, kl, lengths = module.kl_term(batch["prompt_ids"], batch["prompt_mask"])
        assert surrogate.shape == kl.shape == lengths.shape == (4,)
        torch.testing.assert_close(kl, torch.zeros(4), atol=1e-5, rtol=0)  # policy == reference
        surrogate.sum().backward()
        assert any(p.grad is not None for p in module.policy.trainable_parameters())


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("estimator", ["loo", "token_full"])
def test_cli_fit_changes_policy_keeps_reference_and_logs_kl(run_dir, estimator):
    cli = build_cli(fit_args("pmle.yaml", f"--model.kl_estimator={estimator}", "--trainer.log_every_n_steps=1",
                             steps=3))
    initial = _weights(load_causal_lm("tiny"))
    policy, reference = _weights(cli.model.policy.policy), _weights(cli.model.policy.reference.weights)
    assert any(not torch.equal(policy[k], initial[k]) for k in initial)
    assert all(torch.equal(reference[k], initial[k]) for k in initial)
    with open(os.path.join("runs", "test", "logs", "version_0", "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/objective/kl")]
    kl = [float(r["train/objective/kl"]) for r in rows]
    assert len(kl) == 3 and abs(kl[0]) < 1e-4 and abs(kl[-1]) > 0  # zero only while pi == pi0
    # the logged total is the preference loss plus beta (0.05 in the config) times the KL estimate
    for row, estimate in zip(rows, kl):
        want = float(row["train/loss/preference"]) + 0.05 * estimate
        assert float(row["train/loss"]) == pytest.approx(want, abs=1e-5)


def test_cli_fit_reference_free(run_dir):
    cli = build_cli(fit_args("pmle.yaml", "--model.beta=0.0", "--model.policy.init_args.reference=none", steps=2))
    assert cli.model.policy.reference.weights is None
    assert os.path.isfile(os.path.join("runs", "test", "hf_model", "model.safetensors"))

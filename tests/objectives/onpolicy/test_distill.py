"""Preference distillation (PAPER 2c): the loss, its invariants, the pair sources, and CLI fits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from support.cli import fit_args
from support.onpolicy import LengthReward, make_objective, prompt_batch

from lit_align.cli.app import build_cli
from lit_align.losses import distillation_loss, sampled_kl_surrogate
from support.onpolicy import assert_only_policy_changed, fake_experience, state
from lit_align.rewards.model import load_reward_model

# -- the loss ------------------------------------------------------------------------------------------------


def test_distillation_loss_hand_worked():
    """Pair 1: r1 = r2 (p = 1/2), gamma (ln pi(a1) - ln pi(a2)) = 0.5 * (-1 + 3) = 1, q = s(1) = 0.7310586:
    KL = ln 0.5 - 0.5 (ln s(1) + ln s(-1)) = -0.6931472 + 0.5 * 1.6265234 = 0.1201145.
    Pair 2: r1 - r2 = ln 3 (p = 3/4), equal log-probs (q = 1/2):
    KL = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.3040988 - 0.1732868 = 0.1308120."""
    out = distillation_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -2.0]),
                            torch.tensor([0.0, math.log(3.0)]), torch.tensor([0.0, 0.0]), gamma=0.5)
    torch.testing.assert_close(out.losses, torch.tensor([0.1201145, 0.1308120]))
    torch.testing.assert_close(out.teacher_probs, torch.tensor([0.5, 0.75]))
    torch.testing.assert_close(out.student_probs, torch.tensor([0.7310586, 0.5]))


def test_distillation_is_symmetric_in_the_pair():
    """Swapping (a1, r1) with (a2, r2) leaves the loss unchanged and turns both probabilities into 1 - p."""
    g = torch.Generator().manual_seed(0)
    l1, l2, r1, r2 = (torch.randn(8, generator=g) * 3 for _ in range(4))
    a, b = distillation_loss(l1, l2, r1, r2, 0.3), distillation_loss(l2, l1, r2, r1, 0.3)
    torch.testing.assert_close(a.losses, b.losses)
    torch.testing.assert_close(a.teacher_probs, 1 - b.teacher_probs)
    torch.testing.assert_close(a.student_probs, 1 - b.student_probs)
    assert (a.losses > 0).all()


def test_distillation_gradient_vanishes_at_the_fixed_point():
    """d KL / d ln pi(a1) = gamma (q - p): zero where gamma (ln pi(a1) - ln pi(a2)) = r1 - r2, and equal to
    0.5 * (s(1) - s(0.4)) = 0.5 * (0.7310586 - 0.5986877) = 0.0661855 one unit of gamma-margin away."""
    gamma, r1, r2 = 0.5, torch.tensor([0.7]), torch.tensor([0.3])
    l2 = torch.tensor([-4.0], requires_grad=True)
    l1 = (l2.detach() + (r1 - r2) / gamma).requires_grad_()
    distillation_loss(l1, l2, r1, r2, gamma).losses.sum().backward()
    assert l1.grad.abs().item() < 1e-6 and l2.grad.abs().item() < 1e-6
    l1 = (l2.detach() + 2.0).requires_grad_()  # gamma-margin 1.0 instead of 0.4
    distillation_loss(l1, l2.detach(), r1, r2, gamma).losses.sum().backward()
    torch.testing.assert_close(l1.grad, torch.tensor([0.0661855]))


def test_no_gradient_flows_into_the_teacher():
    r1 = torch.tensor([1.0], requires_grad=True)
    distillation_loss(torch.tensor([0.0], requires_grad=True), torch.tensor([0.0]), r1, torch.tensor([0.0])).losses.sum().backward()
    assert r1.grad is None


# -- how beta enters ----------------------------------------------------------------------------------------




def test_shaped_beta_is_reward_shaping_by_hand():
    """beta=0.5 shaped: r = R - 0.5 (ln pi_t - ln pi_0) = [1 - 0.5, 0.5 + 0.5, -0.5 - 0, 0.25 - 0.5]
    = [0.5, 1.0, -0.5, -0.25]; the loss is the plain distillation loss on those rewards."""
    module = make_objective(gamma=0.2, beta=0.5)
    logps = torch.tensor([-3.5, -4.0, -2.0, -6.5])
    losses, metrics = module.pair_loss(fake_experience(), logps)
    expected = distillation_loss(logps[0::2], logps[1::2], torch.tensor([0.5, -0.5]), torch.tensor([1.0, -0.25]), 0.2)
    torch.testing.assert_close(losses, expected.losses)
    torch.testing.assert_close(metrics["distill/teacher_prob"], torch.sigmoid(torch.tensor([-0.5, -0.25])))


def test_explicit_beta_adds_the_sampled_kl_surrogate():
    """beta_mode=explicit: unshaped teacher rewards, plus beta times the mean over the pair of the score-function
    surrogate of contract 2; with beta = 0 both modes give the same loss."""
    exp, logps = fake_experience(), torch.tensor([-3.5, -4.0, -2.0, -6.5], requires_grad=True)
    module = make_objective(gamma=0.2, beta=0.5, beta_mode="explicit")
    losses, _ = module.pair_loss(exp, logps)
    plain = distillation_loss(logps[0::2], logps[1::2], exp.scores[0::2], exp.scores[1::2], 0.2).losses
    # the pairs came from pi_t (old_logps), the current logps differ: importance-weighted by pi / pi_t
    surrogate, _ = sampled_kl_surrogate(logps, exp.ref_logps.sum(-1), 2, sampling_logps=exp.old_logps.sum(-1))
    torch.testing.assert_close(losses, plain + 0.5 * (surrogate[0::2] + surrogate[1::2]) / 2)
    zero_explicit, _ = make_objective(gamma=0.2, beta=0.0, beta_mode="explicit").pair_loss(exp, logps)
    zero_shaped, _ = make_objective(gamma=0.2, beta=0.0).pair_loss(exp, logps)
    torch.testing.assert_close(zero_explicit, zero_shaped)
    with pytest.raises(ValueError, match="pairs=on_policy"):
        make_objective(beta_mode="explicit", pairs="dataset")


def test_explicit_kl_term_stays_exact_after_the_policy_moved_within_a_batch():
    """Later passes over one batch score pi_t's pairs under a moved pi: enumerating every ordered pair (a, b) of
    5 responses drawn from pi_t, the expected gradient of the explicit term, (loss(beta) - loss(0)) / beta, is the
    exact gradient of KL(pi || pi_0) at the moved pi (26 % off without the importance weight pi / pi_t)."""
    g = torch.Generator().manual_seed(0)
    prompts, responses, beta = 3, 5, 0.5
    sampling = torch.randn(prompts, responses, generator=g, dtype=torch.float64).log_softmax(-1)  # ln pi_t
    theta = (sampling + 0.5 * torch.randn(prompts, responses, generator=g, dtype=torch.float64)).requires_grad_()
    reference = torch.randn(prompts, responses, generator=g, dtype=torch.float64).log_softmax(-1)
    pairs = torch.tensor([(a, b) for a in range(responses) for b in range(responses)])  # (25, 2)
    rows = (torch.arange(prompts)[:, None, None], pairs[None])  # index (prompts, 25, 2) -> rows a1, a2 interleaved
    logps = theta.log_softmax(-1)[rows].reshape(-1)  # (prompts * 25 * 2,)
    exp = fake_experience(torch.zeros_like(logps), sampling[rows].reshape(-1, 1), reference[rows].reshape(-1, 1))
    with_kl, _ = make_objective(gamma=0.2, beta=beta, beta_mode="explicit").pair_loss(exp, logps)
    without, _ = make_objective(gamma=0.2, beta=0.0, beta_mode="explicit").pair_loss(exp, logps)
    weight = sampling[rows].sum(-1).exp().reshape(-1) / prompts  # pi_t(a) pi_t(b), mean over prompts
    assert weight.sum().item() == pytest.approx(1.0)
    expected = torch.autograd.grad((weight * (with_kl - without)).sum() / beta, theta)[0]
    logp = theta.log_softmax(-1)
    exact = torch.autograd.grad((logp.exp() * (logp - reference)).sum() / prompts, theta)[0]
    assert exact.abs().max() > 0.05
    torch.testing.assert_close(expected, exact, atol=1e-10, rtol=1e-8)


# -- where the pairs come from ------------------------------------------------------------------------------


def perturb_policy(module) -> None:
    with torch.no_grad():
        for p in module.policy.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.5)


def test_reference_pairs_sample_from_pi0(monkeypatch):
    """pairs=reference generates with the frozen reference module, so after the policy has moved the same seed
    gives the same responses; pairs=on_policy (the control) gives different ones."""
    seen = []
    from lit_align.policy.with_reference import PolicyWithReference
    from lit_align.generation.rollout import sample as real

    monkeypatch.setattr(PolicyWithReference, "generation_backend",
                        staticmethod(lambda model, *a, **k: seen.append(model) or real(model, *a, **k)))
    for pairs, same in (("reference", True), ("on_policy", False)):
        torch.manual_seed(0)
        module = make_objective(pairs=pairs)
        batch = prompt_batch(module)
        torch.manual_seed(1)
        before = module.sample_responses(batch).input_ids
        perturb_policy(module)
        torch.manual_seed(1)
        after = module.sample_responses(batch).input_ids
        expected_model = module.policy.reference.weights if pairs == "reference" else module.policy.policy
        assert seen[-1] is expected_model and seen[-2] is expected_model
        assert (before.shape == after.shape and torch.equal(before, after)) == same


def test_dataset_pairs_are_the_data_completions(monkeypatch):
    """pairs=dataset: rows 2i and 2i+1 are prompt i + chosen and prompt i + rejected of the batch, all ending
    with EOS, and nothing is sampled."""
    from lit_align.policy.with_reference import PolicyWithReference

    monkeypatch.setattr(PolicyWithReference, "generation_backend",
                        staticmethod(lambda *a, **k: pytest.fail("pairs=dataset must not sample")))
    module = make_objective(pairs="dataset")
    batch = prompt_batch(module, n=3)
    exp = module.make_experience(batch)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        rows = getattr(exp, key)
        assert torch.equal(rows[0::2], batch[key][:3]) and torch.equal(rows[1::2], batch[key][3:])
    assert exp.ended.all()
    assert torch.equal(exp.prompt_index, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(exp.scores, exp.attention_mask.sum(-1).float())


# -- fits through the CLI -----------------------------------------------------------------------------------






def test_fit_with_a_given_reward_model(run_dir):
    """A short CLI fit: the policy moves, the reference and the reward model stay bit-identical, and the
    checkpoint holds neither of them."""
    cli = build_cli(fit_args("pdistill.yaml", "--model.reward_model=tiny", "--data.limit_rows=32",
                             "--data.batch_size=4", "--model.sampling.max_new_tokens=6"))
    module = cli.model
    assert cli.trainer.global_step == 4
    assert_only_policy_changed(module)
    fresh = state(load_reward_model("tiny"))
    assert all(torch.equal(v, fresh[k]) for k, v in state(module.reward_model).items())
    checkpoint = torch.load(run_dir / "runs/test/checkpoints/last.ckpt", weights_only=False)
    assert not any(k.startswith(("reward_model.", "policy.reference.")) for k in checkpoint["state_dict"])


def test_default_run_trains_a_reward_model_first(run_dir):
    """Without reward_model the fit trains one on the data's pairs, saves it in Hugging Face format with its
    validation accuracy, and uses exactly those weights frozen; a second run with the same settings reuses it,
    a changed stage setting trains a new one."""
    from transformers import AutoModelForSequenceClassification

    args = ["--data.limit_rows=32", "--data.batch_size=4", "--model.sampling.max_new_tokens=6",
            "--model.reward_stage.epochs=1"]
    cli = build_cli(fit_args("pdistill.yaml", *args))
    directory = run_dir / "runs/test/reward_model"
    saved = AutoModelForSequenceClassification.from_pretrained(directory)
    used = cli.model.reward_model.model.state_dict()
    assert all(torch.equal(v, used[k]) for k, v in saved.state_dict().items())
    info = json.loads((directory / "lit_align_reward_stage.json").read_text())
    assert 0.0 <= info["val_accuracy"] <= 1.0
    assert_only_policy_changed(cli.model)
    weights = next(Path(directory).glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    build_cli(fit_args("pdistill.yaml", *args))
    assert weights.stat().st_mtime_ns == stamp  # reused
    build_cli(fit_args("pdistill.yaml", *args, "--model.reward_stage.seed=1", "--checkpoint.other_run=replace"))
    assert weights.stat().st_mtime_ns != stamp  # retrained


def test_a_module_reward_model_is_frozen_and_kept_out_of_hparams():
    """A reward model given as a module: gradients off, eval mode even after ``train()``, and its weights are not
    copied into the hyperparameters (which every checkpoint stores)."""
    reward = LengthReward().train()
    module = make_objective(reward_model=reward)
    module.train()
    assert module.reward_model is reward and not reward.training
    assert not any(p.requires_grad for p in reward.parameters())
    assert "reward_model" not in module.hparams


def test_float64_rewards_keep_their_precision():
    """Teacher logits stay in the rewards' dtype when it is wider than float32 (float64 in, float64 out, equal to
    the float64 formula to 1e-12); narrower ones are computed in float32."""
    g = torch.Generator().manual_seed(0)
    l1, l2, r1, r2 = (torch.randn(6, generator=g, dtype=torch.float64) for _ in range(4))
    out = distillation_loss(l1, l2, r1, r2, gamma=0.3)
    assert out.teacher_probs.dtype == out.losses.dtype == torch.float64
    t, u = r1 - r2, 0.3 * (l1 - l2)
    p = torch.sigmoid(t)
    want = p * (F.logsigmoid(t) - F.logsigmoid(u)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-u))
    torch.testing.assert_close(out.losses, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out.teacher_probs, p, atol=1e-15, rtol=0)
    half = distillation_loss(l1.float(), l2.float(), r1.bfloat16(), r2.bfloat16(), gamma=0.3)
    assert half.teacher_probs.dtype == torch.float32

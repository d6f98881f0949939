"""The real on-policy objectives on an enumerable language model: expected gradients equal exact ones.

A Llama with a 6-token vocabulary (token 2 is EOS) and responses of at most two tokens has 31 possible responses
per prompt (EOS alone, or any non-EOS token followed by any token), so every expectation over the policy's
samples is a finite sum. Each test hands the objective every response (``sample_responses`` or ``sample``
replaced), weights each response by its probability under the distribution that sampling at
``sampling.temperature`` draws from, ``softmax(logits / T)``, and compares the expected gradient of the
objective's own loss with the exact gradient of the objective of the tempered policy pi_T:

    RLHF / reverse KL   J_T = E_{pi_T} R + gamma H(pi_T) - beta KL(pi_T || pi0_T),   E[grad loss] = -grad J_T
    PMLE's KL term      E[grad surrogate] = grad KL(pi_T || pi0_T)

The policy is moved away from the reference first, so that every term has a gradient.
"""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lit_align.models.loading import EMBEDDED_DIR
from lit_align.objectives import PMLE, ReverseKL
from lit_align.policy.with_reference import PolicyWithReference
from lit_align.generation.rollout import Rollout, SamplingConfig

VOCAB, EOS, PAD = 6, 2, 0
PROMPTS = [[1, 3], [4, 5, 3]]  # token ids below VOCAB; the second prompt is longer, so the first is left-padded
SEQUENCES = [(EOS,)] + [(a, b) for a in range(VOCAB) if a != EOS for b in range(VOCAB)]  # all 31 responses
FIXED_LENGTH = list(itertools.product(range(VOCAB), repeat=2))  # all 36 two-token sequences, EOS not special


@pytest.fixture(scope="module")
def small_lm(tmp_path_factory):
    """A local model directory: a random 6-token Llama (peaked enough to be far from uniform) + the tiny tokenizer."""
    path = tmp_path_factory.mktemp("small_lm")
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(EMBEDDED_DIR / name, path / name)
    return str(path)


def _policy(small_lm) -> PolicyWithReference:
    policy = PolicyWithReference(model=small_lm, reference="copy")
    torch.manual_seed(1)
    with torch.no_grad():  # move pi away from pi0
        for p in policy.policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


class TableReward(nn.Module):
    """A fixed random reward for the last two tokens of a row, plus a tenth of the row's length."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(2))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids[:, -2], input_ids[:, -1]] + 0.1 * attention_mask.sum(-1)


def _rows(sequences, ended_at_eos: bool = True) -> dict[str, torch.Tensor]:
    """Every prompt followed by every sequence, laid out like a rollout: (len(PROMPTS) * len(sequences), P + 2)."""
    width = max(map(len, PROMPTS))
    ids, attention, completion, ended = [], [], [], []
    for prompt in PROMPTS:
        pad = width - len(prompt)
        for seq in sequences:
            response = list(seq) + [PAD] * (2 - len(seq))
            real = [1] * len(seq) + [0] * (2 - len(seq))
            ids.append([PAD] * pad + prompt + response)
            attention.append([0] * pad + [1] * len(prompt) + real)
            completion.append([0] * width + real)
            ended.append(EOS in seq if ended_at_eos else True)
    n = len(PROMPTS) * len(sequences)
    return {
        "input_ids": torch.tensor(ids), "attention_mask": torch.tensor(attention),
        "completion_mask": torch.tensor(completion), "ended": torch.tensor(ended),
        "prompt_index": torch.arange(n) // len(sequences),
    }


def _tempered_logps(policy_forward, rows, temperature) -> torch.Tensor:
    """ln pi_T(response | prompt) of every row (N,), from the definition softmax(logits / T)."""
    logits = policy_forward(rows["input_ids"], rows["attention_mask"])  # (N, P + 2, V)
    logp = torch.log_softmax(logits[:, :-1].double() / temperature, -1)
    picked = logp.gather(-1, rows["input_ids"][:, 1:, None]).squeeze(-1)
    return (picked * rows["completion_mask"][:, 1:]).sum(-1)


def _exact_objective(module, rows, beta, gamma, temperature) -> torch.Tensor:
    """J_T = mean over prompts of E_{pi_T}[R - beta ln(pi_T / pi0_T) - gamma ln pi_T] (with gradient)."""
    logp = _tempered_logps(module.policy, rows, temperature)
    ref = _tempered_logps(module.policy.reference_logits, rows, temperature)
    reward = module.reward_model(rows["input_ids"], rows["attention_mask"]).double()
    if module.missing_eos_penalty is not None:
        reward = torch.where(rows["ended"], reward, torch.full_like(reward, module.missing_eos_penalty))
    per_row = logp.exp() * (reward - beta * (logp - ref) - gamma * logp)
    return per_row.sum() / len(PROMPTS)


def _flat_grad(loss, params) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def _reverse_kl(small_lm, temperature, rows, **kwargs) -> ReverseKL:
    module = ReverseKL(reward_model=TableReward(), policy=_policy(small_lm), vf_coef=0.0, gae_lambda=1.0,
                       sampling=SamplingConfig(max_new_tokens=2, temperature=temperature), **kwargs)
    width = rows["input_ids"].shape[1] - 2
    module.sample_responses = lambda batch: Rollout(  # every response
        rows["input_ids"].clone(), rows["attention_mask"].clone(), rows["completion_mask"].clone(), width,
        rows["ended"].clone(), rows["prompt_index"].clone(), sampling=module.sampling)
    return module


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_ppo_expected_gradient_is_the_gradient_of_the_tempered_objective(small_lm, temperature):
    """Reverse KL in reward mode (RLHF plus the entropy reward), unwhitened: one PPO step's expected gradient.

    At the first update the ratio is 1 and the clipped loss is linear in the advantages, so scaling each row's
    advantages by (tokens in the batch) * pi_T(row) turns the objective's token-weighted batch mean into the exact
    expectation over pi_T. Without the temperature in the log-probs the ratio is not one of sampling
    distributions and the penalties do not estimate KL(pi_T || pi0_T), H(pi_T): 44 % off at T = 0.7.
    """
    beta, gamma = 0.5, 0.3
    rows = _rows(SEQUENCES)
    module = _reverse_kl(small_lm, temperature, rows, kl_coef=beta, entropy_coef=gamma, whiten_rewards=False,
                         whiten_advantages=False, missing_eos_penalty=None)
    exp = module.make_experience({})
    with torch.no_grad():
        weight = _tempered_logps(module.policy, rows, temperature).exp().float() / len(PROMPTS)  # (N,)
    assert weight.sum().item() == pytest.approx(1.0, abs=1e-5)  # every response enumerated
    tokens = exp.response_mask.sum()
    exp.advantages = exp.advantages * (tokens * weight)[:, None]
    params = module.policy.trainable_parameters()
    loss, _ = module.experience_loss(exp)
    expected = _flat_grad(loss, params)
    exact = _flat_grad(-_exact_objective(module, rows, beta, gamma, temperature), params)
    error = _relative_error(expected, exact)
    assert error < 1e-4, f"expected PPO gradient is {error:.1%} (relative) away from -grad J_T at T={temperature}"


@pytest.mark.parametrize("estimator", ["loo", "token_full"])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_pmle_kl_term_expected_gradient_is_grad_kl_of_the_tempered_policies(small_lm, monkeypatch, estimator,
                                                                           temperature):
    """PMLE's KL term on samples drawn at T: E[grad surrogate] = grad KL(pi_T || pi0_T) (49 % off for ``loo``,
    48 % for ``token_full`` at T = 0.7 when the log-probs ignore the temperature). ``loo`` is enumerated over
    every ordered pair of responses of a prompt (its leave-one-out baseline couples the two), ``token_full``
    over single responses."""
    k = 2 if estimator == "loo" else 1
    groups = list(itertools.product(SEQUENCES, repeat=k))  # the k samples of one draw
    rows = _rows([seq for group in groups for seq in group])
    module = PMLE(beta=1.0, kl_estimator=estimator, num_kl_samples=k, policy=_policy(small_lm),
                  sampling=SamplingConfig(max_new_tokens=2, temperature=temperature))

    def every_draw(model, prompt_ids, prompt_mask, config, eos_token_id, pad_token_id, num_samples, **kwargs):
        width = rows["input_ids"].shape[1] - 2
        return Rollout(rows["input_ids"], rows["attention_mask"], rows["completion_mask"], width, rows["ended"],
                       torch.arange(rows["input_ids"].shape[0]) // num_samples)

    monkeypatch.setattr(module.policy, "generation_backend", every_draw)
    surrogate, _, _ = module.kl_term(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long))
    with torch.no_grad():
        logp = _tempered_logps(module.policy, rows, temperature).view(-1, k)  # (draws, k)
        weight = logp.sum(-1).exp().float() / len(PROMPTS)  # probability of the draw, mean over prompts
    assert weight.sum().item() == pytest.approx(1.0, abs=1e-5)
    params = module.policy.trainable_parameters()
    expected = _flat_grad((weight * surrogate.view(-1, k).mean(-1)).sum(), params)

    single = _rows(SEQUENCES)
    logp = _tempered_logps(module.policy, single, temperature)
    ref = _tempered_logps(module.policy.reference_logits, single, temperature)
    exact = _flat_grad((logp.exp() * (logp - ref)).sum() / len(PROMPTS), params)
    error = _relative_error(expected, exact)
    assert error < 1e-4, f"expected {estimator} KL gradient is {error:.1%} away from grad KL(pi_T||pi0_T)"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_reverse_kl_bonus_mode_expected_gradient_with_whitening_on_two_token_responses(small_lm, temperature):
    """``entropy_mode: bonus`` with rewards and advantages whitened (the defaults), two-token responses.

    Whitening multiplies the advantages by a batch factor s, so the expected PPO gradient is -s grad(E R -
    beta KL); the exact entropy bonus must be multiplied by the same s, and the tokens that choose a later state
    must be credited with its entropy, or the gradient is not -s grad J_T (6 % off in direction at T = 1, 62 %
    at T = 0.7 with neither, nor the temperature). Responses here have a fixed length of
    two (EOS not special), where the per-token constant that reward whitening adds shifts every return equally.
    Each row is its own mini-batch (the token-weighted mean of a row is then half its sum, for every row).
    """
    beta, gamma = 0.2, 0.5
    rows = _rows(FIXED_LENGTH, ended_at_eos=False)
    module = _reverse_kl(small_lm, temperature, rows, kl_coef=beta, entropy_coef=gamma, entropy_mode="bonus",
                         missing_eos_penalty=None)
    exp = module.make_experience({})
    with torch.no_grad():
        weight = _tempered_logps(module.policy, rows, temperature).exp().float() / len(PROMPTS)
    assert weight.sum().item() == pytest.approx(1.0, abs=1e-5)
    params = module.policy.trainable_parameters()
    total = sum(weight[i] * module.experience_loss(exp.rows(torch.tensor([i])))[0]
                for i in range(len(weight)))
    expected = _flat_grad(2 * total, params)  # x2: each row's loss is the mean over its two tokens
    exact = _flat_grad(-_exact_objective(module, rows, beta, gamma, temperature), params)
    # the direction must be that of -grad J_T; the common factor s is the whitening's
    scale = (expected.double() @ exact.double()) / (exact.double() @ exact.double())
    assert scale > 0
    error = _relative_error(expected, scale * exact)
    assert error < 1e-3, f"bonus-mode expected gradient is {error:.1%} away from the direction of -grad J_T"
    if hasattr(exp, "advantage_scale"):  # the factor the objective applied to its bonus is that of the advantages
        assert scale.item() == pytest.approx(exp.advantage_scale[0].item(), rel=1e-3)

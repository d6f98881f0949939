"""With one mini-batch, the sampling-time policy forward of a batch is kept (with its graph) as the first update's
forward (``HeldForward`` in lit_align/objectives/onpolicy/held.py): one policy forward fewer per batch, the same
training."""

from __future__ import annotations

import pytest
import torch
from support.onpolicy import fit
from torch import nn

from lit_align import PolicyWithReference
from lit_align.objectives import GRPO, REBEL, RLHF, RLOO, PreferenceDistillation, ReverseKL
from lit_align.generation.rollout import SamplingConfig

OBJECTIVES = {
    "RLHF": lambda **kw: RLHF(**kw),
    "ReverseKL bonus": lambda **kw: ReverseKL(entropy_mode="bonus", **kw),
    "REBEL": lambda **kw: REBEL(**kw),
    "PreferenceDistillation": lambda **kw: PreferenceDistillation(**kw),
    "RLOO": lambda **kw: RLOO(**kw),
    "GRPO": lambda **kw: GRPO(beta=0.05, **kw),
}


class TokenReward(nn.Module):
    """Stand-in reward model that tells two responses of a prompt apart: the mean token id of the row / 100."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (input_ids * attention_mask).sum(-1) / attention_mask.sum(-1) / 100


def _train(name: str, hold: bool, epochs: int, mini_batches: int = 1, steps: int = 2):
    torch.manual_seed(0)
    module = OBJECTIVES[name](policy=PolicyWithReference(model="tiny", reference="copy"), reward_model=TokenReward(),
                              sampling=SamplingConfig(max_new_tokens=6, temperature=1.0), warmup_ratio=0.0,
                              # SGD: an update proportional to the gradient, so equal gradients give equal weights
                              optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
                              epochs_per_batch=epochs, mini_batches=mini_batches)
    module.hold_first_forward = hold
    scored = []
    original = module.policy._scores

    def counting(layout, input_ids, *args, **kwargs):
        reference = args[3] if len(args) > 3 else kwargs.get("reference")
        if not reference and kwargs.get("chunked", True):  # not the fast-path check's plain forward (first batch)
            scored.append(torch.is_grad_enabled())
        return original(layout, input_ids, *args, **kwargs)

    module.policy._scores = counting
    fit(module, max_steps=steps * epochs * mini_batches)
    return module, scored


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_one_policy_forward_fewer_per_batch_and_the_same_weights(name):
    held, held_scores = _train(name, hold=True, epochs=2)
    plain, plain_scores = _train(name, hold=False, epochs=2)
    # per batch: sampling-time pass (no grad) + 2 update forwards, or the kept pass + the second epoch's forward
    assert plain_scores == [False, True, True] * 2
    assert held_scores == [True, True] * 2
    for a, b in zip(held.policy.policy.parameters(), plain.policy.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    moved = [not torch.equal(a, b) for a, b in zip(held.policy.policy.parameters(),
                                                    held.policy.reference.weights.parameters())]
    assert any(moved)


def test_several_mini_batches_keep_the_no_grad_sampling_pass():
    _, scores = _train("REBEL", hold=True, epochs=1, mini_batches=2, steps=1)
    assert scores == [False, False, True, True]  # the sampling-time pass in two chunks, then two updates

"""``micro_batches``: each update's forward and backward split into groups of whole prompts, the same update.

The loss of a mini-batch is taken once over all of its rows (whatever it normalises by: tokens, sequences, a
group's statistics), on the update forward's outputs computed group by group without gradient; each group's forward
then runs with gradient and receives its share of the gradient. So the weights after training match one pass per
update, and no forward with gradient sees more than one group's rows.
"""

from __future__ import annotations

import pytest
import torch
from support.onpolicy import fit
from torch import nn

from lit_align import PolicyWithReference
from lit_align.errors import UserError
from lit_align.generation.rollout import SamplingConfig
from lit_align.objectives import GRPO, REBEL, RLHF, RLOO, PreferenceDistillation, ReverseKL

OBJECTIVES = {
    "RLHF": lambda **kw: RLHF(**kw),
    "ReverseKL bonus": lambda **kw: ReverseKL(entropy_mode="bonus", **kw),
    "REBEL": lambda **kw: REBEL(**kw),
    "PreferenceDistillation": lambda **kw: PreferenceDistillation(**kw),
    "RLOO": lambda **kw: RLOO(**kw),
    "GRPO": lambda **kw: GRPO(beta=0.05, **kw),
    "GRPO dapo": lambda **kw: GRPO(beta=0.05, loss_type="dapo", **kw),
}


class TokenReward(nn.Module):
    """Stand-in reward model that tells two responses of a prompt apart: the mean token id of the row / 100."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (input_ids * attention_mask).sum(-1) / attention_mask.sum(-1) / 100


def _train(name: str, micro_batches: int, epochs: int = 2, mini_batches: int = 1, steps: int = 2):
    torch.manual_seed(0)
    module = OBJECTIVES[name](policy=PolicyWithReference(model="tiny", reference="copy"), reward_model=TokenReward(),
                              sampling=SamplingConfig(max_new_tokens=6, temperature=1.0), warmup_ratio=0.0,
                              # SGD: an update proportional to the gradient, so equal gradients give equal weights
                              optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
                              epochs_per_batch=epochs, mini_batches=mini_batches, micro_batches=micro_batches)
    rows_with_grad = []
    original = module.policy._scores

    def counting(layout, input_ids, *args, **kwargs):
        reference = args[3] if len(args) > 3 else kwargs.get("reference")
        if not reference and torch.is_grad_enabled():
            rows_with_grad.append(int(input_ids.shape[0]))
        return original(layout, input_ids, *args, **kwargs)

    module.policy._scores = counting
    fit(module, max_steps=steps * epochs * mini_batches)
    return module, rows_with_grad


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_the_same_weights_with_a_group_of_prompts_per_forward(name):
    whole, whole_rows = _train(name, micro_batches=1)
    split, split_rows = _train(name, micro_batches=2)
    for a, b in zip(split.policy.policy.parameters(), whole.policy.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if hasattr(whole, "value_head"):
        torch.testing.assert_close(split.value_head.weight, whole.value_head.weight, rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(split.policy.policy.parameters(),
                                                      split.policy.reference.weights.parameters()))
    # the largest forward with gradient: half the batch's prompts (packed: one row a prompt) instead of all
    assert max(split_rows) * 2 == max(whole_rows)


def test_uneven_groups_and_mini_batches():
    """Three groups of a mini-batch of two prompts (one group stays empty) inside two mini-batches."""
    whole, _ = _train("GRPO", micro_batches=1, epochs=1, mini_batches=2)
    split, _ = _train("GRPO", micro_batches=3, epochs=1, mini_batches=2)
    for a, b in zip(split.policy.policy.parameters(), whole.policy.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_loss_that_does_not_read_the_update_forward_is_refused():
    class Bypass(GRPO):
        def experience_loss(self, mb):
            return self.token_logps_of(mb.rollout).sum() * 0.0, {}

    torch.manual_seed(0)
    module = Bypass(policy=PolicyWithReference(model="tiny", reference="copy"), reward_model=TokenReward(),
                    sampling=SamplingConfig(max_new_tokens=4, temperature=1.0), micro_batches=2)
    with pytest.raises(UserError, match="micro_batches"):
        fit(module, max_steps=1)


def test_micro_batches_must_be_positive():
    with pytest.raises(ValueError, match="micro_batches"):
        GRPO(policy=PolicyWithReference(model="tiny", reference="copy"), reward_model=TokenReward(), micro_batches=0)


def test_a_groups_second_forward_draws_the_same_dropout():
    """With dropout kept, each group's forward with gradient draws the masks its forward without gradient drew, so
    the gradient is that of the loss that was evaluated."""
    torch.manual_seed(0)
    module = GRPO(policy=PolicyWithReference(model="tiny", reference="copy", disable_dropout=False),
                  reward_model=TokenReward(), sampling=SamplingConfig(max_new_tokens=6, temperature=1.0),
                  micro_batches=2, epochs_per_batch=1)
    for layer in module.policy.policy.modules():
        if hasattr(layer, "attention_dropout"):
            layer.attention_dropout = 0.5
    seen = []
    original = module.update_forward

    def recording(rollout):
        out = original(rollout)
        seen.append((torch.is_grad_enabled(), out.detach().clone()))
        return out

    module.update_forward = recording
    fit(module, max_steps=1)
    without = [logps for grad, logps in seen if not grad]
    with_grad = [logps for grad, logps in seen if grad]
    assert len(without) == len(with_grad) == 2
    for a, b in zip(without, with_grad):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_loss_that_reaches_the_weights_another_way_is_refused():
    """A term of the loss outside the update forward would get no gradient from the groups: refused, not dropped."""
    class ExtraTerm(GRPO):
        def experience_loss(self, mb):
            loss, metrics = super().experience_loss(mb)
            return loss + 0.0 * sum(p.sum() for p in self.policy.trainable_parameters()), metrics

    torch.manual_seed(0)
    module = ExtraTerm(policy=PolicyWithReference(model="tiny", reference="copy"), reward_model=TokenReward(),
                       sampling=SamplingConfig(max_new_tokens=4, temperature=1.0), micro_batches=2)
    with pytest.raises(UserError, match="reach the weights only"):
        fit(module, max_steps=1)


def test_dropout_with_asynchronous_sampling_is_refused():
    """The replayed random state would be shared with the sampling thread."""
    module = GRPO(policy=PolicyWithReference(model="tiny", reference="copy", disable_dropout=False),
                  reward_model=TokenReward(), micro_batches=2, max_staleness=1)
    for layer in module.policy.policy.modules():
        if hasattr(layer, "attention_dropout"):
            layer.attention_dropout = 0.1
    with pytest.raises(UserError, match="disable_dropout"):
        module.setup("fit")

"""The default optimizer: AdamW with decay on matrices only, on torch's fused kernel where it applies."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from lit_align import PolicyWithReference
from lit_align.objectives import DPO
from lit_align.objectives.base import fused_adamw_applies


def _configured(module):
    module._trainer = SimpleNamespace(estimated_stepping_batches=4)
    try:
        return module.configure_optimizers()["optimizer"]
    finally:
        module._trainer = None


def test_default_adamw_is_fused_and_steps_like_the_per_tensor_adamw():
    module = DPO(policy=PolicyWithReference(model="tiny", reference="copy"), learning_rate=1e-3, weight_decay=0.1)
    optimizer = _configured(module)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    twins = [p.detach().clone().requires_grad_() for p in params]
    initial = [p.detach().clone() for p in params]
    reference = torch.optim.AdamW([{"params": twins[:len(optimizer.param_groups[0]["params"])], "weight_decay": 0.1},
                                   {"params": twins[len(optimizer.param_groups[0]["params"]):], "weight_decay": 0.0}],
                                  lr=1e-3, foreach=False)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, twin in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=g)
            twin.grad = p.grad.clone()
        optimizer.step()
        reference.step()
    for p, twin in zip(params, twins):
        torch.testing.assert_close(p, twin, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(p, p0) for p, p0 in zip(params, initial))


def test_fused_only_for_floating_point_tensors_on_cpu_or_cuda():
    assert fused_adamw_applies([torch.zeros(2, requires_grad=True)])
    assert not fused_adamw_applies([])
    assert not fused_adamw_applies([torch.zeros(2, device="meta")])
    assert not fused_adamw_applies([torch.zeros(2), torch.zeros(2, dtype=torch.int64)])

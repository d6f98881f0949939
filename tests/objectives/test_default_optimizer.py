"""The default optimizer: AdamW with decay on matrices only, whose steps are seen by the weights' version
counters (what tells a colocated generation engine that the weights changed)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from lit_align import PolicyWithReference
from lit_align.generation.weights import weights_version
from lit_align.objectives import DPO


def _configured(module):
    module._trainer = SimpleNamespace(estimated_stepping_batches=4)
    try:
        return module.configure_optimizers()["optimizer"]
    finally:
        module._trainer = None


def test_default_adamw_decays_matrices_only_and_its_step_changes_the_weights_version():
    module = DPO(policy=PolicyWithReference(model="tiny", reference="copy"), learning_rate=1e-3, weight_decay=0.1)
    optimizer = _configured(module)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert all(p.ndim >= 2 for p in optimizer.param_groups[0]["params"])
    assert all(p.ndim < 2 for p in optimizer.param_groups[1]["params"])
    # torch's fused AdamW would update the weights without bumping their version counters: vLLM would keep
    # sampling from the weights it was given first
    before = weights_version(module.policy.policy)
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    optimizer.step()
    assert weights_version(module.policy.policy) != before

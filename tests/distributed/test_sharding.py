"""Pieces of the FSDP2 path that need no process group: block discovery, hiding the reference, LoRA folding."""

from __future__ import annotations

import torch
from peft import LoraConfig

from lit_align.policy.export import merged_state_dict
from lit_align.objectives import DPO
from lit_align.policy.with_reference import PolicyWithReference
from lit_align.distributed.sharding import _lora_scalings, _merge_lora, block_class_names, without_reference


def test_blocks_come_from_no_split_modules_through_lora():
    plain = PolicyWithReference(reference="copy")
    lora = PolicyWithReference(reference="lora")
    assert block_class_names(plain.policy) == {"LlamaDecoderLayer"}
    assert block_class_names(lora.policy) == {"LlamaDecoderLayer"}


def test_without_reference_hides_it_and_restores_the_order():
    module = DPO(policy=PolicyWithReference(reference="copy"))
    before = list(module.state_dict())
    with without_reference(module):
        keys = list(module.state_dict())
        assert keys and not any(k.startswith("policy.reference.") for k in keys)
    assert list(module.state_dict()) == before
    assert module.policy.reference.weights is not None


def test_lora_fold_of_a_gathered_state_dict_equals_peft_merge():
    """W' = W + (alpha / r) * B @ A for every adapted weight, keys without the peft prefixes: the same tensors
    peft's own merge gives (export.merged_state_dict), with B made non-zero so the fold is visible."""
    policy = PolicyWithReference(reference="lora", lora=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.policy.named_parameters():
            if "lora_B" in name:
                p.normal_()
    folded = _merge_lora(policy.policy.state_dict(), _lora_scalings(policy.policy))
    expected = merged_state_dict(policy.policy, is_lora=True)
    assert folded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.allclose(folded[key], value, atol=1e-5), key
    unmerged = _merge_lora(policy.policy.state_dict(), dict.fromkeys(_lora_scalings(policy.policy), 0.0))
    assert any(not torch.equal(unmerged[k], folded[k]) for k in folded)  # the adapters did change weights

"""Pieces of the FSDP2 path that need no process group: block discovery, hiding the reference (the LoRA merge of
the sharded export: test_lora_merge.py)."""

from __future__ import annotations

from lit_align.objectives import DPO
from lit_align.policy.with_reference import PolicyWithReference
from lit_align.distributed.sharding import block_class_names, without_reference


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

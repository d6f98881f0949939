"""What a generation backend is given (lit_align/generation/weights.py) and how it is chosen, without any engine.

These run in the default suite: the weights an engine would load must equal the policy's own, with LoRA folded in
exactly as peft merges it, and choosing ``generation: vllm`` must neither import vllm nor build an engine before
the first generate.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from lit_align.generation.weights import engine_weights, weights_version
from lit_align.policy.with_reference import PolicyWithReference


def test_plain_policy_weights_are_its_state_dict():
    policy = PolicyWithReference()
    pushed = dict(engine_weights(policy.policy))
    expected = policy.policy.state_dict()
    assert pushed.keys() == expected.keys()
    assert all(torch.equal(pushed[k], v) for k, v in expected.items())


def test_lora_weights_are_the_merged_model():
    """``W + scaling * B @ A`` per adapted layer under the plain transformers names, as ``merge_and_unload`` gives;
    with the adapters disabled (sampling pi_0) the base weights."""
    policy = PolicyWithReference(reference="lora")
    with torch.no_grad():  # B starts at zero: move it so the merge matters
        generator = torch.Generator().manual_seed(0)
        for name, parameter in policy.policy.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    bare = {k.replace(".base_layer.", "."): v for k, v in policy.policy.get_base_model().state_dict().items()
            if ".lora_" not in k}
    pushed = dict(engine_weights(policy.policy))
    merged = copy.deepcopy(policy.policy).merge_and_unload().state_dict()
    assert pushed.keys() == merged.keys() == bare.keys()
    for key, value in merged.items():
        torch.testing.assert_close(pushed[key], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(pushed[k], bare[k]) for k in pushed), "the adapters changed nothing"
    with policy.policy.disable_adapter():
        unmerged = dict(engine_weights(policy.policy))
    assert unmerged.keys() == bare.keys()
    assert all(torch.equal(unmerged[k], v) for k, v in bare.items())


def test_weights_version_changes_with_an_update_and_with_the_adapters():
    policy = PolicyWithReference(reference="lora")
    version = weights_version(policy.policy)
    assert weights_version(policy.policy) == version
    with policy.policy.disable_adapter():
        assert weights_version(policy.policy) != version
    assert weights_version(policy.policy) == version
    optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=0.1)
    for parameter in policy.trainable_parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    assert weights_version(policy.policy) != version
    copied = PolicyWithReference(reference="copy")  # sampling pi_0 from a frozen copy pushes the copy's weights
    assert weights_version(copied.reference.weights) != weights_version(copied.policy)


def test_choosing_vllm_imports_nothing_until_the_first_generate(tmp_path):
    # vLLM present as far as the construction's check can see (an installed package it finds without importing);
    # the stand-in fails if anything imports it
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise ImportError('vllm imported before the first generate')\n")
    code = ("import sys; from lit_align.policy.with_reference import PolicyWithReference; "
            "from lit_align.generation import VLLMBackend; from lit_align.generation.rollout import sample; "
            "p = PolicyWithReference(generation='vllm', vllm_options={'gpu_memory_utilization': 0.2}); "
            "assert isinstance(p.generation_backend, VLLMBackend) and p.generation_backend.llm is None; "
            "assert p.generation_backend.options == {'gpu_memory_utilization': 0.2}; "
            "assert PolicyWithReference().generation_backend is sample; "
            "assert 'vllm' not in sys.modules, 'vllm imported'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_an_unknown_generation_backend_is_refused():
    with pytest.raises(ValueError, match="generation must be hf or vllm"):
        PolicyWithReference(generation="sglang")

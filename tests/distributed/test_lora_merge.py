"""One LoRA merge (lit_align/models/lora_merge.py) for the export, the sharded export and the engine push alike:
each gives exactly peft's ``merge_and_unload()`` weights, for plain LoRA and for DoRA (whose magnitude vector
rescales every merged row), the sharded export under two-process FSDP2 included.

Run as a script, this file is one rank of the two-process check (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` set by the test).
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig

from lit_align.generation.weights import engine_weights
from lit_align.policy.export import export_policy, merged_state_dict
from lit_align.policy.with_reference import PolicyWithReference


def adapted_policy(use_dora: bool) -> PolicyWithReference:
    """A tiny LoRA (or DoRA) policy whose adapters all change the weights: B and DoRA's magnitudes moved, seeded."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=use_dora)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the adapters' A starts random: the same on every rank, as Lightning's seeding makes it
        policy = PolicyWithReference(reference="lora", lora=config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in policy.policy.named_parameters():
            if "lora_B" in name or "lora_magnitude_vector" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return policy


def peft_merged(policy: PolicyWithReference) -> dict[str, torch.Tensor]:
    return copy.deepcopy(policy.policy).merge_and_unload().state_dict()


def assert_same_weights(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_export_and_engine_push_give_peft_merge_and_unload(use_dora, tmp_path):
    policy = adapted_policy(use_dora)
    before = {k: v.clone() for k, v in policy.policy.state_dict().items()}
    expected = peft_merged(policy)
    bare = {k.replace(".base_layer.", "."): v for k, v in policy.policy.get_base_model().state_dict().items()
            if ".lora_" not in k}
    assert any(not torch.equal(expected[k], bare[k]) for k in expected), "the adapters changed nothing"
    assert_same_weights(merged_state_dict(policy.policy), expected)
    assert_same_weights(dict(engine_weights(policy.policy)), expected)
    from safetensors.torch import load_file

    export_policy(policy, tmp_path / "hf_model")
    exported = load_file(str(tmp_path / "hf_model" / "model.safetensors"))
    assert_same_weights(exported, {k: v for k, v in expected.items() if k in exported})
    live = policy.policy.state_dict()
    assert all(torch.equal(live[k], v) for k, v in before.items()), "merging changed the live model"


@pytest.mark.slow
@pytest.mark.extended  # two processes: about 20 s on 2 cores
def test_sharded_export_of_dora_under_two_process_fsdp2_gives_peft_merge_and_unload():
    from support.launch import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(__file__)),
                                                       os.environ.get("PYTHONPATH")]))}
    ranks = [subprocess.Popen([sys.executable, __file__], env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True) for rank in (0, 1)]
    outputs = []
    for proc in ranks:
        try:
            outputs.append(proc.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for other in ranks:
                os.killpg(other.pid, signal.SIGKILL)
            pytest.fail("a rank of the sharded merge is still running after 180 s (deadlock?)")
    for proc, output in zip(ranks, outputs):
        assert proc.returncode == 0, output[-6000:]
    assert "rank 0: merged weights match" in outputs[0]


def _rank_main() -> None:
    """One rank: shard a DoRA policy with FSDP2, export its merged weights, compare with peft's on rank 0."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lit_align.distributed.sharding import ShardingOptions, full_policy_state_dict, is_sharded, shard_policy

    dist.init_process_group("gloo")
    policy = adapted_policy(use_dora=True)
    expected = peft_merged(policy)
    shard_policy(policy, init_device_mesh("cpu", (2,)), ShardingOptions())
    assert is_sharded(policy.policy)
    state = full_policy_state_dict(policy)
    if dist.get_rank() == 0:
        assert_same_weights(state, expected)
        print("rank 0: merged weights match", flush=True)
    else:
        assert state == {}
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _rank_main()

"""FSDP2 on two CPU processes (gloo), launched the way users launch it: ``lit-align fit`` with the fsdp2 overlay.

Two processes with 4 pairs each see the same global batch of 8 as one process with ``batch_size: 8``
(``DistributedSampler`` deals the seeded permutation out rank by rank), gradients are averaged over ranks and the
logged loss is example-weighted across ranks, so the two loss curves must agree to float32 round-off.
"""

from __future__ import annotations

import csv
import glob
import os

import pytest
import torch

from lit_align.cli.app import build_cli
from support.launch import launch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs")
FSDP2 = ["--config", os.path.join(CONFIGS, "strategy", "fsdp2.yaml"), "--trainer.devices=2",
         "--trainer.strategy.init_args.mixed_precision=null"]  # float32 on CPU, so the curves are comparable
# Float32 sums in another order (all-reduce, per-rank padding) differ by ~1e-6; a wrong gradient average, a
# dropped reference or a stale cache moves the loss by orders of magnitude more.
TOLERANCE = 2e-4

pytestmark = pytest.mark.slow


def _args(config: str, root: str, steps: int, *extra: str) -> list[str]:
    return [
        "fit", "--config", os.path.join(CONFIGS, config), f"--trainer.max_steps={steps}",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={root}", "--checkpoint.every_n_train_steps=3",
        # a constant rate, so a run stopped at step 3 and resumed follows the same schedule as one of 6 steps
        "--model.init_args.lr_schedule=constant", "--model.init_args.warmup_ratio=0",
        *extra,
    ]


def _launch(args: list[str]) -> str:
    return launch(args, timeout=300)  # both ranks killed and the test failed if the run hangs


def _losses_by_run(root: str, name: str = "train/loss") -> list[dict[int, float]]:
    """One {step: value} per run (logger version) under ``root``, in run order."""
    runs = []
    for path in sorted(glob.glob(os.path.join(root, "logs", "version_*", "metrics.csv"))):
        with open(path) as f:
            runs.append({int(row["step"]): float(row[name]) for row in csv.DictReader(f) if row.get(name)})
    return runs


def _losses(root: str, name: str = "train/loss") -> dict[int, float]:
    return {step: value for run in _losses_by_run(root, name) for step, value in run.items()}


def _assert_curves_match(single: dict[int, float], sharded: dict[int, float]) -> None:
    assert sorted(sharded) == sorted(single), (single, sharded)
    for step in single:
        assert sharded[step] == pytest.approx(single[step], abs=TOLERANCE), (step, single, sharded)
    assert max(single.values()) - min(single.values()) > 10 * TOLERANCE  # the curve moves: matching means something


def _safetensors(directory: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = glob.glob(os.path.join(directory, "*.safetensors"))
    assert len(files) == 1, files
    return load_file(files[0])


def test_dpo_fsdp2_matches_one_process_through_sharded_checkpoint_and_export(run_dir):
    """Steps 1-3 run sharded with reference="cache" (log-probs computed by both ranks, all-gathered), are saved
    as a sharded checkpoint, and steps 4-6 resume from it with a sharded live reference copy. All six losses
    must equal those of one process on the same global batches (at step 0 the cached and the live reference are
    the same pi_0), and the exported model must hold full, unsharded weights equal to the one-process export."""
    build_cli(_args("dpo.yaml", "single", 6, "--data.init_args.batch_size=8"))
    single = _losses("single")

    cache = ["--model.init_args.policy.init_args.reference=cache"]
    _launch(_args("dpo.yaml", "sharded", 3, "--data.init_args.batch_size=4", *FSDP2, *cache))
    checkpoint = os.path.join("sharded", "checkpoints", "last.ckpt")
    assert os.path.isdir(checkpoint)
    assert len(glob.glob(os.path.join(checkpoint, "*.distcp"))) == 2  # one shard per rank
    assert glob.glob(os.path.join(".cache", "lit_align", "reference_logps", "*.safetensors"))  # train (+ val)

    _launch(_args("dpo.yaml", "sharded", 6, "--data.init_args.batch_size=4", *FSDP2, "--ckpt_path=last"))
    first, resumed = _losses_by_run("sharded")
    assert len(first) == 3 and len(resumed) == 3 and min(resumed) > max(first)  # continued, not restarted
    sharded = {**first, **resumed}
    _assert_curves_match(single, sharded)

    import torch.distributed.checkpoint as dcp

    keys = dcp.FileSystemReader(checkpoint).read_metadata().state_dict_metadata
    assert any(k.startswith("state_dict.policy.policy.") for k in keys)
    assert not any("policy.reference." in k for k in keys)  # the frozen reference is never stored

    exported, expected = _safetensors(os.path.join("sharded", "hf_model")), _safetensors(os.path.join("single", "hf_model"))
    assert exported.keys() == expected.keys()
    for key, value in expected.items():
        assert exported[key].shape == value.shape, key  # consolidated, not one rank's shard
        assert torch.allclose(exported[key], value, atol=1e-3), key


def test_on_policy_pmle_fsdp2_matches_one_process(run_dir):
    """PMLE with beta > 0 samples from the sharded policy every step (generation with synced ranks) and scores the
    samples under the sharded reference copy. Top-1 sampling (greedy responses; training refuses temperature 0)
    and the exact per-token KL make the samples and the loss deterministic, so two processes must reproduce the
    one-process curve."""
    deterministic = ["--model.init_args.kl_estimator=token_full", "--model.init_args.num_kl_samples=1",
                     "--model.init_args.sampling.top_k=1", "--model.init_args.sampling.max_new_tokens=6"]
    build_cli(_args("pmle.yaml", "single", 3, "--data.init_args.batch_size=8", *deterministic))
    _launch(_args("pmle.yaml", "sharded", 3, "--data.init_args.batch_size=4", *FSDP2, *deterministic))
    _assert_curves_match(_losses("single"), _losses("sharded"))
    kl = _losses("sharded", "train/objective/kl")
    assert len(kl) == 3 and all(value >= 0 for value in kl.values())


@pytest.mark.extended
def test_dpo_fsdp2_recomputes_the_head_at_a_large_vocabulary(run_dir):
    """At a 151,936-entry vocabulary the chunked LM head recomputes its logits in the backward (a small vocabulary's
    are kept), under FSDP2 too, where the head's weights are re-gathered for it: the sharded losses equal one
    process's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lit_align.models.chunked_head import MIN_CHUNK_ELEMENTS
    from lit_align.models.loading import EMBEDDED_DIR, load_tokenizer

    config = AutoConfig.from_pretrained(EMBEDDED_DIR)
    config.vocab_size = 151936  # Qwen2's
    assert 32 * config.vocab_size > MIN_CHUNK_ELEMENTS  # any batch of 32 scored positions or more recomputes
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained("wide")
    load_tokenizer("tiny").save_pretrained("wide")
    wide = ["--model.init_args.policy.init_args.model=wide"]
    build_cli(_args("dpo.yaml", "single", 2, "--data.init_args.batch_size=8", *wide))
    _launch(_args("dpo.yaml", "sharded", 2, "--data.init_args.batch_size=4", *FSDP2, *wide))
    single, sharded = _losses("single"), _losses("sharded")
    assert sorted(sharded) == sorted(single) and len(single) == 2, (single, sharded)
    for step in single:
        assert sharded[step] == pytest.approx(single[step], abs=TOLERANCE), (step, single, sharded)

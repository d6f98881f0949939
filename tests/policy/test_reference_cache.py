"""reference="cache": reference log-probs computed once, stored on disk, reused, and recomputed when inputs change."""

from pathlib import Path

import pytest
import torch
from support.cli import fit_args
from safetensors.torch import load_file

import lit_align.policy.reference_cache as reference_cache
from lit_align import PolicyWithReference
from lit_align.cli.app import build_cli
from lit_align.data import PreferenceDataModule
from lit_align.models.logprobs import sequence_logprobs
from lit_align.objectives import DPO

CACHE = ".cache/lit_align/reference_logps"


def _fit(*extra, steps=2):
    # each variant re-runs into the same folder on purpose (another run: replace it)
    return build_cli(fit_args("dpo.yaml", "--model.init_args.policy.init_args.reference=cache",
                              "--checkpoint.other_run=replace", "--data.limit_rows=24", "--data.batch_size=8", "--export.enabled=false", *extra,
                              steps=steps))


def _cache_files(run_dir: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (run_dir / CACHE).glob("*.safetensors")}


def test_cache_written_reused_and_recomputed_when_inputs_change(run_dir, monkeypatch):
    cli = _fit()
    first = _cache_files(run_dir)
    assert len(first) == 2  # train and validation
    train_path = cli.model.policy.reference.cache.paths["train"]
    assert train_path.name in first and load_file(str(train_path))["logps"].shape == (24, 2)

    computed = []
    original = reference_cache._compute
    monkeypatch.setattr(reference_cache, "_compute", lambda *a: computed.append(1) or original(*a))
    _fit()
    assert computed == [] and _cache_files(run_dir) == first  # reused: nothing recomputed, nothing rewritten

    _fit("--data.max_length=60")  # same data, another length setting: new key
    assert len(computed) == 2
    after_length = _cache_files(run_dir)
    assert len(after_length) == 4 and all(after_length[name] == t for name, t in first.items())

    _fit("--data.limit_rows=16")  # other training data: a new train key, the validation cache is reused
    assert len(computed) == 3 and len(_cache_files(run_dir)) == 5


def test_cached_values_equal_a_live_copy_and_dpo_loss_matches(run_dir):
    cli = _fit(steps=1)
    cached = load_file(str(cli.model.policy.reference.cache.paths["train"]))["logps"]  # (rows, 2)

    dm = PreferenceDataModule(path="tiny", limit_rows=24, max_length=64, max_prompt_length=32, tokenizer="tiny")
    dm.setup("fit")
    batch = dm.collator()(dm.train_examples[:8])
    live = PolicyWithReference("tiny", reference="copy")
    with torch.no_grad():
        logits = live.reference_logits(batch["input_ids"], batch["attention_mask"])
    expected = sequence_logprobs(logits, batch["input_ids"], batch["completion_mask"])  # (2B,) chosen then rejected
    torch.testing.assert_close(cached[batch["index"]].T.reshape(-1), expected, atol=1e-5, rtol=0)

    # The same policy weights, once with the cached and once with the live reference: the same DPO loss.
    with_copy = DPO(policy=PolicyWithReference("tiny", reference="copy"))
    with_cache = DPO(policy=PolicyWithReference("tiny", reference="cache"))
    with_cache.policy.reference.cache.values["train"] = cached
    torch.manual_seed(0)
    with torch.no_grad():  # move both policies away from the reference identically
        for p_copy, p_cache in zip(with_copy.policy.policy.parameters(), with_cache.policy.policy.parameters()):
            noise = torch.randn_like(p_copy) * 0.05
            p_copy.add_(noise)
            p_cache.add_(noise)
    with torch.no_grad():
        loss_copy, metrics_copy = with_copy.compute_loss(batch, "train")
        loss_cache, metrics_cache = with_cache.compute_loss(batch, "train")
    torch.testing.assert_close(loss_cache, loss_copy, atol=1e-5, rtol=0)
    torch.testing.assert_close(metrics_cache["rewards/margins"], metrics_copy["rewards/margins"], atol=1e-5, rtol=0)
    assert abs(loss_copy.item() - 0.6931472) > 1e-3  # the policy did differ from the reference


def test_lookup_refuses_examples_the_cache_was_not_computed_for():
    cache = reference_cache.ReferenceCache("unused")
    cache.values["train"] = torch.tensor([[-1.0, -2.0], [float("nan"), float("nan")], [-3.0, -4.0]])
    assert cache.lookup("train", torch.tensor([2, 0])).tolist() == [-3.0, -1.0, -4.0, -2.0]
    with pytest.raises(RuntimeError, match="not computed for"):
        cache.lookup("train", torch.tensor([1]))
    with pytest.raises(RuntimeError, match="val split"):
        cache.lookup("val", torch.tensor([0]))

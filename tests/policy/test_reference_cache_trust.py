"""The reference cache holds pi_0's log-probs or nothing: rebuilt from pi_0 on resume, checked at load, refused
with one line when pi_0 cannot be had, and kept in a per-user cache directory."""

import shutil
from pathlib import Path

import pytest
import torch
from support.cli import fit_args, run_main
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lit_align.policy.reference_cache as reference_cache
from lit_align.cli.app import build_cli

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(".cache/lit_align/reference_logps")  # where conftest's run_dir points $LIT_ALIGN_CACHE
COMMON = ["--model.init_args.policy.init_args.reference=cache", "--data.limit_rows=24", "--data.batch_size=8",
          "--export.enabled=false"]


def _fit(*extra, steps=2):
    return build_cli(fit_args("dpo.yaml", *COMMON, *extra, steps=steps))


def _messages(monkeypatch) -> list[str]:
    messages = []
    monkeypatch.setattr(reference_cache, "rank_zero_info", messages.append, raising=False)
    return messages


def test_resume_and_validate_without_the_cache_rebuild_it_from_pi0_not_from_the_trained_policy(run_dir, monkeypatch):
    """The cache folder is gone when a run resumes (another machine, a cleaned cache): the values recomputed then
    must be pi_0's, not those of the resumed weights, for this run and for every later run that reuses them."""
    cli = _fit()
    paths = dict(cli.model.policy.reference.cache.paths)
    pi0 = {split: load_file(str(path))["logps"].clone() for split, path in paths.items()}

    shutil.rmtree(CACHE)
    messages = _messages(monkeypatch)
    resumed = _fit("--ckpt_path=runs/test/checkpoints/last.ckpt", steps=4)
    assert resumed.trainer.global_step == 4  # it did resume: two more steps after the two restored
    assert resumed.model.policy.reference.cache.paths == paths  # the same key: pi_0 and the data did not change
    for split in ("train", "val"):
        torch.testing.assert_close(load_file(str(paths[split]))["logps"], pi0[split], atol=1e-6, rtol=0,
                                   equal_nan=True)
        torch.testing.assert_close(resumed.model.policy.reference.cache.values[split], pi0[split], atol=1e-6, rtol=0,
                                   equal_nan=True)
    computing = [m for m in messages if m.startswith("reference cache: computing")]
    assert computing == [
        f"reference cache: computing reference log-probs of 24 pairs (train) -> {paths['train']} (reference 'tiny' "
        "reloaded from its source: the policy has moved away from it)",
        f"reference cache: computing reference log-probs of {len(resumed.datamodule.val_examples)} pairs (val) -> "
        f"{paths['val']} (reference 'tiny' reloaded from its source: the policy has moved away from it)",
    ]
    assert any(m.startswith("reference cache: 24/24 pairs (train)") for m in messages)  # progress lines

    # validate from the trained checkpoint: on_validation_start computes the missing validation cache
    shutil.rmtree(CACHE)
    validate = ["validate", "--config", str(ROOT / "configs" / "dpo.yaml"), *COMMON, "--trainer.accelerator=cpu",
                "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=2",
                "--trainer.default_root_dir=runs/test", "--ckpt_path=runs/test/checkpoints/last.ckpt"]
    build_cli(validate)
    torch.testing.assert_close(load_file(str(paths["val"]))["logps"], pi0["val"], atol=1e-6, rtol=0, equal_nan=True)

    messages.clear()
    _fit(steps=1)  # a fresh run reuses both files
    assert {m for m in messages if "reusing" in m} == {
        f"reference cache: reusing {paths[s].stem} ({paths[s]})" for s in ("train", "val")}


def test_lora_resume_without_the_cache_rebuilds_it_from_pi0(run_dir, monkeypatch):
    """Under LoRA the resumed base is not proof of pi_0 (it came out of a checkpoint), so pi_0 is loaded from its
    source; the rebuilt values equal those the fresh run computed with the adapters disabled."""
    lora = ["--model.init_args.policy.init_args.lora.r=4", "--data.val_split=null"]
    cli = _fit(*lora)
    path = cli.model.policy.reference.cache.paths["train"]
    pi0 = load_file(str(path))["logps"].clone()
    path.unlink()
    messages = _messages(monkeypatch)
    resumed = _fit(*lora, "--ckpt_path=runs/test/checkpoints/last.ckpt", steps=4)
    assert resumed.trainer.global_step == 4 and any("reloaded from its source" in m for m in messages)
    torch.testing.assert_close(load_file(str(path))["logps"], pi0, atol=1e-6, rtol=0)


def test_a_tampered_or_truncated_cache_file_is_recomputed_with_a_warning_naming_it(run_dir):
    cli = _fit(steps=1)
    train, val = cli.model.policy.reference.cache.paths["train"], cli.model.policy.reference.cache.paths["val"]
    # cloned: load_file's tensors may map the file, which is overwritten in place below
    pi0 = {"train": load_file(str(train))["logps"].clone(), "val": load_file(str(val))["logps"].clone()}

    with safe_open(str(train), framework="pt") as f:
        metadata = f.metadata() or {}
    save_file({"logps": pi0["train"] - 0.5}, str(train), metadata=metadata)  # finite, plausible, wrong
    val.write_bytes(val.read_bytes()[: val.stat().st_size // 2])  # an interrupted copy

    with pytest.warns(UserWarning) as record:
        again = _fit(steps=1)
    warnings = [str(w.message) for w in record if str(w.message).startswith("reference cache:")]
    assert f"reference cache: {train} does not match the checksum stored with it (its values were changed); " \
           "recomputing it from the reference model" in warnings
    assert any(w.startswith(f"reference cache: {val} cannot be read (") for w in warnings)
    for split, path in (("train", train), ("val", val)):
        torch.testing.assert_close(again.model.policy.reference.cache.values[split], pi0[split], atol=1e-6, rtol=0,
                                   equal_nan=True)
        torch.testing.assert_close(load_file(str(path))["logps"], pi0[split], atol=1e-6, rtol=0, equal_nan=True)


def test_a_reference_that_cannot_be_rebuilt_is_refused_in_one_line(run_dir, capsys, monkeypatch):
    """A source that no longer gives the model the run started from (here: loading it yields other weights, as a
    moved hub revision or a non-reproducible build would): the cache cannot be rebuilt from pi_0 after a resume,
    so the run stops naming the file and the ways out instead of caching log-probs of another model."""
    from lit_align.models.loading import load_causal_lm

    common = [*COMMON, "--data.val_split=null"]
    assert run_main(fit_args("dpo.yaml", *common, steps=1)) == 0
    (path,) = CACHE.glob("*.safetensors")
    path.unlink()
    monkeypatch.setattr(reference_cache, "load_causal_lm", lambda name, **kw: load_causal_lm(name, seed=7))
    capsys.readouterr()
    status = run_main(fit_args("dpo.yaml", *common, "--ckpt_path=runs/test/checkpoints/last.ckpt", steps=2))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[0] == (
        f"lit-align: error: the reference cache {(run_dir / CACHE / path.name)} is missing or invalid and the policy "
        "has moved away from pi_0, so it must be recomputed from 'tiny', but that source now gives another model "
        "than this run's reference (weights differ); restore the cache file, or start the run from step 0, or use "
        "reference: copy")
    assert not path.exists()  # nothing wrong was stored


def test_resuming_against_another_reference_is_refused_in_one_line(run_dir, capsys):
    """The checkpoint names its pi_0: resumed with another one (here another seed of the embedded model), the run
    stops instead of training on against reference log-probs of a different model."""
    assert run_main(fit_args("dpo.yaml", *COMMON, "--data.val_split=null", steps=1)) == 0
    capsys.readouterr()
    checkpoint = "runs/test/checkpoints/last.ckpt"
    other_seed = "--model.init_args.policy.init_args.seed=1"
    status = run_main(fit_args("dpo.yaml", *COMMON, "--data.val_split=null", other_seed, f"--ckpt_path={checkpoint}",
                               steps=2))
    assert status == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"lit-align: error: checkpoint {checkpoint} was trained against another reference than 'tiny' gives now "
        "(weights differ), so reference log-probs computed now would not be its pi_0's; resume with the model "
        "settings it started from, or start a new run")


def test_default_directory_is_a_per_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LIT_ALIGN_CACHE", str(tmp_path / "mine"))
    assert reference_cache.default_cache_dir() == tmp_path / "mine" / "reference_logps"
    monkeypatch.delenv("LIT_ALIGN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert reference_cache.default_cache_dir() == tmp_path / "xdg" / "lit_align" / "reference_logps"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert reference_cache.default_cache_dir() == tmp_path / "home" / ".cache" / "lit_align" / "reference_logps"
    assert reference_cache.default_cache_dir().is_absolute()  # never relative to the working directory


def test_pi0_is_reloaded_with_the_policys_own_seed():
    """A reference reloaded from its source is built with the seed the policy was built with (the embedded
    model's weights come from it), so a run on ``seed: 3`` is rebuilt, not refused."""
    from types import SimpleNamespace

    from lit_align.policy.with_reference import PolicyWithReference
    from lit_align.policy.reference_cache import ReferenceCache

    policy = PolicyWithReference(model="tiny", reference="none", seed=3)
    cache = ReferenceCache(model_name=policy.model_name, model=policy.base_model)
    reloaded = cache._load_reference(SimpleNamespace(policy=policy, device=torch.device("cpu")), Path("unused"))
    for name, weight in policy.base_model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], weight, rtol=0, atol=0)


def test_pi0_is_reloaded_with_the_policys_loading_options():
    """A reference rebuilt from its source gets the options the policy was loaded with (here the attention
    implementation; a hub revision or quantization likewise), not the library defaults."""
    from types import SimpleNamespace

    from lit_align.policy.with_reference import PolicyWithReference
    from lit_align.policy.reference_cache import ReferenceCache

    policy = PolicyWithReference(model="tiny", reference="none", attn_implementation="eager")
    cache = ReferenceCache(model_name=policy.model_name, model=policy.base_model)
    reloaded = cache._load_reference(SimpleNamespace(policy=policy, device=torch.device("cpu")), Path("unused"))
    assert reloaded.config._attn_implementation == "eager"

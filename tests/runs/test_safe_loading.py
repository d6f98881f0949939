"""Loading is safe: no pickled code runs from checkpoints, YAML configs cannot build objects, remote code is off by
default, weights are written as safetensors, and credentials from the environment never reach saved files."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest
import torch

from support.cli import fit_args, run_main
from lit_align.runs.checkpoint_io import CheckpointLoadError, load_checkpoint_file

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))




def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for path in list((ROOT / "lit_align").rglob("*.py")) + list((ROOT / "callbacks").rglob("*.py")):
        for match in re.finditer(r"torch\.load\((.*?)\)\n", path.read_text()):
            calls.append((path.name, match.group(1)))
    unsafe = [c for c in calls if "weights_only=True" not in c[1] and c[0] != "checkpoint_io.py"]
    assert not unsafe, unsafe


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    pwned = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(str(pwned))}, path)
    with pytest.raises(CheckpointLoadError, match=r"evil\.ckpt: refusing to unpickle this checkpoint"):
        load_checkpoint_file(path)
    from lit_align.rewards.model import load_reward_model

    with pytest.raises(CheckpointLoadError):
        load_reward_model(str(path))  # a reward-model .ckpt someone hands you
    assert not pwned.exists()
    torch.load(path, weights_only=False)  # the same file does run code when unpickled the unsafe way
    assert pwned.exists()


def test_yaml_config_cannot_construct_python_objects(run_dir, capsys):
    pwned = run_dir / "pwned"
    (run_dir / "evil.yaml").write_text(f"seed_everything: !!python/object/apply:os.system ['touch {pwned}']\n")
    assert run_main(fit_args("dpo.yaml", "--config=evil.yaml", steps=1)) == 2
    assert not pwned.exists()


def test_remote_code_is_off_by_default():
    from lit_align.models.loading import load_causal_lm, load_sequence_classifier, load_tokenizer
    from lit_align.policy.with_reference import PolicyWithReference
    from lit_align.rewards.model import build_reward_scorer, load_reward_model

    for fn in (load_causal_lm, load_sequence_classifier, load_tokenizer, PolicyWithReference, build_reward_scorer,
               load_reward_model):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False, fn


def test_run_files_hold_no_env_secret_and_weights_are_safetensors(run_dir, monkeypatch):
    secret, token = "sk-test-0123456789abcdef", "hf_testtoken0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("MY_JUDGE_API_KEY", secret + "2")
    monkeypatch.setenv("HF_TOKEN", token)
    # A key pasted into the config by mistake (here into a free-text field) is masked in the saved config.yaml.
    args = fit_args("dpo.yaml", f"--model.policy.init_args.reference_cache_dir=cache-{secret}", "--data.val_split=null", steps=1)
    assert run_main(args) == 0
    config = next(run_dir.glob("runs/test/logs/**/config.yaml")).read_text()
    assert "reference_cache_dir: cache-***" in config
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".csv", ".json", ".txt", ".jinja") and "cache-" not in str(path):
            text = path.read_text(errors="replace")
            assert secret not in text and token not in text, path
    checkpoint = load_checkpoint_file(run_dir / "runs/test/checkpoints/last.ckpt")
    assert secret not in repr(checkpoint["hyper_parameters"]) + repr(checkpoint["datamodule_hyper_parameters"])
    exported = run_dir / "runs/test/hf_model"
    assert (exported / "model.safetensors").is_file()
    assert not list(exported.glob("*.bin")) and not list(exported.glob("*.pt"))

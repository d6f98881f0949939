"""Checkpoints written by lit-align 0.1 (before its modules moved into packages) still load and resume.

``tests/fixtures/v0_1/pdistill_last.ckpt`` was written by 0.1's ``lit-align fit --config configs/pdistill.yaml``
at global step 4: its manifest names the objective by its old path ``lit_align.objectives.distill``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.cli import fit_args

from lit_align.generation.rollout import SamplingConfig
from lit_align.objectives.onpolicy.distill import PreferenceDistillation
from lit_align.runs.checkpoint_io import atomic_torch_save, load_checkpoint_file, with_checksum
from lit_align.runs.manifest import MANIFEST_KEY, ManifestComparison, check_objective, class_path

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1" / "pdistill_last.ckpt"


def test_a_config_dataclass_pickled_under_its_0_1_path_loads_with_the_safe_loader(tmp_path, monkeypatch):
    sampling = SamplingConfig(max_new_tokens=7, temperature=0.5)
    monkeypatch.setattr(SamplingConfig, "__module__", "lit_align.rollout")  # pickled as 0.1 named it
    path = tmp_path / "old.ckpt"
    atomic_torch_save(with_checksum({"hyper_parameters": {"sampling": sampling}, "state_dict": {}}), path)
    assert b"lit_align.rollout\nSamplingConfig" in _pickled(path)
    monkeypatch.undo()
    loaded = load_checkpoint_file(path)["hyper_parameters"]["sampling"]
    assert type(loaded) is SamplingConfig and loaded == sampling


def _pickled(path: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return b"".join(archive.read(name) for name in archive.namelist() if name.endswith("data.pkl"))


def test_the_0_1_manifest_names_the_objective_it_moved_to():
    checkpoint = load_checkpoint_file(FIXTURE)
    saved = checkpoint[MANIFEST_KEY]
    assert saved["objective"] == "lit_align.objectives.distill.PreferenceDistillation"
    now = {**saved, "objective": class_path(PreferenceDistillation)}
    assert not ManifestComparison(saved, now).refusals
    check_objective(checkpoint, PreferenceDistillation.__new__(PreferenceDistillation), str(FIXTURE))


@pytest.mark.slow
@pytest.mark.extended  # a fresh folder: pdistill's reward stage is trained first (about 10 s)
def test_fit_resumes_a_0_1_checkpoint(run_dir):
    from lit_align.cli.app import build_cli

    ckpt = run_dir / "pdistill_last.ckpt"
    shutil.copy(FIXTURE, ckpt)
    step = load_checkpoint_file(FIXTURE)["global_step"]
    cli = build_cli(fit_args("pdistill.yaml", f"--ckpt_path={ckpt}", "--export.enabled=false",
                             "--trainer.limit_val_batches=0", steps=step + 1))
    assert cli.trainer.global_step > step  # one more batch of prompts: epochs_per_batch optimizer steps
    assert load_checkpoint_file(run_dir / "runs/test/checkpoints/last.ckpt")["global_step"] == cli.trainer.global_step

"""Installing lit-align like any Python package: the wheel holds every package and the shipped configs, the configs
are reachable by name and through ``lit-align configs``, and the working directory is importable."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from support.cli import fit_args, run_main

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "lit_align", "callbacks", "configs")


def _package_names() -> set[str]:
    """Every package of the source tree as installed: lit_align/... and callbacks/... as lit_align.callbacks...."""
    names = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lit_align").rglob("__init__.py")}
    names |= {".".join(("lit_align", *p.parent.relative_to(ROOT).parts)) for p in (ROOT / "callbacks").rglob(
        "__init__.py")}
    return {n for n in names if "__pycache__" not in n}


def test_wheel_holds_every_package_and_the_shipped_configs(tmp_path):
    """Built from a copy of the sources (the checkout's build/ stays untouched), without dependencies: seconds."""
    source = tmp_path / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif (ROOT / name).is_file():
            source.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    files = set(zipfile.ZipFile(wheel).namelist())
    missing = {p for p in _package_names() if f"{p.replace('.', '/')}/__init__.py" not in files}
    assert not missing, f"packages missing from the wheel: {sorted(missing)}"
    assert not any(f.startswith("callbacks/") for f in files), "no top-level callbacks package"
    shipped = {f"lit_align/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob(
        "*.yaml")}
    assert shipped and shipped <= files, sorted(shipped - files)
    assert "lit_align/assets/tiny/tokenizer.json" in files


def test_config_names_resolve_to_the_shipped_files(run_dir):
    from lit_align.cli.shipped_configs import configs_root, resolve_config_args

    root = configs_root()
    resolved = resolve_config_args(["fit", "--config", "pdistill", "--config=offline/simpo", "--config",
                                    "configs/tldr/dpo.yaml", "--model.beta", "pdistill"])
    assert resolved == ["fit", "--config", str(root / "pdistill.yaml"), f"--config={root / 'offline/simpo.yaml'}",
                        "--config", str(root / "tldr/dpo.yaml"), "--model.beta", "pdistill"]
    (run_dir / "dpo.yaml").write_text("model: DPO\n")  # a file here is always that file
    assert resolve_config_args(["--config", "dpo.yaml", "--config", "nothing"]) == [
        "--config", "dpo.yaml", "--config", "nothing"]


def test_a_shipped_config_by_name_runs(run_dir, capsys):
    assert run_main(["fit", "--config", "offline/simpo", "--print_config"]) == 0
    assert "lit_align.objectives.SimPO" in capsys.readouterr().out


def test_configs_subcommand_lists_shows_and_copies(run_dir, capsys):
    assert run_main(["configs"]) == 0
    listing = capsys.readouterr().out
    assert "pdistill " in listing and "offline/simpo " in listing and "tldr/dpo " in listing
    assert "SimPO (Meng et al. 2024)" in listing  # each with its first comment line
    assert run_main(["configs", "show", "offline/simpo"]) == 0
    assert capsys.readouterr().out == (ROOT / "configs/offline/simpo.yaml").read_text()
    assert run_main(["configs", "copy", "dpo"]) == 0
    assert (run_dir / "dpo.yaml").read_text() == (ROOT / "configs/dpo.yaml").read_text()
    assert run_main(["configs", "copy", "dpo"]) == 2  # never replaces a file
    assert "already exists" in capsys.readouterr().err
    assert run_main(["configs", "copy", "tldr/sft", "mine/sft.yaml"]) == 0
    assert (run_dir / "mine/sft.yaml").is_file()
    assert run_main(["configs", "show", "dpoo"]) == 2
    assert "did you mean 'dpo'" in capsys.readouterr().err


HINGE_DPO = '''
import torch.nn.functional as F
from lit_align.losses import PreferenceLoss
from lit_align.objectives import OfflinePairObjective


def hinge_loss(pc, pr, rc, rr, beta):
    margin = beta * ((pc - rc) - (pr - rr))
    return PreferenceLoss(F.relu(1 - margin), beta * (pc - rc).detach(), beta * (pr - rr).detach())


class HingeDPO(OfflinePairObjective):
    """DPO with a hinge loss.

    Args:
        beta: Scale of the log-ratio margin.
    """

    def __init__(self, beta: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta

    def pair_loss(self, chosen, rejected, batch):
        return hinge_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, self.beta)
'''


def test_the_readme_extension_imports_from_the_working_directory(run_dir, monkeypatch, capsys):
    """``lit-align fit --config configs/dpo.yaml --model my_objectives.HingeDPO`` from the folder holding
    ``my_objectives.py``, as the README shows (the console script's own folder, not this one, is on sys.path)."""
    (run_dir / "my_objectives.py").write_text(textwrap.dedent(HINGE_DPO))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(run_dir))])
    monkeypatch.delitem(sys.modules, "my_objectives", raising=False)  # another test's my_objectives.py, imported
    try:
        status = run_main(["fit", "--config", "configs/dpo.yaml", "--model", "my_objectives.HingeDPO",
                           "--model.beta", "0.2", "--print_config"])
    finally:
        sys.modules.pop("my_objectives", None)  # another test has its own my_objectives.py
    assert status == 0, capsys.readouterr().err
    assert "my_objectives.HingeDPO" in capsys.readouterr().out
    assert str(run_dir) not in sys.path  # only while lit-align runs


def test_top_level_help_lists_every_subcommand(capsys):
    assert run_main(["--help"]) == 0
    text = capsys.readouterr().out
    for subcommand in ("fit", "validate", "test", "predict", "evaluate", "plot", "configs"):
        assert any(line.split()[:1] == [subcommand] for line in text.splitlines()), subcommand


def test_config_help_shows_the_config_values_and_wraps(capsys):
    """``fit --config configs/dpo.yaml --help``: the learning rate the config sets (5e-4, not the class default),
    every description whole (wrapped at word boundaries, never cut)."""
    from lit_align.cli.help import _arguments
    from lit_align.data import PreferenceDataModule

    assert run_main(fit_args("dpo.yaml")[:3] + ["--help"]) == 0
    text = capsys.readouterr().out
    assert "--model.learning_rate" in text and "0.0005 (config)" in text and "3.0e-06" not in text
    assert max(len(line) for line in text.splitlines() if "(config)" not in line) <= 120
    joined = " ".join(text.split())
    for name, _, description in _arguments(PreferenceDataModule):
        assert " ".join(description.split()) in joined, name


@pytest.mark.extended  # two short fits
def test_max_steps_on_the_command_line_is_the_limit(run_dir):
    """configs/dpo.yaml caps at max_epochs 2 (32 batches each with 8 rows of 16): --trainer.max_steps 5 past two
    epochs of 2 batches runs 5 steps; with --trainer.max_epochs on the same command line the epochs still cap."""
    from lit_align.cli.app import build_cli

    small = ["--data.limit_rows=32", "--trainer.limit_val_batches=0", "--export.enabled=false",
             "--trainer.enable_checkpointing=false", "--trainer.logger=false"]
    args = [a for a in fit_args("dpo.yaml", *small, steps=5) if a != "--trainer.val_check_interval=null"]
    assert build_cli(args).trainer.global_step == 5
    assert build_cli([*args, "--trainer.max_epochs=1"]).trainer.global_step == 2


def test_a_run_with_no_limit_is_refused_in_one_line(run_dir, capsys):
    status = run_main(["fit", "--model", "DPO", "--data", "PreferenceDataModule", "--data.path", "tiny"])
    line = capsys.readouterr().err.splitlines()[-2]
    assert status == 2 and line.startswith("lit-align: error: the run has no limit") and "--trainer.max_epochs" in line
    status = run_main(["fit", "--config", "dpo.yaml", "--trainer.max_epochs=-1", "--print_config"])
    assert status == 0  # printing the config is not a run
    assert run_main(["fit", "--config", "dpo.yaml", "--trainer.max_epochs=-1"]) == 2
    assert "trainer.max_epochs -1" in capsys.readouterr().err


@pytest.mark.extended  # a short on-policy fit
def test_a_reward_function_imports_from_the_working_directory(run_dir, monkeypatch):
    """``--model.reward_model my_rewards.length_reward`` with ``my_rewards.py`` in the working folder (imported when
    the objective is built, after parsing)."""
    (run_dir / "my_rewards.py").write_text("def length_reward(prompts, responses):\n"
                                           "    return [float(len(r)) for r in responses]\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(run_dir))])
    monkeypatch.delitem(sys.modules, "my_objectives", raising=False)  # another test's my_objectives.py, imported
    try:
        status = run_main(fit_args("rloo.yaml", "--model.reward_model=my_rewards.length_reward",
                                   "--model.sampling.max_new_tokens=4", "--data.batch_size=2", "--data.limit_rows=8",
                                   "--trainer.limit_val_batches=0", "--export.enabled=false", steps=1))
    finally:
        sys.modules.pop("my_rewards", None)
    assert status == 0

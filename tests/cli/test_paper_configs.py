"""Every paper config (configs/tldr, configs/ultrafeedback) parses with the real objectives' signatures, without
loading or downloading anything."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from lit_align.cli.app import build_cli

ROOT = Path(__file__).resolve().parents[2]
PAPER_CONFIGS = [p for folder in ("tldr", "ultrafeedback") for p in sorted((ROOT / "configs" / folder).glob("*.yaml"))]


def test_every_tldr_stage_and_objective_has_a_config():
    names = {p.stem for p in (ROOT / "configs" / "tldr").glob("*.yaml")}
    assert {"sft", "reward", "dpo", "pmle", "pdistill", "rebel", "rlhf", "rkl"} <= names
    assert {p.stem for p in (ROOT / "configs" / "ultrafeedback").glob("*.yaml")} >= {"dpo", "pmle", "pdistill", "rebel"}


@pytest.mark.parametrize("config", PAPER_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_paper_config_parses_offline(config, run_dir, monkeypatch):
    text = config.read_text()
    assert text.startswith("#") and "lit-align fit --config" in text.splitlines()[1]
    assert "Hardware:" in text
    # parsing must not load a model or data set: make any attempt fail loudly
    def refuse(*args, **kwargs):
        raise AssertionError("a model or data set was loaded while parsing")

    for target in ("lit_align.policy.with_reference.load_causal_lm", "lit_align.policy.with_reference.load_tokenizer",
                   "lit_align.rewards.model.load_sequence_classifier", "lit_align.rewards.model.load_tokenizer",
                   "datasets.load_dataset"):  # sources imports it where rows are read
        monkeypatch.setattr(target, refuse)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(out.getvalue())
    source = yaml.safe_load(text)
    assert printed["model"]["class_path"] == source["model"]["class_path"]
    for section in ("model", "data", "trainer"):
        _assert_contains(printed[section], source[section], section)


def _assert_contains(printed, written, where: str) -> None:
    """Every value the config writes survives parsing (the printed config adds the defaults around it)."""
    if isinstance(written, dict):
        printed = printed.get("init_args", printed) if "init_args" not in written else printed
        for key, value in written.items():
            assert key in printed, f"{where}.{key} dropped"
            _assert_contains(printed[key], value, f"{where}.{key}")
    else:
        assert printed == written, f"{where}: wrote {written!r}, parsed {printed!r}"

"""Splits mean what they say: validation and test rows come from where the user said, never silently from the
training rows, and the run's first lines say which rows it trains, validates and tests on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support.cli import fit_args, run_main
from lit_align.data import DataError, PreferenceDataModule
from lit_align.data import presets as presets_module
from lit_align.data.presets import load_source
from lit_align.data.sources import EMBEDDED_SOURCES, load_rows


def _rows(tag: str, n: int) -> list[dict]:
    return [{"prompt": f"{tag} question {i}?", "chosen": f"{tag} yes {i}.", "rejected": f"{tag} no {i}."}
            for i in range(n)]


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _module(path, **kwargs):
    return PreferenceDataModule(path=str(path), tokenizer="tiny", batch_size=2, max_length=64, max_prompt_length=32,
                                **kwargs)


def _prompts(dm, examples) -> set[str]:
    return {dm.tokenizer.decode(ex.prompt_ids, skip_special_tokens=True) for ex in examples}


def test_a_named_val_split_of_a_single_file_is_refused(tmp_path):
    path = _write(tmp_path / "data.jsonl", _rows("train", 6))
    with pytest.raises(DataError) as err:
        _module(path, val_split="validation").setup("fit")
    assert str(err.value) == (
        f"{path} is a single file with one split, so val_split='validation' cannot be read from it: give the "
        "validation rows as val_path, or hold some out with val_fraction (and set val_split: null)")


def test_val_path_file_is_read_whole_and_the_log_says_val_split_is_not_consulted(tmp_path, caplog):
    train = _write(tmp_path / "train.jsonl", _rows("train", 6))
    val = _write(tmp_path / "val.jsonl", _rows("val", 3))
    dm = _module(train, val_path=str(val), val_split="validation")
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert _prompts(dm, dm.val_examples) == {r["prompt"] for r in _rows("val", 3)}
    assert _prompts(dm, dm.train_examples) == {r["prompt"] for r in _rows("train", 6)}
    assert (f"data: training on {train} (6 rows), validating on {val} (read whole; val_split='validation' is not "
            "consulted) (3 rows)") in caplog.text


def test_a_directory_validates_on_its_validation_split_not_on_the_training_rows(tmp_path, caplog):
    _write(tmp_path / "set" / "train.jsonl", _rows("train", 6))
    _write(tmp_path / "set" / "validation.jsonl", _rows("val", 2))
    dm = _module(tmp_path / "set", val_split="validation")
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert _prompts(dm, dm.val_examples) == {r["prompt"] for r in _rows("val", 2)}
    assert not _prompts(dm, dm.val_examples) & _prompts(dm, dm.train_examples)
    assert (f"data: training on {tmp_path / 'set'} [train] (6 rows), validating on {tmp_path / 'set'} [validation] "
            "(2 rows)") in caplog.text
    with pytest.raises(DataError, match=r"has no split 'dev'; it has \['train', 'validation'\]"):
        _module(tmp_path / "set", val_split="dev").setup("fit")


def test_a_val_path_with_several_splits_needs_val_split(tmp_path):
    _write(tmp_path / "set" / "train.jsonl", _rows("train", 4))
    _write(tmp_path / "set" / "validation.jsonl", _rows("val", 2))
    train = _write(tmp_path / "train.jsonl", _rows("train", 4))
    with pytest.raises(DataError, match=r"holds the splits \['train', 'validation'\]: name the one to read"):
        _module(train, val_path=str(tmp_path / "set")).setup("fit")
    dm = _module(train, val_path=str(tmp_path / "set"), val_split="validation")
    dm.setup("fit")
    assert _prompts(dm, dm.val_examples) == {r["prompt"] for r in _rows("val", 2)}


def test_val_fraction_and_val_split_together_are_refused():
    with pytest.raises(DataError, match=r"val_fraction=0.1 and val_split='validation' both choose"):
        PreferenceDataModule(path="tiny", val_split="validation", val_fraction=0.1)


def test_held_out_rows_are_named_in_the_log(tmp_path, caplog):
    path = _write(tmp_path / "data.jsonl", _rows("train", 8))
    dm = _module(path, val_fraction=0.25, seed=1)
    with caplog.at_level("INFO"):
        dm.setup("fit")
    assert (f"data: training on {path} (6 rows), validating on {path} (held out: val_fraction=0.25, seed=1) "
            "(2 rows)") in caplog.text


def test_test_never_falls_back_to_the_validation_rows(tmp_path):
    _write(tmp_path / "set" / "train.jsonl", _rows("train", 4))
    _write(tmp_path / "set" / "validation.jsonl", _rows("val", 2))
    _write(tmp_path / "set" / "test.jsonl", _rows("test", 3))
    dm = _module(tmp_path / "set", val_split="validation")
    dm.setup("fit")
    with pytest.raises(DataError, match=r"set data\.test_path .* or data\.test_split"):
        dm.setup("test")
    with pytest.raises(DataError, match="no test rows"):
        dm.test_dataloader()
    by_split = _module(tmp_path / "set", val_split="validation", test_split="test")
    by_split.setup("test")
    assert _prompts(by_split, by_split.test_examples) == {r["prompt"] for r in _rows("test", 3)}
    assert len(by_split.test_dataloader().dataset) == 3
    by_file = _module(tmp_path / "set", test_path=str(tmp_path / "set" / "test.jsonl"))
    by_file.setup("test")
    assert _prompts(by_file, by_file.test_examples) == {r["prompt"] for r in _rows("test", 3)}
    with pytest.raises(DataError, match=r"train\.jsonl is a single file with one split, so test_split='test'"):
        _module(tmp_path / "set" / "train.jsonl", test_split="test").setup("test")


@pytest.mark.parametrize("preset, hub_id, hub_test", [("hh-rlhf", "Anthropic/hh-rlhf", "test"),
                                                       ("ultrafeedback", "HuggingFaceH4/ultrafeedback_binarized",
                                                        "test_prefs"),
                                                       ("tldr-comparisons", "CarperAI/openai_summarize_comparisons",
                                                        "test")])
def test_presets_map_test_to_the_data_sets_own_split(monkeypatch, preset, hub_id, hub_test):
    calls = []

    def fake_load_rows(path, split, name=None):
        calls.append((path, split))
        return load_rows("tiny")

    monkeypatch.setattr(presets_module, "load_rows", fake_load_rows)
    load_source(preset, "test")
    assert calls == [(hub_id, hub_test)]


def test_predict_says_which_rows_it_samples_prompts_from(tmp_path, caplog):
    path = _write(tmp_path / "data.jsonl", _rows("train", 4))
    dm = _module(path)
    dm.setup("predict")
    with caplog.at_level("INFO"):
        assert len(dm.predict_dataloader().dataset) == 4
    assert "data: predicting on the training rows (4 rows)" in caplog.text


def test_embedded_tiny_validates_on_its_own_validation_file():
    dm = PreferenceDataModule(path="tiny", val_split="validation", tokenizer="tiny")
    dm.setup("fit")
    val_file = PreferenceDataModule(path=str(EMBEDDED_SOURCES["tiny"]["validation"]), tokenizer="tiny")
    val_file.setup("fit")

    def content(examples):
        return [(ex.prompt_ids, ex.completion_ids) for ex in examples]

    assert content(dm.val_examples) == content(val_file.train_examples)
    assert content(dm.val_examples) != content(dm.train_examples[: len(dm.val_examples)])


# -- through the CLI ------------------------------------------------------------------------------------------------


def test_cli_user_file_with_the_shipped_val_split_stops_in_one_line(run_dir, capsys, monkeypatch):
    monkeypatch.delenv("LIT_ALIGN_DEBUG", raising=False)
    _write(run_dir / "data.jsonl", _rows("train", 4))
    status = run_main(fit_args("dpo.yaml", "--data.path=data.jsonl", "--export.enabled=false", steps=1))
    err = capsys.readouterr().err
    assert status == 2
    (line,) = [line for line in err.splitlines() if line.startswith("lit-align: error:")]
    assert line == ("lit-align: error: data.jsonl is a single file with one split, so val_split='validation' cannot "
                    "be read from it: give the validation rows as val_path, or hold some out with val_fraction (and "
                    "set val_split: null)")


def test_cli_test_without_test_rows_stops_in_one_line(run_dir, capsys, caplog, monkeypatch):
    monkeypatch.delenv("LIT_ALIGN_DEBUG", raising=False)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = ["test", "--config", os.path.join(root, "configs", "dpo.yaml"), "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", "--trainer.default_root_dir=runs/test"]
    assert run_main(args) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-align: error:")]
    assert "lit-align test needs rows of its own: set data.test_path" in line
    _write(run_dir / "test.jsonl", _rows("test", 3))
    with caplog.at_level("INFO"):
        assert run_main([*args, "--data.test_path=test.jsonl", "--trainer.logger=false"]) == 0
    assert "data: testing on test.jsonl (3 rows)" in caplog.text and "test/loss" in capsys.readouterr().out


def test_fit_says_once_which_rows_it_trains_and_validates_on(run_dir, caplog):
    with caplog.at_level("INFO"):
        assert run_main(fit_args("dpo.yaml", "--data.limit_rows=16", "--export.enabled=false", steps=1)) == 0
    said = "data: training on tiny [train] (16 rows), validating on tiny [validation] (64 rows)"
    assert [r.getMessage() for r in caplog.records].count(said) == 1


def test_the_data_line_shows_on_a_default_console(run_dir):
    """The real ``lit-align`` process, no logging set up by the user: the line is on the console."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = os.path.join(os.path.dirname(sys.executable), "lit-align")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = [script, "validate", "--config", os.path.join(root, "configs", "dpo.yaml"), "--trainer.accelerator=cpu",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--data.limit_rows=16",
            "--trainer.default_root_dir=runs/test"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    said = "data: training on tiny [train] (16 rows), validating on tiny [validation] (64 rows)"
    assert (done.stdout + done.stderr).count(said) == 1, done.stderr[-3000:]


def test_the_embedded_validation_prompts_are_held_out():
    """The embedded default's validation pairs ask about things in other words than the training pairs, so no
    validation prompt is a training prompt and val/* measures pairs the policy never trained on."""
    from lit_align.data.sources import load_rows

    train = set(load_rows("tiny", "train")["prompt"])
    validation = load_rows("tiny", "validation")["prompt"]
    assert len(validation) == 64 and not train & set(validation)

"""The reward stage: keyed on the content of the pairs it trains on, defaults a pretrained backbone survives, and a
cosine-decayed rate."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch
from conftest import fit_args

import lit_align.reward_stage as reward_stage
from lit_align.cli import build_cli
from lit_align.data import PromptDataModule
from lit_align.fingerprints import datamodule_digest
from lit_align.reward_stage import FINGERPRINT_FILE, RewardStage

ASSETS = Path(reward_stage.__file__).resolve().parent / "assets" / "data"


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _fit(train: Path, val: Path):
    return build_cli(fit_args(
        "pdistill.yaml", f"--data.path={train}", f"--data.val_path={val}", "--data.val_split=null",
        "--data.batch_size=4", "--model.sampling.max_new_tokens=4", "--model.reward_stage.epochs=1",
        "--trainer.limit_val_batches=0", steps=1))


def test_an_edited_data_file_retrains_the_reward_model_and_says_why(run_dir, monkeypatch):
    """Every label flipped in the same file: the saved model was trained on the opposite preferences, so it must
    be retrained (with a line saying the data changed); the same rows under another path are the same data."""
    rows = [json.loads(line) for line in (ASSETS / "tiny_preferences_train.jsonl").read_text().splitlines()[:16]]
    val_rows = [json.loads(line) for line in (ASSETS / "tiny_preferences_val.jsonl").read_text().splitlines()[:8]]
    train, val = run_dir / "pairs.jsonl", run_dir / "val.jsonl"
    _write_rows(train, rows)
    _write_rows(val, val_rows)
    messages = []
    monkeypatch.setattr(reward_stage, "rank_zero_info", messages.append)

    _fit(train, val)
    weights = run_dir / "runs/test/reward_model/model.safetensors"
    stamp = weights.stat().st_mtime_ns

    _write_rows(train, [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} for row in rows])
    messages.clear()
    flipped = _fit(train, val)
    assert weights.stat().st_mtime_ns != stamp  # a new model, trained on the flipped labels
    retrain = [m for m in messages if m.startswith("reward stage: retraining:")]
    assert len(retrain) == 1 and retrain[0].startswith(
        "reward stage: retraining: the data changed (train pairs: 16 -> 16 rows, content ")
    assert "val pairs" not in retrain[0] and "settings changed" not in retrain[0]  # only what did change
    record = json.loads((weights.parent / FINGERPRINT_FILE).read_text())
    assert record["content"] == datamodule_digest(flipped.datamodule)

    moved = run_dir / "moved.jsonl"
    train.rename(moved)
    stamp = weights.stat().st_mtime_ns
    messages.clear()
    _fit(moved, val)
    assert weights.stat().st_mtime_ns == stamp and not any("retraining" in m for m in messages)


def test_a_changed_setting_is_named():
    saved = {"stage": {"epochs": 1, "seed": 0}, "backbone": "tiny", "data": {"max_length": 64},
             "content": {"train": "a" * 64, "train_rows": 16}}
    wanted = {**saved, "stage": {"epochs": 1, "seed": 1}, "data": {"max_length": 48}}
    assert reward_stage._why_retrain(saved, wanted) == "settings changed: data.max_length, stage.seed"


def test_defaults_follow_the_paper_and_the_rate_decays_on_a_cosine(run_dir, monkeypatch):
    """PAPER 2b: lr 3e-6 with cosine decay for 1 epoch; the rate of each update is read off the optimizer."""
    stage = RewardStage()
    assert (stage.epochs, stage.learning_rate, stage.lr_schedule) == (1, 3e-6, "cosine")

    datamodule = PromptDataModule(path="tiny", limit_rows=16, batch_size=4, max_length=64, max_prompt_length=32,
                                  tokenizer="tiny")
    datamodule.setup("fit")
    trainer = SimpleNamespace(datamodule=datamodule, logger=None,
                              strategy=SimpleNamespace(root_device=torch.device("cpu")))
    objective = SimpleNamespace(policy=SimpleNamespace(model_name="tiny"))
    rates = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    stage.train(objective, trainer, run_dir / "reward", stage.fingerprint(objective, datamodule))
    updates = 16 // 4
    expected = [3e-6 * 0.5 * (1 + math.cos(math.pi * i / updates)) for i in range(updates)]
    assert len(rates) == updates
    assert all(math.isclose(r, e, rel_tol=1e-9, abs_tol=1e-15) for r, e in zip(rates, expected)), rates


def test_a_write_that_fails_halfway_leaves_the_previous_model_and_its_record(run_dir, monkeypatch):
    """The data changed and the new reward model's write fails after the weights (a kill, a full disk): the old
    weights and the old record stay together, so the next run retrains instead of reusing new weights under the
    old record, or a record without weights."""
    import pytest

    from lit_align.reward_model import RewardScorer

    rows = [json.loads(line) for line in (ASSETS / "tiny_preferences_train.jsonl").read_text().splitlines()[:16]]
    train, val = run_dir / "pairs.jsonl", run_dir / "val.jsonl"
    _write_rows(train, rows)
    _write_rows(val, rows[:4])
    _fit(train, val)
    folder = run_dir / "runs/test/reward_model"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    _write_rows(train, [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} for row in rows])
    real_save = RewardScorer.save_pretrained

    def save_then_fail(self, directory, state_dict=None):
        real_save(self, directory, state_dict)
        raise OSError("killed while writing")

    monkeypatch.setattr(RewardScorer, "save_pretrained", save_then_fail)
    with pytest.raises(OSError, match="killed while writing"):
        _fit(train, val)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

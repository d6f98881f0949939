"""The reward stage: keyed on the content of the pairs it trains on, defaults a pretrained backbone survives, a
cosine-decayed rate, and a nested one-device Lightning fit that leaves the outer run as it was and gives every rank
the same reward model."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from support.cli import fit_args

import lit_align.objectives.onpolicy.reward_stage as reward_stage
from lit_align.cli.app import build_cli
from lit_align.data import PromptDataModule
from lit_align.runs.fingerprints import datamodule_digest
from lit_align.objectives.onpolicy.reward_stage import FINGERPRINT_FILE, RewardStage

ASSETS = Path(reward_stage.__file__).resolve().parents[2] / "assets" / "data"


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _fit(train: Path, val: Path):
    return build_cli(fit_args(
        "pdistill.yaml", f"--data.path={train}", f"--data.val_path={val}", "--data.val_split=null",
        "--data.batch_size=4", "--model.sampling.max_new_tokens=4", "--model.reward_stage.epochs=1",
        "--trainer.limit_val_batches=0", "--checkpoint.other_run=replace", steps=1))  # re-runs: same folder


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


def _outer_run(rows: int = 16):
    """A set-up data module with what the stage reads of the outer Trainer and objective."""
    datamodule = PromptDataModule(path="tiny", limit_rows=rows, batch_size=4, max_length=64, max_prompt_length=32,
                                  tokenizer="tiny")
    datamodule.setup("fit")
    trainer = SimpleNamespace(datamodule=datamodule, logger=None, is_global_zero=True, world_size=1,
                              strategy=SimpleNamespace(root_device=torch.device("cpu")))
    return datamodule, trainer, SimpleNamespace(policy=SimpleNamespace(model_name="tiny"))


def test_a_changed_setting_is_named():
    saved = {"stage": {"epochs": 1, "seed": 0}, "backbone": "tiny", "data": {"max_length": 64},
             "content": {"train": "a" * 64, "train_rows": 16}}
    wanted = {**saved, "stage": {"epochs": 1, "seed": 1}, "data": {"max_length": 48}}
    assert reward_stage._why_retrain(saved, wanted) == "settings changed: data.max_length, stage.seed"


def test_defaults_follow_the_paper_and_the_rate_decays_on_a_cosine(run_dir, monkeypatch):
    """PAPER 2b: lr 3e-6 with cosine decay for 1 epoch; the rate of each update is read off the optimizer."""
    stage = RewardStage()
    assert (stage.epochs, stage.learning_rate, stage.lr_schedule) == (1, 3e-6, "cosine")

    datamodule, trainer, objective = _outer_run()
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
    from lit_align.rewards.model import RewardScorer

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


def test_a_nested_one_device_lightning_fit_that_leaves_the_outer_run_as_it_was(run_dir, monkeypatch):
    """The stage fits and validates ``RewardModeling`` with a Lightning Trainer of its own (one device, no strategy,
    logger or checkpoints); the saved accuracy is that of the saved scorer on the validation pairs; the outer run's
    random state and seed are untouched and Lightning's lines about the nested fit are not shown; the same seed
    trains the same weights."""
    import logging
    import os

    import lightning as L
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from lit_align.rewards.model import load_reward_model

    datamodule = PromptDataModule(path="tiny", limit_rows=16, val_split="validation", batch_size=4, max_length=64,
                                  max_prompt_length=32, tokenizer="tiny")
    datamodule.setup("fit")
    _, trainer, objective = _outer_run()
    trainer.datamodule = datamodule
    calls = []
    for name in ("fit", "validate"):
        real = getattr(L.Trainer, name)
        monkeypatch.setattr(L.Trainer, name, lambda self, *a, _real=real, _name=name, **k: (
            calls.append((_name, self)), _real(self, *a, **k))[1])
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("lightning.pytorch").addHandler(handler)
    torch.manual_seed(123)
    rng, seed_env = torch.get_rng_state(), os.environ.get("PL_GLOBAL_SEED")
    stage = RewardStage(learning_rate=1e-3, seed=3)
    try:
        stage.train(objective, trainer, run_dir / "a", stage.fingerprint(objective, datamodule))
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)

    assert [name for name, _ in calls] == ["fit", "validate"] and calls[0][1] is calls[1][1]
    nested = calls[0][1]
    assert isinstance(nested.strategy, SingleDeviceStrategy) and nested.num_devices == 1
    assert nested.logger is None and nested.checkpoint_callback is None and nested.max_epochs == stage.epochs
    assert torch.equal(torch.get_rng_state(), rng) and os.environ.get("PL_GLOBAL_SEED") == seed_env
    assert any(line.startswith("reward stage: epoch 1/1 train loss") for line in lines), lines
    assert not any(line.startswith("`Trainer.fit` stopped") for line in lines), lines

    scorer = load_reward_model(str(run_dir / "a"))
    val = datamodule.examples("val")
    assert val is datamodule.val_examples and val
    batch = datamodule.collator()(val)
    with torch.no_grad():
        rewards = scorer(batch["input_ids"], batch["attention_mask"])
    right = (rewards[: len(val)] > rewards[len(val):]).float().mean().item()
    record = json.loads((run_dir / "a" / FINGERPRINT_FILE).read_text())
    assert record["val_accuracy"] == pytest.approx(right, abs=1e-6)

    stage.train(objective, trainer, run_dir / "b", stage.fingerprint(objective, datamodule))
    again = load_reward_model(str(run_dir / "b")).state_dict()
    trained = scorer.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in trained.items())
    assert not torch.equal(trained["model.score.weight"], load_reward_model("tiny").state_dict()["model.score.weight"])


RANK_REWARD_CALLBACK = '''
import lightning as L
import torch


class SaveRankRewardModel(L.Callback):
    """Each rank writes the reward model it holds when training starts."""

    def on_train_start(self, trainer, pl_module):
        state = {k: v.detach().cpu() for k, v in pl_module.reward_model.state_dict().items()}
        torch.save(state, f"reward_rank{trainer.global_rank}.pt")
'''


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_every_rank_ends_with_the_reward_model_rank_zero_trained(run_dir, strategy):
    """Two processes: both fit the reward model in step (no deadlock in the objective's cross-rank means), rank 0
    saves it, and then both hold exactly the weights saved in ``<run>/reward_model``."""
    from support.launch import FSDP2, launch

    from lit_align.rewards.model import load_reward_model

    (run_dir / "rank_reward.py").write_text(RANK_REWARD_CALLBACK)  # importable: the launch runs in run_dir
    distributed = FSDP2 if strategy == "fsdp2" else ["--trainer.strategy=ddp", "--trainer.devices=2"]
    callback = json.dumps({"class_path": "rank_reward.SaveRankRewardModel"})
    root = str(run_dir / "run")
    args = fit_args("pdistill.yaml", *distributed, "--data.limit_rows=16", "--data.batch_size=4",
                    "--model.sampling.max_new_tokens=4", "--model.reward_stage.epochs=1",
                    "--trainer.limit_val_batches=0", f"--trainer.callbacks+={callback}", f"--trainer.default_root_dir={root}", steps=1)
    launch(args, timeout=300)
    ranks = [torch.load(run_dir / f"reward_rank{rank}.pt") for rank in (0, 1)]
    saved = load_reward_model(str(Path(root) / "reward_model")).state_dict()
    assert ranks[0].keys() == ranks[1].keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(ranks[0][key], value) and torch.equal(ranks[1][key], value), key


def test_default_batch_is_the_global_batch_whatever_the_number_of_processes():
    """Every rank fits the same pairs, so a per-process default would train another reward model on two processes
    (batch 4 each) than on one (batch 8): the default is the global batch."""
    from types import SimpleNamespace

    from lit_align.objectives.onpolicy.reward_stage import RewardStage

    datamodule = SimpleNamespace(hparams=SimpleNamespace(batch_size=4))
    assert RewardStage().pairs_per_update(SimpleNamespace(world_size=2), datamodule) == 8
    assert RewardStage().pairs_per_update(SimpleNamespace(world_size=1), SimpleNamespace(
        hparams=SimpleNamespace(batch_size=8))) == 8
    assert RewardStage(batch_size=3).pairs_per_update(SimpleNamespace(world_size=2), datamodule) == 3

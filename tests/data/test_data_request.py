"""The DataModule is told what the objective reads (``connect`` with a ``DataRequest``), never reaches for it."""

import ast
from pathlib import Path

import pytest

from lit_align.data import Column, DataError, PreferenceDataModule, PromptDataModule
from lit_align.data.base import DataRequest

DATA_PACKAGE = Path(__file__).resolve().parents[2] / "lit_align" / "data"
SIZES = {"path": "tiny", "limit_rows": 8, "batch_size": 4, "max_length": 64, "max_prompt_length": 32}


class TrainerWithoutObjective:
    """What a DataModule may ask of its Trainer (world size, rank, progress); the objective is not for it to see."""

    world_size, global_rank = 1, 0

    @property
    def lightning_module(self):
        raise AssertionError("the data module reached for the objective")


def test_told_by_hand_it_works_without_a_trainer(tokenizer):
    dm = PreferenceDataModule(**SIZES)  # no tokenizer setting: the request's
    dm.connect(DataRequest(tokenizer, {"weight": Column(float, default=1.0)}))
    dm.setup("fit")
    assert dm.trainer is None and dm.tokenizer is tokenizer
    batch = next(iter(dm.train_dataloader()))
    assert batch["weight"].tolist() == [1.0] * 4 and batch["input_ids"].shape[0] == 8


def test_attached_to_a_trainer_it_still_reads_only_what_it_was_told(tokenizer):
    dm = PromptDataModule(**SIZES)
    dm.trainer = TrainerWithoutObjective()
    dm.connect(DataRequest(tokenizer, {"weight": Column(float, default=2.0)}))
    dm.setup("fit")
    assert {ex.values["weight"] for ex in dm.train_examples} == {2.0}
    assert len(next(iter(dm.train_dataloader()))["index"]) == 4


def test_untold_it_refuses_in_one_line_naming_the_call():
    with pytest.raises(DataError) as err:
        PreferenceDataModule(**SIZES).setup("fit")
    message = str(err.value)
    assert "\n" not in message and "datamodule.connect(objective.data_request())" in message
    assert message.startswith("PreferenceDataModule was not told what the objective reads")


def test_told_again_otherwise_it_encodes_again(tokenizer):
    dm = PreferenceDataModule(**SIZES)
    dm.connect(DataRequest(tokenizer))
    dm.setup("fit")
    first = dm.train_examples
    dm.connect(DataRequest(tokenizer))  # the same request: the examples stay
    dm.setup("fit")
    assert dm.train_examples is first
    dm.connect(DataRequest(tokenizer, {"weight": Column(float, default=1.0)}))
    dm.setup("fit")
    assert dm.train_examples is not first and dm.train_examples[0].values == {"weight": 1.0}


def test_no_module_of_the_data_package_reads_the_trainers_objective():
    reaching = [f"{path.name}:{node.lineno}" for path in sorted(DATA_PACKAGE.glob("*.py"))
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Attribute) and node.attr == "lightning_module"]
    assert reaching == []

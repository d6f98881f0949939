"""Every entry point tells the DataModule what the objective reads, in one place (the objective, as a Trainer
attaches it): the CLI and plain Python alike; no module of lit_align/data asks the Trainer for its objective."""

import os
import sys

import lightning as L
import pytest

from lit_align.cli.app import build_cli
from lit_align.data import SFTDataModule
from lit_align.data.base import TextDataModule
from lit_align.objectives import KTO, SFT
from support.cli import fit_args

DATA_PACKAGE = f"{os.sep}lit_align{os.sep}data{os.sep}"


@pytest.fixture
def told(monkeypatch):
    """The requests data modules are told, and the places of lit_align/data that asked a Trainer for its objective."""
    requests, reaching = [], []
    connect = TextDataModule.connect

    def recording(self, request):
        requests.append(request)
        connect(self, request)

    monkeypatch.setattr(TextDataModule, "connect", recording)
    objective_of = L.Trainer.lightning_module.fget

    def guarded(trainer):
        caller = sys._getframe(1).f_code
        if DATA_PACKAGE in caller.co_filename:
            reaching.append(f"{caller.co_filename}:{caller.co_name}")
        return objective_of(trainer)

    monkeypatch.setattr(L.Trainer, "lightning_module", property(guarded))
    return requests, reaching


def test_the_cli_tells_the_data_module_what_the_objective_reads(run_dir, told):
    requests, reaching = told
    cli = build_cli(fit_args("kto.yaml", "--data.limit_rows=8", "--data.batch_size=4", steps=1))
    assert requests and all(r.tokenizer is cli.model.tokenizer for r in requests)
    assert requests[-1].columns == KTO.data_columns == {"label": bool}
    assert cli.datamodule.train_examples[0].values.keys() == {"label"}
    assert reaching == []


def test_plain_python_validate_tells_it_too(run_dir, told):
    requests, reaching = told
    objective = SFT()
    data = SFTDataModule(path="tiny", val_split="validation", batch_size=4, max_length=64, max_prompt_length=32)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=1)
    trainer.validate(objective, datamodule=data, verbose=False)
    assert [r.tokenizer for r in requests] == [objective.tokenizer] and data.tokenizer is objective.tokenizer
    assert data.val_examples and reaching == []

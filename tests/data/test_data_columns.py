"""Columns an objective declares (a label, a score, a weight): typed in the batch, renamed, validated row by row,
covered by the data digest; and the unpaired (labelled) data module."""

import hashlib
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lit_align.data import (
    Column, DataError, OracleDataModule, PreferenceDataModule, PromptDataModule, RowEncoder,
    UnpairedPreferenceDataModule,
)
from lit_align.data.base import DataRequest
from lit_align.data.collate import CompletionCollator, PromptCollator
from lit_align.data.columns import convert, merge_columns, normalise_columns
from lit_align.data.formats import Example
from lit_align.data.sources import load_rows
from lit_align.runs.fingerprints import datamodule_digest, examples_digest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "unpaired.jsonl"
PAIRS = [
    {"prompt": "What is a cat like?", "chosen": "A cat is calm.", "rejected": "A cat is loud.", "label": True,
     "score": 0.5, "count": 3},
    {"prompt": "Describe the sea.", "chosen": "The sea is wide.", "rejected": "No.", "label": False,
     "score": 2, "count": 1},
    {"prompt": "Say a word.", "chosen": "Hello.", "rejected": "Bye.", "label": True, "score": -1.25, "count": 0},
]
SIZES = {"max_length": 64, "max_prompt_length": 32}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _setup(cls, path, columns_to_read=None, **kwargs):
    dm = cls(path=str(path), tokenizer="tiny", batch_size=2, **SIZES, **kwargs)
    if columns_to_read:
        dm.require_columns(columns_to_read)
    dm.setup("fit")
    return dm


# -- declarations and conversion ---------------------------------------------------------------------------------


def test_shorthand_normalises_and_bad_declarations_are_refused():
    columns = normalise_columns({"label": bool, "weight": Column(float, default=1)})
    assert columns["label"] == Column(bool) and columns["label"].required
    assert columns["weight"].default == 1.0 and isinstance(columns["weight"].default, float)
    with pytest.raises(TypeError, match="bool, int, float"):
        normalise_columns({"label": str})
    with pytest.raises(ValueError, match="'index' cannot be a data column"):
        normalise_columns({"index": int})
    with pytest.raises(TypeError, match="default 1.5 must be an integer"):
        Column(int, default=1.5)
    with pytest.raises(ValueError, match="declared twice"):
        merge_columns({"label": bool}, {"label": int})
    assert merge_columns({"label": bool}, {"label": Column(bool, doc="same")}) == {"label": Column(bool)}


@pytest.mark.parametrize("dtype, raw, value", [
    (bool, True, True), (bool, False, False), (bool, 1, True), (bool, 0, False), (bool, 1.0, True),
    (bool, "true", True), (bool, "False", False), (bool, " 1 ", True),
    (int, 3, 3), (int, -2.0, -2), (int, "4", 4), (int, np.int64(5), 5),
    (float, 1, 1.0), (float, 0.25, 0.25), (float, "-0.5", -0.5),
])
def test_values_convert_to_the_declared_type(dtype, raw, value):
    out = convert(dtype, raw)
    assert out == value and type(out) is dtype


@pytest.mark.parametrize("dtype, raw", [
    (bool, 2), (bool, 0.5), (bool, "maybe"), (bool, [True]),
    (int, True), (int, 3.5), (int, "x"), (int, math.nan), (int, math.inf),
    (float, True), (float, math.nan), (float, -math.inf), (float, "abc"), (float, "nan"),
])
def test_values_that_are_not_of_the_type_are_refused(dtype, raw):
    with pytest.raises(ValueError, match="must be"):
        convert(dtype, raw)


# -- through the encoder, the collator and the data module -------------------------------------------------------


class Recorder(L.LightningModule):
    """The smallest module a Trainer fits: it keeps the batches it is given (no objective: the data is told by hand)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.batches = []

    def training_step(self, batch, batch_idx):
        self.batches.append(batch)
        return self.layer(torch.ones(1)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_requested_columns_reach_the_batch_typed(tmp_path):
    path = _write_jsonl(tmp_path / "scored.jsonl", PAIRS)
    dm = PreferenceDataModule(path=str(path), tokenizer="tiny", batch_size=3, **SIZES)
    dm.connect(DataRequest(columns={"label": bool, "score": Column(float), "count": int,
                                    "weight": Column(float, default=1.0)}))
    objective = Recorder()
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(objective, datamodule=dm)
    (batch,) = objective.batches
    assert batch["input_ids"].shape[0] == 6  # still pairs: chosen block, rejected block
    assert batch["label"].dtype == torch.bool and batch["count"].dtype == torch.long
    assert batch["score"].dtype == batch["weight"].dtype == torch.float32
    for b, row in enumerate(batch["index"].tolist()):  # the loader shuffles: match by row
        assert batch["label"][b].item() is PAIRS[row]["label"]
        assert batch["score"][b].item() == PAIRS[row]["score"] and batch["count"][b].item() == PAIRS[row]["count"]
    assert batch["weight"].tolist() == [1.0, 1.0, 1.0]  # absent from the data: the default


def test_no_declared_columns_no_values_and_no_extra_batch_keys(tmp_path):
    dm = _setup(PreferenceDataModule, _write_jsonl(tmp_path / "scored.jsonl", PAIRS))
    assert all(ex.values == {} for ex in dm.train_examples)
    batch = dm.collator()(dm.train_examples)
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask", "prompt_ids", "prompt_mask", "index",
                          "prompt_messages"}


def test_renames_map_the_users_column_onto_the_declared_one(tmp_path):
    rows = [{"question": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "thumbs_up": r["label"]}
            for r in PAIRS]
    dm = _setup(PreferenceDataModule, _write_jsonl(tmp_path / "renamed.jsonl", rows), {"label": bool},
                columns={"question": "prompt", "thumbs_up": "label"})
    assert [ex.values for ex in dm.train_examples] == [{"label": r["label"]} for r in PAIRS]


def test_prompt_batches_carry_the_values_too(tmp_path):
    dm = _setup(PromptDataModule, _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hi.", "w": 2.0},
                                                                             {"prompt": "Ho.", "w": 0.5}]),
                {"w": float})
    batch = PromptCollator(dm.tokenizer.pad_token_id)(dm.train_examples)
    assert batch["w"].tolist() == [2.0, 0.5] and batch["w"].dtype == torch.float32


def test_collator_one_value_per_example_whatever_the_completions():
    examples = [Example(0, [1, 5], [[7], [8, 9]], {"label": True, "n": 2}), Example(1, [1, 6], [[7], [9]],
                                                                                    {"label": False, "n": 0})]
    batch = CompletionCollator(pad_token_id=0)(examples)
    assert batch["input_ids"].shape[0] == 4 and batch["label"].tolist() == [True, False]
    assert batch["n"].dtype == torch.long and batch["n"].tolist() == [2, 0]


@pytest.mark.parametrize("row, message", [
    ({"label": "maybe"}, "bad.jsonl, row 1: field 'label' must be true or false (or 1 or 0), got 'maybe'"),
    ({"label": None}, "bad.jsonl, row 1: field 'label' is null"),
    ({"label": True, "score": "high"}, "bad.jsonl, row 1: field 'score' must be a number, got 'high'"),
])
def test_bad_values_name_file_row_and_field(tmp_path, row, message):
    rows = [PAIRS[0], {**PAIRS[1], **row}, PAIRS[2]]
    with pytest.raises(DataError) as err:
        _setup(PreferenceDataModule, _write_jsonl(tmp_path / "bad.jsonl", rows), {"label": bool, "score": float})
    assert message in str(err.value)


def test_a_required_column_no_row_holds_is_one_error_naming_field_and_mapping(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "label"} for r in PAIRS]
    path = _write_jsonl(tmp_path / "nolabel.jsonl", rows)
    for invalid_rows in ("error", "skip"):  # skipping would drop every row and hide why
        with pytest.raises(DataError, match=r"nolabel\.jsonl: no row has the column 'label' after the column mapping "
                                            r"\{'question': 'prompt'\}, a bool the objective reads \(good or bad\).*"
                                            r"Map your column onto it with `columns`"):
            _setup(PreferenceDataModule, path, {"label": Column(bool, doc="good or bad")},
                   columns={"question": "prompt"}, invalid_rows=invalid_rows)


def test_a_defaulted_column_no_row_holds_is_said_once(tmp_path, caplog):
    rows = [{k: v for k, v in r.items() if k != "label"} for r in PAIRS]
    with caplog.at_level("INFO"):
        dm = _setup(PreferenceDataModule, _write_jsonl(tmp_path / "nolabel.jsonl", rows),
                    {"weight": Column(float, default=1.0)})
    assert {ex.values["weight"] for ex in dm.train_examples} == {1.0}
    said = [r.getMessage() for r in caplog.records if "no row has the column 'weight'" in r.getMessage()]
    assert len(said) == 1 and "its default 1.0 is used for every row" in said[0]


def test_skip_drops_and_counts_rows_with_bad_values(tmp_path, capsys):
    rows = [PAIRS[0], {**PAIRS[1], "label": 7}, {**PAIRS[2], "label": None}]
    dm = _setup(PreferenceDataModule, _write_jsonl(tmp_path / "mixed.jsonl", rows), {"label": bool},
                invalid_rows="skip")
    assert [ex.index for ex in dm.train_examples] == [0]
    assert "kept 1 of 3 rows" in capsys.readouterr().out


def test_csv_text_and_integer_cells_convert(tmp_path, tokenizer):
    # label 1/0 reads as integers; the odd cell "yes" makes `flag` a text column; the empty `count` cell makes it
    # a float column
    path = tmp_path / "rows.csv"
    path.write_text("prompt,chosen,rejected,label,flag,count\n"
                    "Hi,Yes.,No.,1,true,3\n"
                    "Ho,Sure.,Nope.,0,FALSE,\n"
                    "Ha,Fine.,Bad.,1,yes,5\n")
    dm = _setup(PreferenceDataModule, path, {"label": bool, "flag": bool, "count": Column(int, default=0)},
                invalid_rows="skip")
    assert [ex.values for ex in dm.train_examples] == [{"label": True, "flag": True, "count": 3},
                                                       {"label": False, "flag": False, "count": 0}]
    batch = dm.collator()(dm.train_examples)
    assert batch["label"].dtype == batch["flag"].dtype == torch.bool and batch["count"].tolist() == [3, 0]
    with pytest.raises(DataError, match=r"rows\.csv, row 2: field 'flag' must be true or false"):
        RowEncoder(tokenizer, ("chosen", "rejected"), data_columns={"flag": bool}).encode_all(
            load_rows(str(path)), str(path))


def test_setup_again_reads_columns_asked_for_after_the_first_setup(tmp_path):
    dm = _setup(PreferenceDataModule, _write_jsonl(tmp_path / "scored.jsonl", PAIRS))
    dm.require_columns({"count": int})
    dm.setup("fit")
    assert [ex.values["count"] for ex in dm.train_examples] == [3, 1, 0]


# -- digests -------------------------------------------------------------------------------------------------------


def _digest_without_values(examples):
    """The digest as it was before columns existed (what recorded manifests and caches hold)."""
    digest = hashlib.sha256()
    for ex in examples:
        parts = [ex.prompt_ids, *ex.completion_ids]
        digest.update(np.asarray([ex.index, len(parts), *(len(p) for p in parts)], dtype=np.int64).tobytes())
        for part in parts:
            digest.update(np.asarray(part, dtype=np.int64).tobytes())
    return digest.hexdigest()


def test_digest_covers_the_values_and_is_unchanged_without_them(tmp_path):
    plain = [Example(0, [1, 5], [[7], [8]]), Example(1, [1, 6], [[9], [8]])]
    assert examples_digest(plain) == _digest_without_values(plain)
    labelled = [Example(0, [1, 5], [[7], [8]], {"label": True}), Example(1, [1, 6], [[9], [8]], {"label": True})]
    flipped = [labelled[0], Example(1, [1, 6], [[9], [8]], {"label": False})]
    as_int = [Example(0, [1, 5], [[7], [8]], {"label": 1}), Example(1, [1, 6], [[9], [8]], {"label": 1})]
    assert len({examples_digest(e) for e in (plain, labelled, flipped, as_int)}) == 4

    path = _write_jsonl(tmp_path / "scored.jsonl", PAIRS)
    before = datamodule_digest(_setup(PreferenceDataModule, path, {"label": bool}))
    _write_jsonl(path, [PAIRS[0], {**PAIRS[1], "label": True}, PAIRS[2]])
    assert datamodule_digest(_setup(PreferenceDataModule, path, {"label": bool}))["train"] != before["train"]


# -- unpaired data -------------------------------------------------------------------------------------------------


def test_unpaired_fixture_one_completion_per_example_labelled():
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    dm = _setup(UnpairedPreferenceDataModule, FIXTURE)
    assert [ex.index for ex in dm.train_examples] == list(range(len(rows)))
    batch = dm.collator()(dm.train_examples)
    assert batch["input_ids"].shape[0] == len(rows)  # batch rows = examples
    assert batch["label"].dtype == torch.bool and batch["label"].tolist() == [r["label"] for r in rows]
    assert 0 < sum(r["label"] for r in rows) < len(rows)
    tokenizer = dm.tokenizer
    for ex, row in zip(dm.train_examples, rows):
        (ids,) = ex.completion_ids
        assert ids == tokenizer(row["completion"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def test_unpaired_conversational_rows(tmp_path):
    def say(role, text):
        return {"role": role, "content": text}

    with_prompt = [{"prompt": [say("user", "hi")], "completion": [say("assistant", "hello")], "label": True},
                   {"prompt": [say("user", "hi")], "completion": [say("assistant", "go away")], "label": False}]
    # without a prompt column the messages before the reply are the prompt
    whole = [{"completion": [say("user", "hi"), say("assistant", "hello")], "label": True},
             {"completion": [say("user", "hi"), say("assistant", "go away")], "label": False}]
    split = _setup(UnpairedPreferenceDataModule, _write_jsonl(tmp_path / "chat.jsonl", with_prompt))
    joined = _setup(UnpairedPreferenceDataModule, _write_jsonl(tmp_path / "whole.jsonl", whole))
    for dm in (split, joined):
        assert [ex.values for ex in dm.train_examples] == [{"label": True}, {"label": False}]
    assert [(ex.prompt_ids, ex.completion_ids) for ex in split.train_examples] == [
        (ex.prompt_ids, ex.completion_ids) for ex in joined.train_examples]
    assert split.train_examples[0].completion_ids != split.train_examples[1].completion_ids


def test_a_declared_label_column_is_no_sign_of_another_layout(tmp_path):
    # the tldr-sft-carper preset is marked by a `label` column; unpaired data has one of its own
    rows = [{"prompt": "Hi.", "completion": "Yo.", "label": True}, {"prompt": "Ho.", "completion": 3, "label": True}]
    with pytest.raises(DataError) as err:
        _setup(UnpairedPreferenceDataModule, _write_jsonl(tmp_path / "bad.jsonl", rows))
    assert "row 1: field 'completion' must be a string" in str(err.value) and "preset" not in str(err.value)


def test_unpaired_from_pairs_two_examples_per_pair_with_unique_indices():
    pairs = _setup(PreferenceDataModule, "tiny")
    dm = _setup(UnpairedPreferenceDataModule, "tiny")
    assert len(dm.train_examples) == 2 * len(pairs.train_examples)
    assert len({ex.index for ex in dm.train_examples}) == len(dm.train_examples)
    for pair, chosen, rejected in zip(pairs.train_examples, dm.train_examples[::2], dm.train_examples[1::2]):
        assert (chosen.index, rejected.index) == (2 * pair.index, 2 * pair.index + 1)
        assert chosen.completion_ids == pair.completion_ids[:1] and rejected.completion_ids == pair.completion_ids[1:]
        assert (chosen.values, rejected.values) == ({"label": True}, {"label": False})
    batch = dm.collator()(dm.train_examples[:4])
    assert batch["input_ids"].shape[0] == 4 and batch["label"].tolist() == [True, False, True, False]


def test_unpaired_label_renamed_and_required(tmp_path):
    rows = [{"prompt": "Hi.", "response": "Hello.", "thumbs_up": 1}, {"prompt": "Ho.", "response": "No.",
                                                                       "thumbs_up": 0}]
    dm = _setup(UnpairedPreferenceDataModule, _write_jsonl(tmp_path / "fb.jsonl", rows),
                columns={"response": "completion", "thumbs_up": "label"})
    assert [ex.values for ex in dm.train_examples] == [{"label": True}, {"label": False}]
    with pytest.raises(DataError, match=r"nolabel\.jsonl: no row has the column 'label'"):
        _setup(UnpairedPreferenceDataModule, _write_jsonl(tmp_path / "nolabel.jsonl", [{"prompt": "Hi.",
                                                                                         "completion": "Yo."}]))
    with pytest.raises(DataError, match="needs `prompt`, `completion` and `label` columns, or `chosen`/`rejected`"):
        _setup(UnpairedPreferenceDataModule, _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hi."}]))


def test_unpaired_label_must_be_bool_for_the_objective_too(tmp_path):
    dm = UnpairedPreferenceDataModule(path=str(FIXTURE), tokenizer="tiny", **SIZES)
    dm.require_columns({"label": float})
    with pytest.raises(ValueError, match="declares 'label' as float"):
        dm.setup("fit")


# -- the oracle task has no columns: defaults only ---------------------------------------------------------------


def test_oracle_pairs_take_defaults_and_refuse_required_columns():
    dm = OracleDataModule(num_pairs=4, val_pairs=0, tokenizer="tiny")
    dm.require_columns({"weight": Column(float, default=1.0)})
    dm.setup("fit")
    assert dm.collator()(dm.train_examples)["weight"].tolist() == [1.0] * 4
    dm.require_columns({"label": bool})
    with pytest.raises(DataError, match="oracle task's pairs have no column 'label'"):
        dm.setup("fit")


def test_pairs_equal_only_after_truncation_are_dropped_and_counted(tmp_path, capsys):
    # a long shared start: the completions differ only past max_length, so after the cut the pair compares nothing
    shared = "The same long opening words are written here again and again " * 4
    rows = [{"prompt": "Hi", "chosen": shared + "yes", "rejected": shared + "no"},
            {"prompt": "Ho", "chosen": "Short.", "rejected": "Other."}]
    dm = _setup(PreferenceDataModule, _write_jsonl(tmp_path / "long.jsonl", rows))
    assert [ex.index for ex in dm.train_examples] == [1]
    assert "dropped 1 with chosen == rejected (1 of them only after truncation" in capsys.readouterr().out

"""Data sources: every local kind loads (JSON lines, a JSON array, .arrow, save_to_disk folders, hub-layout
directories), and the errors that Arrow would give without a cause name the line and the cause instead."""

from __future__ import annotations

import json

import datasets
import pytest

from lit_align.data import DataError, PreferenceDataModule, SFTDataModule
from lit_align.data.sources import holds_one_split, load_rows

ROWS = [
    {"prompt": "What is a cat like?", "chosen": "A cat is calm.", "rejected": "A cat is loud."},
    {"prompt": "Describe the sea.", "chosen": "The sea is wide and kind.", "rejected": "No."},
    {"prompt": "Say a word.", "chosen": "Hello.", "rejected": "Bye."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Loud."},
]


def _lines(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _texts(rows) -> list[tuple]:
    return [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]


def _module(path, **kwargs):
    dm = PreferenceDataModule(path=str(path), tokenizer="tiny", batch_size=2, max_length=64, max_prompt_length=32,
                              **kwargs)
    dm.setup("fit")
    return dm


# -- errors that name the line and the cause ------------------------------------------------------------------------


def test_duplicate_key_names_key_and_line(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text(_lines(ROWS[:2]) + '{"prompt": "a", "chosen": "b", "chosen": "x", "rejected": "c"}\n')
    with pytest.raises(DataError, match=r"dup\.jsonl, line 3: duplicate key 'chosen'"):
        load_rows(str(path))


def test_duplicate_key_in_a_json_array_names_the_line_of_the_object(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n'
                    '  {"prompt": "a", "rejected": "b", "rejected": "c", "chosen": "d"}\n]\n')
    with pytest.raises(DataError, match=r"dup\.json, line 3: duplicate key 'rejected'"):
        load_rows(str(path))


def test_lone_surrogate_names_field_and_line(tmp_path):
    path = tmp_path / "sur.jsonl"
    bad = '{"prompt": "a", "chosen": [{"role": "assistant", "content": "x\\ud800y"}], "rejected": "c"}\n'
    path.write_text(_lines(ROWS) + bad)
    with pytest.raises(DataError) as err:
        load_rows(str(path))
    message = str(err.value)
    assert "sur.jsonl, line 5" in message and "lone surrogate \\ud800" in message
    assert "'chosen[0].content'" in message


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_pretty_printed_json_is_called_pretty_printed_not_truncated(tmp_path, suffix):
    path = tmp_path / f"pretty.{suffix}"
    path.write_text(json.dumps(ROWS[0], indent=2) + "\n" + json.dumps(ROWS[1], indent=2) + "\n")
    with pytest.raises(DataError) as err:
        load_rows(str(path))
    message = str(err.value)
    assert "this looks like a pretty-printed JSON file: use one object per line (JSON lines) or a single JSON " \
           "array" in message
    assert "truncated" not in message


def test_a_truncated_file_is_still_called_truncated(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text(_lines(ROWS[:2]) + '{"prompt": "a", "cho')
    with pytest.raises(DataError, match=r"cut\.jsonl, line 3: not valid JSON .*truncated"):
        load_rows(str(path))


# -- every local kind loads, with the same rows ---------------------------------------------------------------------


def test_json_array_loads_like_json_lines(tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps(ROWS, indent=2))  # one array, spread over many lines
    (tmp_path / "rows.jsonl").write_text(_lines(ROWS))
    assert _texts(load_rows(str(tmp_path / "rows.json"))) == _texts(load_rows(str(tmp_path / "rows.jsonl"))) \
        == _texts(ROWS)


def test_arrow_file_and_save_to_disk_dataset_load(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    assert holds_one_split(str(tmp_path / "saved")) and holds_one_split(str(arrow))
    assert _texts(load_rows(str(tmp_path / "saved"))) == _texts(ROWS)
    assert _texts(load_rows(str(arrow))) == _texts(ROWS)
    dm = _module(arrow)
    assert len(dm.train_examples) == len(ROWS)


def test_save_to_disk_dataset_dict_resolves_named_splits(tmp_path):
    saved = tmp_path / "saved_dict"
    datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS[:3]),
                         validation=datasets.Dataset.from_list(ROWS[3:])).save_to_disk(str(saved))
    assert not holds_one_split(str(saved))
    assert _texts(load_rows(str(saved), "validation")) == _texts(ROWS[3:])
    with pytest.raises(DataError, match=r"has no split 'test'; it has \['train', 'validation'\]"):
        load_rows(str(saved), "test")
    dm = _module(saved, val_split="validation")
    assert (len(dm.train_examples), len(dm.val_examples)) == (3, 1)


def test_hub_layout_directories_resolve_named_splits(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "train.jsonl").write_text(_lines(ROWS[:3]))
    (flat / "validation.jsonl").write_text(_lines(ROWS[3:]))
    assert _texts(load_rows(str(flat), "validation")) == _texts(ROWS[3:])
    with pytest.raises(DataError, match=r"data directory .*flat has no split 'test'; it has \['train', 'validation'\]"):
        load_rows(str(flat), "test")
    nested = tmp_path / "nested"
    (nested / "data").mkdir(parents=True)
    datasets.Dataset.from_list(ROWS[:2]).to_parquet(str(nested / "data" / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(ROWS[2:]).to_parquet(str(nested / "data" / "test-00000-of-00001.parquet"))
    assert _texts(load_rows(str(nested), "test")) == _texts(ROWS[2:])
    assert _texts(load_rows(str(nested), "train")) == _texts(ROWS[:2])


def test_json_checks_run_on_the_files_of_a_directory(tmp_path):
    duplicate = '{"prompt": "a", "prompt": "b", "chosen": "c", "rejected": "d"}\n'
    (tmp_path / "train.jsonl").write_text(_lines(ROWS) + duplicate)
    with pytest.raises(DataError, match=r"train\.jsonl, line 5: duplicate key 'prompt'"):
        load_rows(str(tmp_path), "train")


def test_an_unknown_file_kind_is_named(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("hello\n")
    with pytest.raises(DataError, match=r"rows\.txt: unknown kind of data file"):
        load_rows(str(path))


# -- column mappings and layouts ------------------------------------------------------------------------------------


def test_a_mapping_onto_an_existing_column_is_refused(tmp_path):
    rows = [{"question": f"q{i}", **r} for i, r in enumerate(ROWS)]  # has `question` AND `prompt`
    path = tmp_path / "both.jsonl"
    path.write_text(_lines(rows))
    with pytest.raises(DataError) as err:
        _module(path, columns={"question": "prompt"})
    message = str(err.value)
    assert "both.jsonl" in message and "'question'" in message and "'prompt'" in message
    assert "already has a 'prompt' column" in message
    # a swap is not a collision: each target comes from one column
    dm = _module(path, columns={"question": "prompt", "prompt": "original_prompt"})
    assert dm.tokenizer.decode(dm.train_examples[0].prompt_ids, skip_special_tokens=True) == "q0"


def test_two_columns_mapped_onto_one_are_refused(tmp_path):
    rows = [{"q": r["prompt"], "question": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in ROWS]
    path = tmp_path / "two.jsonl"
    path.write_text(_lines(rows))
    with pytest.raises(DataError, match=r"two\.jsonl: columns maps 'q' and 'question' all to 'prompt'"):
        _module(path, columns={"q": "prompt", "question": "prompt"})


def _ultrafeedback_rows() -> list[dict]:
    rows = []
    for i, r in enumerate(ROWS):
        user = {"role": "user", "content": r["prompt"]}
        chosen = [user, {"role": "assistant", "content": r["chosen"]}]
        rows.append({"prompt": r["prompt"], "prompt_id": f"{i:064d}", "chosen": chosen,
                     "rejected": [user, {"role": "assistant", "content": r["rejected"]}], "messages": chosen,
                     "score_chosen": 8.0, "score_rejected": 3.0})
    return rows


@pytest.mark.parametrize("module_cls", [PreferenceDataModule, SFTDataModule])
def test_ultrafeedback_layout_without_its_preset_names_the_preset(tmp_path, module_cls):
    path = tmp_path / "uf.jsonl"
    path.write_text(_lines(_ultrafeedback_rows()))
    dm = module_cls(path=str(path), tokenizer="tiny", max_length=128, max_prompt_length=64)
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "uf.jsonl, row 0" in message
    assert "this looks like the ultrafeedback layout: set preset: ultrafeedback" in message
    ok = module_cls(path=str(path), tokenizer="tiny", max_length=128, max_prompt_length=64, preset="ultrafeedback")
    ok.setup("fit")
    assert len(ok.train_examples) == len(ROWS)

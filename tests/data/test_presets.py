"""Data presets: each resolves to its hub id and split names, and its loading code reads a fixture in the hub's
exact schema (tests/fixtures/presets/*.jsonl, a few hand-written rows each) offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_align.data import PreferenceDataModule, PromptDataModule, SFTDataModule
from lit_align.data import presets as presets_module
from lit_align.data.presets import PRESETS, find_preset, load_source
from lit_align.data.sources import DataError, load_rows

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "presets"

# preset -> (fixture, hub id, the hub's name of the canonical "validation" split, data module)
CASES = {
    "tldr-comparisons": (
        "tldr_comparisons.jsonl", "CarperAI/openai_summarize_comparisons", "valid1", PreferenceDataModule
    ),
    "tldr-preference": ("tldr_preference.jsonl", "trl-lib/tldr-preference", "validation", PreferenceDataModule),
    "tldr-sft-carper": ("tldr_sft_carper.jsonl", "CarperAI/openai_summarize_tldr", "valid", SFTDataModule),
    "tldr-sft": ("tldr_sft.jsonl", "trl-lib/tldr", "validation", SFTDataModule),
    "hh-rlhf": ("hh_rlhf.jsonl", "Anthropic/hh-rlhf", "test", PreferenceDataModule),
    "ultrafeedback": (
        "ultrafeedback.jsonl", "HuggingFaceH4/ultrafeedback_binarized", "test_prefs", PreferenceDataModule
    ),
    "ultrafeedback-sft": ("ultrafeedback.jsonl", "HuggingFaceH4/ultrafeedback_binarized", "test_sft", SFTDataModule),
}


def _rows(fixture: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / fixture).read_text().splitlines() if line.strip()]


def _setup(module_cls, preset: str, **kwargs):
    fixture = CASES[preset][0]
    dm = module_cls(path=str(FIXTURES / fixture), preset=preset, tokenizer="tiny", max_length=1024,
                    max_prompt_length=800, batch_size=2, **kwargs)
    dm.setup("fit")
    return dm


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def test_every_preset_has_a_case():
    assert set(CASES) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_preset_resolves_to_hub_id_and_split_names(name, monkeypatch):
    """Naming the preset (short name or hub id) reads the hub data set with the data set's own split names; the
    fixture stands in for the download."""
    fixture, hub_id, validation, _ = CASES[name]
    calls = []

    def fake_load_rows(path, split, config_name=None):
        calls.append((path, split))
        return load_rows(str(FIXTURES / fixture))

    monkeypatch.setattr(presets_module, "load_rows", fake_load_rows)
    rows = load_source(name, "validation")
    assert calls == [(hub_id, validation)]
    assert find_preset(name).hub_id == hub_id
    # after normalisation the rows carry canonical columns only where the preset renames them
    for old, new in PRESETS[name].columns.items():
        assert new in rows.column_names and old not in rows.column_names
    for dropped in PRESETS[name].drop:
        assert dropped not in rows.column_names


@pytest.mark.parametrize("name", sorted(CASES))
def test_preset_fixture_loads_in_its_data_module(name):
    fixture, _, _, module_cls = CASES[name]
    dm = _setup(module_cls, name)
    assert len(dm.train_examples) == len(_rows(fixture))
    expected_completions = 1 if module_cls is SFTDataModule else 2
    assert all(len(ex.completion_ids) == expected_completions for ex in dm.train_examples)
    eos = dm.tokenizer.eos_token_id
    assert all(c[-1] == eos for ex in dm.train_examples for c in ex.completion_ids)


def test_tldr_comparisons_split_prompt_and_summaries():
    dm = _setup(PreferenceDataModule, "tldr-comparisons")
    row = _rows("tldr_comparisons.jsonl")[1]
    ex = dm.train_examples[1]
    assert _decode(dm.tokenizer, ex.prompt_ids) == row["prompt"]
    assert _decode(dm.tokenizer, ex.completion_ids[0]) == row["chosen"]
    assert _decode(dm.tokenizer, ex.completion_ids[1]) == row["rejected"]


def test_tldr_sft_label_becomes_the_response():
    dm = _setup(SFTDataModule, "tldr-sft-carper")
    row = _rows("tldr_sft_carper.jsonl")[0]
    ex = dm.train_examples[0]
    assert _decode(dm.tokenizer, ex.prompt_ids).endswith("TL;DR:")
    assert _decode(dm.tokenizer, ex.completion_ids[0]) == row["label"]


def test_hh_rlhf_prompt_is_the_shared_transcript_through_the_last_assistant_turn():
    """Row 1 is multi-turn: the prompt keeps the first assistant reply and the second human turn, and ends with
    the last '\\n\\nAssistant:'; the completions are the two final replies only."""
    dm = _setup(PreferenceDataModule, "hh-rlhf")
    ex = dm.train_examples[1]
    prompt = _decode(dm.tokenizer, ex.prompt_ids)
    assert prompt.startswith("\n\nHuman: Can you help me write a birthday message")
    assert "Assistant: Of course. What does he enjoy?" in prompt
    assert prompt.endswith("He loves fishing and bad puns.\n\nAssistant:")
    expected = " Happy birthday, Dad! Hope your day is fin-tastic and the fish are biting."
    assert _decode(dm.tokenizer, ex.completion_ids[0]) == expected
    assert _decode(dm.tokenizer, ex.completion_ids[1]) == " Happy birthday."


def test_ultrafeedback_prompt_is_the_user_turn_rendered_with_the_chat_template():
    dm = _setup(PreferenceDataModule, "ultrafeedback")
    tok = dm.tokenizer
    ex = dm.train_examples[0]
    user = [{"role": "user", "content": "How many legs does a spider have?"}]
    expected_prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ex.prompt_ids, skip_special_tokens=False).endswith(expected_prompt.removeprefix(tok.bos_token))
    assert "Spiders have eight legs" in _decode(tok, ex.completion_ids[0])
    assert "Six." in _decode(tok, ex.completion_ids[1])
    # the assistant reply is not part of the prompt (the string `prompt` column was dropped, not used)
    assert "eight legs" not in _decode(tok, ex.prompt_ids)


def test_ultrafeedback_sft_uses_the_messages_column():
    dm = _setup(SFTDataModule, "ultrafeedback-sft")
    assert "Spiders have eight legs" in _decode(dm.tokenizer, dm.train_examples[0].completion_ids[0])


def test_prompt_module_keeps_references_from_a_preset():
    dm = _setup(PromptDataModule, "tldr-sft")
    assert all(len(ex.completion_ids) == 1 for ex in dm.train_examples)


def test_a_preset_named_by_path_sets_the_format():
    """hh-rlhf rows have no prompt column: with the preset the format is 'implicit' even though ``format`` is auto."""
    dm = PreferenceDataModule(path="hh-rlhf", tokenizer="tiny")
    assert dm.encoder(("chosen", "rejected")).fmt == "implicit"
    assert PreferenceDataModule(path="tiny", tokenizer="tiny").encoder(("chosen", "rejected")).fmt == "auto"


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(DataError, match="hh-rlhf"):
        find_preset("x.jsonl", "hh-rhlf")


def test_preset_none_reads_the_path_as_is(monkeypatch):
    calls = []
    monkeypatch.setattr(presets_module, "load_rows", lambda path, split, name=None: calls.append((path, split)))
    load_source("Anthropic/hh-rlhf", "train", preset="none")
    assert calls == [("Anthropic/hh-rlhf", "train")]

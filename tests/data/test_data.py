"""Preference data: sources, formats, column mapping, token-space boundaries, truncation, errors, loading."""

import copy
from collections import Counter
import json

import datasets
import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from lit_align.data import DataError, PreferenceDataModule, RowEncoder
from lit_align.data.collate import PromptCollator
from lit_align.data.loader import ResumableSampler
from lit_align.data.sources import load_rows

ROWS = [
    {"prompt": "What is a cat like?", "chosen": "A cat is calm.", "rejected": "A cat is loud."},
    {"prompt": "Describe the sea.", "chosen": "The sea is wide and kind.", "rejected": "No."},
    {"prompt": "Say a word.", "chosen": "Hello.", "rejected": "Bye."},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _module(path, **kwargs):
    kwargs.setdefault("max_length", 64)
    kwargs.setdefault("max_prompt_length", 32)
    dm = PreferenceDataModule(path=str(path), tokenizer="tiny", batch_size=2, **kwargs)
    dm.setup("fit")
    return dm


def _encode(tokenizer, rows, **kwargs):
    encoder = RowEncoder(tokenizer, ("chosen", "rejected"), **kwargs)
    return encoder.encode_all(rows, "rows.jsonl")


def test_standard_rows_token_boundary_bos_once_and_eos(tokenizer):
    (ex, *_), stats = _encode(tokenizer, ROWS)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert ex.prompt_ids == [bos] + tokenizer(ROWS[0]["prompt"], add_special_tokens=False).input_ids
    assert ex.prompt_ids.count(bos) == 1
    for ids, text in zip(ex.completion_ids, (ROWS[0]["chosen"], ROWS[0]["rejected"])):
        assert ids == tokenizer(text, add_special_tokens=False).input_ids + [eos]
        assert ids.count(eos) == 1
    assert stats.rows == stats.kept == 3


def test_collated_prompt_is_a_prefix_and_the_mask_starts_at_the_boundary(tokenizer):
    examples, _ = _encode(tokenizer, ROWS)
    batch = PreferenceDataModule(tokenizer="tiny").collator()(examples)
    n = len(examples)
    for k in range(2):  # block k holds completion k of every example
        for i, ex in enumerate(examples):
            row = k * n + i
            ids = batch["input_ids"][row]
            full = ex.prompt_ids + ex.completion_ids[k]
            assert ids[: len(full)].tolist() == full
            assert ids[: len(ex.prompt_ids)].tolist() == ex.prompt_ids
            mask = batch["completion_mask"][row]
            assert mask[: len(ex.prompt_ids)].sum() == 0 and mask.sum() == len(ex.completion_ids[k])
            assert mask[len(ex.prompt_ids)] == 1
    # dynamic padding: the batch is exactly as wide as its longest sequence
    longest = max(len(ex.prompt_ids) + len(c) for ex in examples for c in ex.completion_ids)
    assert batch["input_ids"].shape == (2 * n, longest)
    shorter = PreferenceDataModule(tokenizer="tiny").collator()(examples[2:])
    assert shorter["input_ids"].shape[1] == max(len(examples[2].prompt_ids) + len(c)
                                                for c in examples[2].completion_ids) < longest
    # prompts for generation are left-padded
    assert batch["prompt_mask"][:, -1].all()


def test_no_double_bos_when_the_text_or_template_already_has_one(tokenizer):
    bos = tokenizer.bos_token_id
    rows = [{"prompt": "<s>Hello there.", "chosen": "Yes.", "rejected": "No."}]
    (ex,), _ = _encode(tokenizer, rows)
    assert ex.prompt_ids[:2] != [bos, bos] and ex.prompt_ids.count(bos) == 1
    with_bos = copy.deepcopy(tokenizer)
    with_bos.chat_template = "<s>" + tokenizer.chat_template
    chat = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "assistant", "content": "no"}]}]
    (ex,), _ = _encode(with_bos, chat)
    assert ex.prompt_ids[0] == bos and ex.prompt_ids.count(bos) == 1


def test_conversational_tiny_chat_rendered_with_the_chat_template(tokenizer):
    rows = load_rows("tiny-chat")
    examples, _ = _encode(tokenizer, rows.select(range(4)))
    row, ex = rows[0], examples[0]
    prompt_text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert ex.prompt_ids == [tokenizer.bos_token_id] + tokenizer(prompt_text, add_special_tokens=False).input_ids
    chosen_text = tokenizer.decode(ex.completion_ids[0])
    assert chosen_text == row["chosen"][0]["content"] + tokenizer.eos_token  # the template's EOS, not a second one
    assert ex.completion_ids[0].count(tokenizer.eos_token_id) == 1
    dm = PreferenceDataModule(path="tiny-chat", tokenizer="tiny", max_length=96, max_prompt_length=64)
    dm.setup("fit")
    assert len(dm.train_examples) == 64


def test_prompt_messages_reach_the_batch(tokenizer):
    """A conversation's prompt keeps its messages, whole even when its ids are cut (what a reward model of another
    tokenizer renders with its own template); a plain-text prompt has none. Every collator lists them per example."""
    chat_rows = load_rows("tiny-chat").select(range(2))
    chat, _ = _encode(tokenizer, chat_rows, max_length=24, max_prompt_length=4)
    plain, _ = _encode(tokenizer, ROWS[:2])
    prompts = [row["prompt"] for row in chat_rows]
    assert [ex.prompt_messages for ex in chat] == prompts and all(len(ex.prompt_ids) == 4 for ex in chat)
    for collate in (PreferenceDataModule(tokenizer="tiny").collator(), PromptCollator(tokenizer.pad_token_id)):
        assert collate(chat)["prompt_messages"] == prompts
        assert collate(plain)["prompt_messages"] == [None, None]
    batch = move_data_to_device(collate(chat), torch.device("cpu"))  # Lightning's transfer leaves the list be
    assert batch["prompt_messages"] == prompts


def test_implicit_prompt_hh_transcripts(tmp_path, tokenizer):
    rows = [
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Name a fruit.\n\nAssistant: An apple.",
         "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Name a fruit.\n\nAssistant: A rock."},
        {"chosen": "\n\nHuman: Count.\n\nAssistant: One two.", "rejected": "\n\nHuman: Count.\n\nAssistant: No."},
    ]
    dm = _module(_write_jsonl(tmp_path / "hh.jsonl", rows), max_length=160, max_prompt_length=128)
    ex = dm.train_examples[0]
    prompt = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Name a fruit.\n\nAssistant:"
    assert tokenizer.decode(ex.prompt_ids[1:]) == prompt
    assert tokenizer.decode(ex.completion_ids[0]) == " An apple.</s>"
    assert tokenizer.decode(ex.completion_ids[1]) == " A rock.</s>"


def test_column_mapping(tmp_path, tokenizer):
    rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in ROWS]
    path = _write_jsonl(tmp_path / "mapped.jsonl", rows)
    dm = _module(path, columns={"question": "prompt", "good": "chosen", "bad": "rejected"})
    assert tokenizer.decode(dm.train_examples[1].prompt_ids[1:]) == ROWS[1]["prompt"]
    assert tokenizer.decode(dm.train_examples[1].completion_ids[1]) == ROWS[1]["rejected"] + "</s>"
    with pytest.raises(DataError, match=r"mapped\.jsonl, row 0: missing field 'chosen'"):
        _module(path)


@pytest.mark.parametrize("suffix", ["json", "jsonl", "parquet", "csv"])
def test_local_files_through_datasets(tmp_path, suffix):
    data = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"pairs.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(ROWS))  # one JSON array
    elif suffix == "jsonl":
        data.to_json(str(path))
    elif suffix == "parquet":
        data.to_parquet(str(path))
    else:
        data.to_csv(str(path), index=False)
    dm = _module(path)
    reference = _module(_write_jsonl(tmp_path / "ref.jsonl", ROWS))
    assert [(e.prompt_ids, e.completion_ids) for e in dm.train_examples] == \
           [(e.prompt_ids, e.completion_ids) for e in reference.train_examples]


def test_truncation_never_empties_a_completion(tokenizer):
    long = " ".join(["word"] * 40)
    rows = [{"prompt": long, "chosen": "yes " + long, "rejected": "no " + long}, ROWS[0]]  # differ after the cut
    examples, stats = _encode(tokenizer, rows, max_length=12, max_prompt_length=8)
    bos = tokenizer.bos_token_id
    for ex in examples:
        assert len(ex.prompt_ids) <= 8 and ex.prompt_ids[0] == bos and ex.prompt_ids.count(bos) == 1
        for ids in ex.completion_ids:
            assert 1 <= len(ids) and len(ex.prompt_ids) + len(ids) <= 12
    full_prompt = tokenizer(long, add_special_tokens=False).input_ids
    assert examples[0].prompt_ids[1:] == full_prompt[-7:]  # a long prompt keeps its end
    assert stats.truncated_prompts >= 1 and stats.truncated_completions >= 2
    with pytest.raises(ValueError, match="max_prompt_length"):
        RowEncoder(tokenizer, ("chosen", "rejected"), max_length=16, max_prompt_length=16)


def test_identical_pairs_dropped_and_counted(tokenizer):
    rows = ROWS + [{"prompt": "Same?", "chosen": "Same.", "rejected": "Same."}]
    examples, stats = _encode(tokenizer, rows)
    assert len(examples) == 3 and stats.identical_pairs == 1 and stats.kept == 3 and stats.rows == 4
    assert [e.index for e in examples] == [0, 1, 2]


@pytest.mark.parametrize(
    "bad, field, message",
    [
        ({"prompt": "Hi", "chosen": "Yes."}, "rejected", "field 'rejected' is null"),  # jsonl: absent key = null
        ({"prompt": "Hi", "chosen": "Yes.", "rejected": "   "}, "rejected", "field 'rejected' is empty"),
        ({"prompt": "Hi", "chosen": "Yes.", "rejected": None}, "rejected", "field 'rejected' is null"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, bad, field, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], ROWS[1], bad])
    with pytest.raises(DataError) as err:
        _module(path)
    text = str(err.value)
    assert str(path) in text and "row 2" in text and repr(field) in text and message in text


def test_missing_column_named(tmp_path):
    rows = [{"prompt": "Hi", "chosen": "Yes.", "other": "No."}, {"prompt": "Ho", "chosen": "Yes.", "other": "No."}]
    with pytest.raises(DataError, match=r"cols\.jsonl, row 0: missing field 'rejected'.*Map other column names"):
        _module(_write_jsonl(tmp_path / "cols.jsonl", rows))


def test_non_string_field_named(tmp_path):
    rows = [{"prompt": "Hi", "chosen": "Yes.", "rejected": 3}, {"prompt": "Ho", "chosen": "Yes.", "rejected": 4}]
    path = _write_jsonl(tmp_path / "ints.jsonl", rows)
    with pytest.raises(DataError, match=r"ints\.jsonl, row 0: field 'rejected' must be a string, got int"):
        _module(path)


def test_invalid_rows_skip_counts(tmp_path, capsys):
    rows = [ROWS[0], {"prompt": "Hi", "chosen": "Yes.", "rejected": ""}, ROWS[1], {"prompt": "A", "chosen": "B"}]
    dm = _module(_write_jsonl(tmp_path / "mixed.jsonl", rows), invalid_rows="skip")
    assert [e.index for e in dm.train_examples] == [0, 2]
    out = capsys.readouterr().out
    assert "kept 2 of 4 rows" in out and "2 invalid" in out


def test_invalid_rows_skip_with_a_bad_first_row(tmp_path):
    rows = [{"prompt": "A", "chosen": None, "rejected": "B"}, ROWS[0], ROWS[1]]
    dm = _module(_write_jsonl(tmp_path / "first_bad.jsonl", rows), invalid_rows="skip")
    assert [e.index for e in dm.train_examples] == [1, 2]


def test_unreadable_jsonl_line_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{\"prompt\": \"x\", \n")
    with pytest.raises(DataError, match=r"broken\.jsonl, line 2: not valid JSON"):
        _module(path)


def test_validation_split_and_fraction():
    dm = PreferenceDataModule(path="tiny", val_split="validation", tokenizer="tiny")
    dm.setup("fit")
    assert len(dm.train_examples) == 512 and len(dm.val_examples) == 64
    held = PreferenceDataModule(path="tiny", val_fraction=0.25, seed=3, tokenizer="tiny")
    held.setup("fit")
    assert len(held.val_examples) == 128 and len(held.train_examples) == 384
    def content(examples):
        return Counter(tuple(e.prompt_ids + e.completion_ids[0] + e.completion_ids[1]) for e in examples)

    full = PreferenceDataModule(path="tiny", tokenizer="tiny")
    full.setup("fit")
    assert content(held.train_examples) + content(held.val_examples) == content(full.train_examples)
    again = PreferenceDataModule(path="tiny", val_fraction=0.25, seed=3, tokenizer="tiny")
    again.setup("fit")
    assert [e.prompt_ids for e in again.val_examples] == [e.prompt_ids for e in held.val_examples]
    assert len(held.val_dataloader()) == 128 // 8
    assert PreferenceDataModule(path="tiny", tokenizer="tiny").val_dataloader() == []


def test_seeded_shuffling_is_reproducible():
    def first_batches(seed, epoch=0):
        dm = PreferenceDataModule(path="tiny", tokenizer="tiny", seed=seed, batch_size=4, limit_rows=40)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [b["index"].tolist() for b, _ in zip(loader, range(3))]

    assert first_batches(0) == first_batches(0)
    assert first_batches(0) != first_batches(1)
    assert first_batches(0, epoch=1) != first_batches(0)  # a new order every epoch
    assert sorted(sum(first_batches(0), [])) != list(range(12))  # shuffled, not in file order
    assert sorted(ResumableSampler(list(range(10)), 1, 0, True, 0)) == list(range(10))

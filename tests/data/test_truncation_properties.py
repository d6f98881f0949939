"""Truncation invariants, as properties over seeded random rows and length settings.

For every setting the encoder accepts: every sequence fits ``max_length``, every prompt ``max_prompt_length``,
every completion keeps at least one token, BOS starts the prompt exactly once where the tokenizer or template uses
one, a truncated prompt is the untruncated one's BOS and last tokens, a truncated completion the untruncated one's
first tokens, an untruncated row is the template's own rendering, and prompt sharing packs every batch. Settings
no truncation can honour are refused when the encoder is built, in one line.
"""

from __future__ import annotations

import random

import pytest

from support.chat_templates import BY_NAME, build_tokenizer, family_tokenizer
from lit_align.data import RowEncoder
from lit_align.data.collate import CompletionCollator
from lit_align.data.formats import LengthSettingError
from lit_align.models.packing import pack_shared_prompt

WORDS = "the cat sat on a warm mat while rain fell over quiet hills and rivers ran to the grey sea".split()
UNLIMITED = {"max_length": 100_000, "max_prompt_length": 99_999}


def _text(rng: random.Random, most: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, most))).capitalize() + "."


def _rows(rng: random.Random, conversational: bool, n: int = 12) -> list[dict]:
    rows = []
    for _ in range(n):
        prompt, chosen = _text(rng, 30), _text(rng, 25)
        rejected = chosen if rng.random() < 0.1 else _text(rng, 25)  # a few identical pairs
        if conversational:
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        else:
            rows.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return rows


def _settings(rng: random.Random, count: int) -> list[tuple[int, int]]:
    fixed = [(2, 1), (3, 1), (3, 2), (4, 2)]  # the smallest settings first
    randoms = []
    for _ in range(count):
        max_length = rng.randint(2, 48)
        randoms.append((max_length, rng.randint(1, max_length - 1)))
    return fixed + randoms


def _tokenizers():
    """(id, tokenizer, conversational data, whether prompts start with BOS, BOS only from the template)."""
    plain_no_bos = build_tokenizer(BY_NAME["chatml"])  # standard rows, a tokenizer that adds no BOS
    plain_no_bos.chat_template = None
    return [
        ("standard-bos", family_tokenizer("zephyr"), False, True, False),
        ("standard-no-bos", plain_no_bos, False, False, False),
        ("chatml", family_tokenizer("chatml"), True, False, False),
        ("llama3", family_tokenizer("llama3"), True, True, False),
        # a Llama-2 template writing <s> with a tokenizer that adds none: the BOS comes from the template alone
        ("llama2-template-bos", build_tokenizer(BY_NAME["llama2"], adds_bos=False), True, True, True),
    ]


TOKENIZERS = _tokenizers()


@pytest.mark.parametrize("case", TOKENIZERS, ids=[t[0] for t in TOKENIZERS])
def test_truncation_invariants(case):
    name, tokenizer, conversational, uses_bos, template_bos = case
    rng = random.Random(f"truncation-{name}")
    bos = tokenizer.bos_token_id
    rows = _rows(rng, conversational)
    fmt = "conversational" if conversational else "standard"
    fields = ("chosen", "rejected")
    reference, _ = RowEncoder(tokenizer, fields, fmt, **UNLIMITED).encode_all(rows, "rows.jsonl")
    for ex, row in zip(reference, [rows[e.index] for e in reference]):
        _check_is_the_rendering(tokenizer, ex, row, conversational, uses_bos)
    collator = CompletionCollator(tokenizer.pad_token_id)
    for max_length, max_prompt_length in _settings(rng, 40):
        settings = f"{name}: max_length={max_length}, max_prompt_length={max_prompt_length}"
        if uses_bos and max_prompt_length == 1:
            with pytest.raises(LengthSettingError, match=r"max_prompt_length \(1\) leaves room only for the "):
                encoder = RowEncoder(tokenizer, fields, fmt, max_length=max_length, max_prompt_length=1)
                encoder.encode_all(rows, "rows.jsonl")  # a template's BOS is known once a row is rendered
            continue
        encoder = RowEncoder(tokenizer, fields, fmt, max_length=max_length, max_prompt_length=max_prompt_length)
        examples, stats = encoder.encode_all(rows, "rows.jsonl")
        # the same pairs dropped, and those whose completions differ only past the cut
        kept = {e.index for e in examples}
        assert kept <= {e.index for e in reference}, settings
        assert stats.identical_after_truncation == len(reference) - len(examples), settings
        cut_prompts = cut_completions = 0
        for ex, full in zip(examples, [e for e in reference if e.index in kept]):
            assert any(ids != ex.completion_ids[0] for ids in ex.completion_ids[1:]), settings
            assert 1 <= len(ex.prompt_ids) <= max_prompt_length, settings
            if uses_bos:
                assert ex.prompt_ids[0] == bos and (ex.prompt_ids + sum(ex.completion_ids, [])).count(bos) == 1
            if len(full.prompt_ids) <= max_prompt_length:
                assert ex.prompt_ids == full.prompt_ids, settings
            else:
                cut_prompts += 1
                head = full.prompt_ids[:1] if uses_bos else []
                keep = max_prompt_length - len(head)
                assert keep >= 1 and ex.prompt_ids == head + full.prompt_ids[-keep:], settings
            budget = max_length - len(ex.prompt_ids)
            for ids, whole in zip(ex.completion_ids, full.completion_ids):
                assert 1 <= len(ids) and len(ex.prompt_ids) + len(ids) <= max_length, settings
                assert ids == whole[:budget], settings
                cut_completions += len(whole) > budget
        assert (stats.truncated_prompts, stats.truncated_completions) == (cut_prompts, cut_completions), settings
        _check_prompt_sharing_packs(collator(examples), examples)


def _check_is_the_rendering(tokenizer, ex, row, conversational, uses_bos):
    """An untruncated row: prompt ids, then completion ids, are a prefix of the whole rendering's ids."""
    for field, completion in zip(("chosen", "rejected"), ex.completion_ids):
        if conversational:
            text = tokenizer.apply_chat_template(row["prompt"] + row[field], tokenize=False)
        else:
            text = row["prompt"] + row[field] + tokenizer.eos_token
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if uses_bos and ids[:1] != [tokenizer.bos_token_id]:
            ids = [tokenizer.bos_token_id] + ids
        assert ids[: len(ex.prompt_ids)] == ex.prompt_ids
        assert ids[: len(ex.prompt_ids) + len(completion)] == ex.prompt_ids + completion


def _check_prompt_sharing_packs(batch, examples):
    packed = pack_shared_prompt(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], 2)
    assert packed.labels.numel() == sum(len(c) for ex in examples for c in ex.completion_ids)


@pytest.mark.parametrize(
    "max_length, max_prompt_length, message",
    [
        (1, 1, "max_length (1) must be at least 2: one prompt token and one completion token"),
        (16, 0, "max_prompt_length (0) must be at least 1"),
        (16, 16, "max_prompt_length (16) must be smaller than max_length (16)"),
        (16, 1, "max_prompt_length (1) leaves room only for the tokenizer's BOS token '<s>', so no prompt text "
                "would reach the model; set max_prompt_length to 2 or more"),
    ],
)
def test_impossible_settings_refused_when_the_encoder_is_built(tokenizer, max_length, max_prompt_length, message):
    with pytest.raises(LengthSettingError) as err:
        RowEncoder(tokenizer, ("chosen", "rejected"), max_length=max_length, max_prompt_length=max_prompt_length)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_max_prompt_length_one_without_bos_keeps_the_last_prompt_token():
    """The smallest setting a tokenizer without BOS allows: one prompt token, one completion token."""
    tokenizer = family_tokenizer("chatml")
    rows = [{"prompt": [{"role": "user", "content": "Hi there"}], "chosen": [{"role": "assistant", "content": "Yes"}],
             "rejected": [{"role": "assistant", "content": "No"}]}]
    (full,), _ = RowEncoder(tokenizer, ("chosen", "rejected"), **UNLIMITED).encode_all(rows, "rows.jsonl")
    (ex,), stats = RowEncoder(tokenizer, ("chosen", "rejected"), max_length=2, max_prompt_length=1).encode_all(
        rows, "rows.jsonl")
    assert ex.prompt_ids == full.prompt_ids[-1:] and ex.completion_ids == [c[:1] for c in full.completion_ids]
    assert stats.truncated_prompts == 1 and stats.truncated_completions == 2

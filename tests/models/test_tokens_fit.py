"""A model and a tokenizer that belong together, checked in one line before the first forward."""

from __future__ import annotations

import json

import pytest
from support.cli import fit_args, run_main

from lit_align.data.formats import Example
from lit_align.models.loading import ModelLoadError, check_tokens_fit, load_causal_lm, load_tokenizer

ROWS = [{"prompt": "Say <|extra|> now.", "chosen": "A calm <|extra|>.", "rejected": "Ugly."}] * 4


def _with_added_tokens(directory, model: bool) -> str:
    """The embedded tokenizer with two added tokens (ids 474, 475), and with ``model`` the embedded model whose
    embedding table (474 rows) was not resized to it."""
    tokenizer = load_tokenizer("tiny")
    tokenizer.add_tokens(["<|extra|>", "<|more|>"])
    tokenizer.save_pretrained(directory)
    if model:
        load_causal_lm("tiny").save_pretrained(directory)
    return str(directory)


def _data(run_dir) -> str:
    path = run_dir / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return str(path)


def _fit(*extra):
    return run_main(fit_args("dpo.yaml", "--data.val_split=null", "--data.val_fraction=0", "--data.batch_size=2", "--export.enabled=false",
                             "--trainer.callbacks=[]", *extra, steps=1))


def test_the_check_reads_the_rows_only_when_the_tokenizer_outgrows_the_table(tmp_path):
    model, tokenizer = load_causal_lm("tiny"), load_tokenizer("tiny")
    check_tokens_fit(model, tokenizer, None, [object()])  # 474 entries, 474 rows: no row is read
    grown = load_tokenizer(_with_added_tokens(tmp_path, model=False))
    check_tokens_fit(model, grown, None, [Example(0, [5, 473], [[7], [8]])])  # the added tokens never occur
    with pytest.raises(ModelLoadError, match="token id 475, beyond the model's embedding table of 474 rows"):
        check_tokens_fit(model, grown, None, [Example(0, [5], [[7], [475]])])
    with pytest.raises(ModelLoadError, match="has another vocabulary"):
        check_tokens_fit(model, tokenizer, grown, [])


@pytest.mark.extended
def test_token_ids_beyond_the_embedding_table_stop_in_one_line(run_dir, capsys):
    """Before: a 160-line IndexError traceback at the first forward."""
    model = _with_added_tokens(run_dir / "model", model=True)
    code = _fit(f"--model.init_args.policy.init_args.model={model}", f"--data.path={_data(run_dir)}")
    err = capsys.readouterr().err
    assert code != 0
    assert "token id 474, beyond the model's embedding table of 474 rows" in err
    assert "Traceback" not in err and "IndexError" not in err


@pytest.mark.extended
def test_a_data_tokenizer_with_another_vocabulary_is_refused(run_dir, capsys):
    """Before: the rows were encoded with one vocabulary and trained on a model that reads another, exit 0."""
    other = _with_added_tokens(run_dir / "tokenizer", model=False)
    code = _fit(f"--data.tokenizer={other}", "--data.limit_rows=4")
    err = capsys.readouterr().err
    assert code != 0
    assert "data.tokenizer (476 entries) has another vocabulary than the model's tokenizer (474 entries" in err
    assert "Traceback" not in err

"""``lit-align predict``: sampled responses written as JSON lines, from the embedded default, an exported model and
a checkpoint, with the sampling settings of the config."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lit_align.generation.records import prediction_records, prompt_text
from lit_align.cli.app import build_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DPO = os.path.join(ROOT, "configs", "dpo.yaml")


def predict(*extra: str, config: str = DPO) -> list[dict]:
    args = [
        "predict", "--config", config, "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
        "--trainer.default_root_dir=runs/predict", "--trainer.limit_predict_batches=2",
        "--data.init_args.eval_batch_size=4", "--predictions.path=out/predictions.jsonl", *extra,
    ]
    build_cli(args)
    with open("out/predictions.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_predict_writes_one_line_per_response_with_the_sampling_settings(run_dir):
    rows = predict("--predictions.sampling.max_new_tokens=6", "--predictions.sampling.temperature=0.7",
                   "--predictions.sampling.top_p=0.9", "--predictions.num_samples=2")
    # 2 batches of 4 prompts (the validation split), 2 samples each, sorted by data row then sample
    assert [(r["index"], r["sample"]) for r in rows] == [(i, j) for i in range(8) for j in range(2)]
    val = [json.loads(line) for line in open(os.path.join(ROOT, "lit_align/assets/data/tiny_preferences_val.jsonl"))]
    for row in rows:
        assert row["prompt"] == val[row["index"]]["prompt"]
        assert row["reference"] == val[row["index"]]["chosen"]
        assert 1 <= row["length"] <= 6
        assert row["ended"] or row["length"] == 6  # without EOS a response runs to max_new_tokens
        assert row["sampling"] == {"max_new_tokens": 6, "min_new_tokens": 0, "temperature": 0.7, "top_p": 0.9,
                                   "top_k": 0}


def test_greedy_samples_of_one_prompt_are_identical(run_dir):
    rows = predict("--predictions.sampling.max_new_tokens=5", "--predictions.sampling.temperature=0",
                   "--predictions.num_samples=2")
    for first, second in zip(rows[::2], rows[1::2]):
        assert first["index"] == second["index"] and first["response"] == second["response"]


def test_predict_from_an_exported_model_matches_the_model_it_was_exported_from(run_dir):
    """The exported tiny policy, loaded by path, decodes greedily exactly like the embedded model it came from."""
    from lit_align.policy.export import export_policy
    from lit_align.policy.with_reference import PolicyWithReference

    export_policy(PolicyWithReference(reference="none"), "exported")
    settings = ("--predictions.sampling.max_new_tokens=6", "--predictions.sampling.temperature=0")
    embedded = predict(*settings)
    exported = predict(*settings, "--model.init_args.policy.init_args.model=exported")
    assert [r["response"] for r in exported] == [r["response"] for r in embedded]


def test_predict_from_a_checkpoint_uses_the_trained_weights(run_dir):
    from support.cli import fit_args

    build_cli(fit_args("dpo.yaml", "--model.init_args.learning_rate=0.05", "--export.enabled=false", steps=3))
    settings = ("--predictions.sampling.max_new_tokens=8", "--predictions.sampling.temperature=0")
    before = predict(*settings)
    after = predict(*settings, "--ckpt_path=runs/test/checkpoints/last.ckpt")
    assert [r["response"] for r in after] != [r["response"] for r in before]


def test_prompt_text_round_trips_to_the_same_ids(tokenizer):
    messages = [{"role": "user", "content": "Describe the rain."}]
    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                    add_special_tokens=True).input_ids
    assert tokenizer(prompt_text(ids, tokenizer), add_special_tokens=True).input_ids == ids


def test_prediction_records_cut_responses_at_eos(tokenizer):
    """A hand-built rollout: row 0 ends with EOS after 2 tokens, row 1 runs to the end without one."""
    from lit_align.generation.rollout import Rollout, SamplingConfig

    a, b, c = tokenizer("a b c", add_special_tokens=False).input_ids[:3]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    input_ids = torch.tensor([[pad, a, b, c, eos, pad], [a, b, c, a, b, c]])
    attention_mask = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    completion_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    rollout = Rollout(input_ids, attention_mask, completion_mask, 2, torch.tensor([True, False]), torch.tensor([0, 1]))
    prediction = {"rollout": rollout, "index": torch.tensor([7, 9]), "sample": torch.tensor([0, 0]),
                  "sampling": SamplingConfig(max_new_tokens=4), "batch": {"index": torch.tensor([7, 9])}}
    rows = prediction_records(prediction, tokenizer)
    assert [r["length"] for r in rows] == [3, 4]
    assert [r["ended"] for r in rows] == [True, False]
    assert rows[0]["response"] == tokenizer.decode([b, c]) and "reference" not in rows[0]
    assert [r["index"] for r in rows] == [7, 9]


@pytest.mark.parametrize("num_samples", [0])
def test_num_samples_must_be_positive(num_samples):
    from lit_align.callbacks import PredictionWriter

    with pytest.raises(ValueError, match="num_samples"):
        PredictionWriter(num_samples=num_samples)

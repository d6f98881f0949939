"""The Bradley-Terry reward model (PAPER 2b): its loss by hand, reading the reward, training, export and loading.

Hand-worked values of bradley_terry_loss = -ln s(R(a+) - R(a-)):
    R(a+) = 0.5, R(a-) = -1.5: difference 2, loss = ln(1 + e^-2) = ln(1.1353353) = 0.1269280
        d loss / d R(a+) = -s(-2) = -0.1192029 (and +0.1192029 for R(a-))
    R(a+) = R(a-): loss = ln 2 = 0.6931472
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from support.cli import fit_args
from lit_align.cli.app import build_cli
from lit_align.data import PreferenceDataModule
from lit_align.losses import bradley_terry_loss, last_token_index
from lit_align.models.loading import ModelLoadError
from lit_align.objectives import RewardModeling
from lit_align.rewards.model import CHECKPOINT_KEY, RewardScorer, build_reward_scorer, load_reward_model


def test_bradley_terry_hand_values_and_gradient():
    chosen = torch.tensor([0.5, 3.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-1.5, 3.0], dtype=torch.float64, requires_grad=True)
    out = bradley_terry_loss(chosen, rejected)
    torch.testing.assert_close(out.losses, torch.tensor([0.1269280, 0.6931472], dtype=torch.float64),
                               atol=1e-7, rtol=0)
    out.losses.sum().backward()
    assert chosen.grad[0].item() == pytest.approx(-0.1192029, abs=1e-7)
    assert rejected.grad[0].item() == pytest.approx(0.1192029, abs=1e-7)
    assert out.chosen_rewards[0].item() == 0.5 and not out.chosen_rewards.requires_grad


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 3]


def _pad(rows, width, pad, left):
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


def test_reward_read_at_last_real_token_whatever_the_padding(tokenizer):
    torch.manual_seed(0)
    scorer = build_reward_scorer("tiny")
    texts = ["A lamp is quiet and wise.", "No.", "A bridge is bad and it feels cold, very cold."]
    rows = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    alone = torch.stack([scorer(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows])[:, 0]
    width = max(map(len, rows)) + 3
    with torch.no_grad():
        right = scorer(*_pad(rows, width, tokenizer.pad_token_id, left=False))
        left = scorer(*_pad(rows, width, tokenizer.pad_token_id, left=True))
        # sampled layout: left-padded prompt, then a right-padded response
        prompts, responses = [r[:2] for r in rows], [r[2:] for r in rows]
        p_ids, p_mask = _pad(prompts, 3, tokenizer.pad_token_id, left=True)
        r_ids, r_mask = _pad(responses, width, tokenizer.pad_token_id, left=False)
        mixed = scorer(torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1))
    assert alone.dtype == torch.float32 and len(set(alone.tolist())) == 3
    for got in (right, left, mixed):
        torch.testing.assert_close(got, alone.detach(), atol=1e-5, rtol=1e-5)
    # the reward is that of the last token: dropping the EOS changes it
    no_eos = scorer(torch.tensor([rows[0][:-1]]), torch.ones(1, len(rows[0]) - 1, dtype=torch.long))
    assert not torch.allclose(no_eos, alone[:1], atol=1e-4)


def test_the_scorer_is_the_only_model_stored_whole_and_claims_no_reference():
    """The objective holds one scorer and no second copy; the scorer says nothing of a reference it does not have;
    a checkpoint keeps every weight of it and loads back strictly into a fresh objective."""
    module = RewardModeling()
    single = sum(p.numel() for p in build_reward_scorer("tiny").parameters())
    assert sum(p.numel() for p in module.parameters()) == single
    assert not any(hasattr(module.scorer, name)
                   for name in ("reference", "reference_mode", "has_live_reference", "lora_options"))
    module.on_train_batch_start({}, 0)  # no reference to tell about the update
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"].keys() == module.state_dict().keys()
    assert checkpoint[CHECKPOINT_KEY]["tokenizer"] == "tiny"
    fresh = RewardModeling(seed=1)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])  # strict
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in fresh.state_dict().items())


def _train_pairs(tokenizer_name="tiny", size=64):
    data = PreferenceDataModule(path="tiny", tokenizer=tokenizer_name, batch_size=size, max_length=64,
                                max_prompt_length=32)
    data.setup("fit")
    return data.train_dataloader()


@torch.no_grad()
def _accuracy(scorer, batches) -> float:
    right = total = 0
    for batch in batches:
        n = batch["index"].numel()
        rewards = scorer(batch["input_ids"], batch["attention_mask"])
        right += (rewards[:n] > rewards[n:]).sum().item()
        total += n
    return right / total


def test_fit_learns_pairs_exports_and_loads_back(run_dir):
    torch.manual_seed(0)
    untrained = _accuracy(build_reward_scorer("tiny").eval(), _train_pairs())
    cli = build_cli(fit_args("reward.yaml", steps=16))
    trained = cli.model.scorer.eval()
    accuracy = _accuracy(trained, _train_pairs())
    assert untrained < 0.7 and accuracy > 0.85, (untrained, accuracy)

    batch = next(iter(_train_pairs(size=8)))
    with torch.no_grad():
        want = trained(batch["input_ids"], batch["attention_mask"])
    hf_dir = os.path.join("runs", "test", "hf_model")
    hf = AutoModelForSequenceClassification.from_pretrained(hf_dir)
    assert hf.config.num_labels == 1 and os.path.isfile(os.path.join(hf_dir, "model.safetensors"))
    with torch.no_grad():  # right-padded rows with pad != EOS: transformers' own pooling finds the same token
        pooled = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(pooled, want, atol=1e-5, rtol=1e-5)
    for source in (hf_dir, os.path.join("runs", "test", "checkpoints", "last.ckpt")):
        loaded = load_reward_model(source)
        assert isinstance(loaded, RewardScorer) and not loaded.training
        assert not any(p.requires_grad for p in loaded.parameters())
        with torch.no_grad():
            torch.testing.assert_close(loaded(batch["input_ids"], batch["attention_mask"]), want, atol=1e-5, rtol=1e-5)


def test_freeze_backbone_trains_only_the_head(run_dir):
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in build_reward_scorer("tiny").state_dict().items()}
    cli = build_cli(fit_args("reward.yaml", "--model.freeze_backbone=true", steps=3))
    scorer = cli.model.scorer
    assert [n for n, p in scorer.named_parameters() if p.requires_grad] == ["model.score.weight"]
    after = scorer.state_dict()
    changed = {k for k in initial if not torch.equal(initial[k], after[k])}
    assert changed == {"model.score.weight"}


def test_missing_sources_are_named():
    with pytest.raises(FileNotFoundError, match="runs/nowhere/last.ckpt"):
        load_reward_model("runs/nowhere/last.ckpt")
    with pytest.raises(FileNotFoundError, match="./no/such/reward_model"):
        load_reward_model("./no/such/reward_model")
    with pytest.raises(ModelLoadError, match="someone/no-such-reward-model"):
        load_reward_model("someone/no-such-reward-model")  # offline in tests: a hub id that cannot be fetched


def test_predict_on_a_reward_model_is_one_line_not_a_traceback(run_dir, capsys):
    from support.cli import run_main

    args = ["predict", "--config", os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                                 "configs", "reward.yaml"),
            "--trainer.accelerator=cpu", "--trainer.default_root_dir=runs/test", "--trainer.limit_predict_batches=1"]
    assert run_main(args) == 2
    err = capsys.readouterr().err
    assert "RewardModeling trains a reward model, which scores text and generates none" in err
    assert "Traceback" not in err

"""SFT: prompt tokens are masked, the mean is token-weighted under accumulation, a fit lowers NLL and exports."""

from __future__ import annotations

import csv
import glob
import os

import pytest
import torch
import torch.nn.functional as F

from support.cli import fit_args
from lit_align.cli.app import build_cli
from lit_align.data.collate import CompletionCollator
from lit_align.data.formats import Example
from lit_align.objectives import SFT
from lit_align.policy.with_reference import PolicyWithReference


def _batch(tokenizer):
    examples = [Example(0, [1, 40, 41, 42], [[50, 51, 2]]), Example(1, [1, 43], [[52, 53, 54, 55, 2]])]
    return CompletionCollator(tokenizer.pad_token_id)(examples)


def test_loss_is_token_mean_over_response_tokens_only(tokenizer):
    """By hand: row 0 has 3 response tokens, row 1 has 5; the loss is the sum of their 8 NLLs divided by 8,
    computed here with a plain loop over the positions that predict a response token."""
    module = SFT(policy=PolicyWithReference(reference="none"))
    batch = _batch(tokenizer)
    loss, metrics = module.compute_loss(batch, "val")
    logits = module.policy(batch["input_ids"], batch["attention_mask"]).detach()
    logp = F.log_softmax(logits.float(), -1)
    nll, count = 0.0, 0
    for row, (prompt_len, length) in enumerate([(4, 7), (2, 7)]):
        for t in range(prompt_len, length):  # token t is predicted at position t - 1
            nll -= logp[row, t - 1, batch["input_ids"][row, t]].item()
            count += 1
    assert count == 8
    assert loss.item() == pytest.approx(nll / count, rel=1e-5)
    assert metrics["loss"].numel() == 8  # one entry per response token: the logged mean is token-weighted


def test_prompt_tokens_get_no_gradient(tokenizer):
    """The positions that predict prompt tokens (and padding) must not receive gradient: the final hidden states
    (the LM head's input, which feeds nothing else) get none there."""
    module = SFT(policy=PolicyWithReference(reference="none"))
    batch = _batch(tokenizer)
    module.compute_loss(batch, "train")  # the run's first batch: the fast-path check's no-grad forward
    captured = {}

    def keep(norm, args, hidden):
        hidden.retain_grad()
        captured["hidden"] = hidden

    module.policy.base_model.model.norm.register_forward_hook(keep)
    loss, _ = module.compute_loss(batch, "train")
    loss.backward()
    grad_norm = captured["hidden"].grad.norm(dim=-1)  # (B, T)
    # row 0: prompt of 4 tokens, positions 0..2 predict prompt tokens 1..3; position 3..5 predict the response
    assert grad_norm[0, :3].eq(0).all() and grad_norm[0, 3:6].gt(0).all() and grad_norm[0, 6:].eq(0).all()
    assert grad_norm[1, :1].eq(0).all() and grad_norm[1, 1:6].gt(0).all()


def _one_sgd_step(tmp_path, name, batch_size, accumulate):
    root = tmp_path / name
    args = fit_args(
        "sft.yaml", f"--data.batch_size={batch_size}", f"--trainer.accumulate_grad_batches={accumulate}",
        "--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=1.0", "--model.lr_schedule=constant",
        "--model.warmup_ratio=0.0", "--trainer.limit_val_batches=0", "--export.enabled=false",
        f"--trainer.default_root_dir={root}", steps=1,
    )
    cli = build_cli(args)
    return {k: v.detach().clone() for k, v in cli.model.policy.policy.state_dict().items()}


def test_accumulated_gradient_equals_full_batch_token_mean(run_dir):
    """4 examples in one batch and 2 x 2 micro-batches (same examples: the sampler shuffles once, then cuts)
    must give the same SGD step. The two micro-batches hold different numbers of response tokens, so a mean of
    per-micro-batch means would give a different step."""
    full = _one_sgd_step(run_dir, "full", 4, 1)
    accumulated = _one_sgd_step(run_dir, "accumulated", 2, 2)
    initial = PolicyWithReference(reference="none").policy.state_dict()
    moved = sum((full[k] - initial[k]).abs().sum().item() for k in full)
    assert moved > 0
    for key in full:
        torch.testing.assert_close(accumulated[key], full[key], rtol=1e-4, atol=1e-6)


def test_fit_lowers_nll_and_exports_loadable_model(run_dir):
    from transformers import AutoModelForCausalLM

    cli = build_cli(fit_args("sft.yaml", "--trainer.log_every_n_steps=1", steps=12))
    metrics = sorted(glob.glob("runs/test/logs/*/metrics.csv"))[-1]
    import csv

    rows = [r for r in csv.DictReader(open(metrics)) if r.get("train/loss")]
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"]) - 0.1
    export = "runs/test/hf_model"
    assert os.path.exists(os.path.join(export, "config.json"))
    loaded = AutoModelForCausalLM.from_pretrained(export)
    batch = cli.datamodule.collator()(cli.datamodule.train_examples[:4])
    trained = SFT(policy=PolicyWithReference(model=export, reference="none"))
    untrained = SFT(policy=PolicyWithReference(reference="none"))
    with torch.no_grad():
        assert trained.compute_loss(batch, "val")[0] < untrained.compute_loss(batch, "val")[0]
    for key, value in cli.model.policy.policy.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)

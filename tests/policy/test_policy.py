"""PolicyWithReference in its four reference modes (the cache mode has its own file, test_reference_cache.py)."""

import json

import lightning as L
import pytest
import torch

from peft import LoraConfig

from lit_align import PolicyWithReference
from lit_align.data import PreferenceDataModule
from lit_align.models.logprobs import sequence_logprobs
from lit_align.models.loading import load_causal_lm, load_tokenizer
from lit_align.objectives import DPO


def _batch(tokenizer):
    dm = PreferenceDataModule(path="tiny", batch_size=4, max_length=48, max_prompt_length=24, limit_rows=8,
                              tokenizer="tiny")
    dm.setup("fit")
    return dm.collator()(dm.train_examples[:4])


class _ModeProbe(L.Callback):
    """Records, at every training batch, whether any reference module was in train mode."""

    def __init__(self):
        self.reference_training = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        ref = module.policy.reference.weights
        self.reference_training.append(any(m.training for m in ref.modules()))


def _fit(module, steps=3, callbacks=()):
    dm = PreferenceDataModule(path="tiny", batch_size=4, max_length=48, max_prompt_length=24, limit_rows=32)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=list(callbacks))
    trainer.fit(module, dm)
    return trainer


def _logps(fn, batch):
    with torch.no_grad():
        return sequence_logprobs(fn(batch["input_ids"], batch["attention_mask"]), batch["input_ids"],
                                 batch["completion_mask"])


def test_copy_reference_frozen_eval_and_out_of_the_optimizer():
    module = DPO(policy=PolicyWithReference("tiny", reference="copy"), learning_rate=5e-3)
    ref = module.policy.reference.weights
    assert ref is not None and all(not p.requires_grad for p in ref.parameters())
    module.train()
    assert not any(m.training for m in ref.modules()) and module.policy.policy.training
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    policy_before = {k: v.clone() for k, v in module.policy.policy.state_dict().items()}
    probe = _ModeProbe()
    trainer = _fit(module, callbacks=[probe])
    assert probe.reference_training and not any(probe.reference_training)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized and not optimized & {id(p) for p in ref.parameters()}
    assert optimized == {id(p) for p in module.policy.policy.parameters()}
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    assert any(not torch.equal(policy_before[k], v) for k, v in module.policy.policy.state_dict().items())


def test_copy_reference_moves_with_the_policy():
    policy = PolicyWithReference("tiny", reference="copy")
    policy.to(torch.device("meta"))
    assert {p.device.type for p in policy.reference.weights.parameters()} == {"meta"}


@pytest.mark.gpu
def test_copy_reference_on_the_policy_gpu():
    module = DPO(policy=PolicyWithReference("tiny", reference="copy")).cuda()
    assert {p.device for p in module.policy.reference.weights.parameters()} == {next(module.policy.policy.parameters()).device}


@pytest.mark.parametrize("mode", ["copy", "lora"])
def test_policy_and_reference_identical_at_initialisation(mode, tokenizer):
    policy = PolicyWithReference("tiny", reference=mode).train()
    batch = _batch(tokenizer)
    policy_logps = _logps(policy, batch)
    reference_logps = _logps(policy.reference_logits, batch)
    assert torch.equal(policy_logps, reference_logps)
    assert torch.all(policy_logps < 0)


def test_lora_has_no_second_copy_and_reference_is_the_base_without_adapters(tokenizer):
    policy = PolicyWithReference("tiny", reference="lora", lora=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert policy.reference.weights is None
    base_params = sum(p.numel() for p in load_causal_lm("tiny").parameters())
    total = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.trainable_parameters())
    assert total == base_params + trainable and 0 < trainable < base_params // 4
    batch = _batch(tokenizer)
    fresh_base = PolicyWithReference("tiny", reference="none").eval()
    initial = _logps(fresh_base, batch)  # the untouched base model: what pi_0 must stay
    module = DPO(policy=policy, learning_rate=5e-2)
    _fit(module, steps=3)
    module.eval()
    with torch.no_grad():
        with policy.policy.disable_adapter():
            disabled = _logps(policy, batch)
        reference = _logps(policy.reference_logits, batch)
        trained = _logps(policy, batch)
    torch.testing.assert_close(reference, initial, atol=1e-5, rtol=0)
    torch.testing.assert_close(disabled, reference, atol=0, rtol=0)
    assert (trained - reference).abs().max() > 1e-3  # the adapters did learn something


def test_dpo_refuses_no_reference_with_a_clear_error():
    with pytest.raises(ValueError, match="DPO needs reference log-probs of the data rows, which reference='none'"):
        DPO(policy=PolicyWithReference("tiny", reference="none"))
    with pytest.raises(ValueError, match="reference must be one of"):
        PolicyWithReference("tiny", reference="frozen")


def test_none_mode_holds_no_reference_weights(tokenizer):
    policy = PolicyWithReference("tiny", reference="none")
    assert policy.reference.weights is None and not policy.reference.live
    batch = _batch(tokenizer)
    with pytest.raises(ValueError, match="reference='none' cannot"):
        policy.reference_logits(batch["input_ids"], batch["attention_mask"])


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_dropout_disabled(tmp_path, tokenizer, disable_dropout):
    """A local model directory whose config asks for attention dropout 0.5: in train mode two forward passes agree
    only when dropout was switched off (and disagree otherwise, which shows the check can fail)."""
    model = load_causal_lm("tiny")
    model.config.attention_dropout = 0.5
    model.save_pretrained(tmp_path)
    load_tokenizer("tiny").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["attention_dropout"] == 0.5
    policy = PolicyWithReference(str(tmp_path), reference="copy", disable_dropout=disable_dropout).train()
    batch = _batch(tokenizer)
    with torch.no_grad():
        first, second = policy(batch["input_ids"], batch["attention_mask"]), policy(batch["input_ids"],
                                                                                   batch["attention_mask"])
    assert torch.equal(first, second) == disable_dropout

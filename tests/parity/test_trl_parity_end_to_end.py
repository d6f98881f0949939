"""End to end against TRL 1.16's DPOTrainer: the same tiny model (a policy moved off its reference), the same
tokenised batch (TRL's collator's), both libraries' own forwards (TRL's fused LM head, lit-align's chunked head and
shared-prompt packing): the same loss, gradient and logged metrics to a float32 bound (1e-5 on the loss and metrics,
1e-4 relative on the gradient). Needs ``pip install -e ".[parity]"`` (TRL, test-only)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
pytestmark = pytest.mark.extended

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from support.trl_parity import logged  # noqa: E402
from lit_align import PolicyWithReference  # noqa: E402
from lit_align.objectives import DPO  # noqa: E402

NAMES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
         "logps/rejected", "logits/chosen", "logits/rejected")


def test_dpo_step_equals_trls_on_the_same_model_and_batch(tmp_path):
    torch.manual_seed(0)
    module = DPO(beta=0.1, policy=PolicyWithReference(model="tiny", reference="copy"))
    with torch.no_grad():  # a reference different from the policy
        for p in module.policy.policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    module.policy.policy.save_pretrained(tmp_path / "policy")
    module.policy.reference.weights.save_pretrained(tmp_path / "reference")
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f" It is {2 * i}.",
             "rejected": f" Maybe {i} or so{', I do not know' * (i % 3)}."} for i in range(4)]
    args = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", beta=0.1,
                     per_device_train_batch_size=4, max_steps=1, gradient_checkpointing=False)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tmp_path / "policy"),
                         ref_model=AutoModelForCausalLM.from_pretrained(tmp_path / "reference"), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=module.tokenizer)
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    trl_loss = trainer._compute_loss(trainer.model, batch, False)
    trl_loss.backward()
    trl_logged = {name: values[-1] for name, values in trainer._metrics["train"].items()}

    module.train()
    rows_batch = {**{k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")},
                  "index": torch.arange(len(rows))}
    loss, metrics = module.compute_loss(rows_batch, "train")
    loss.backward()
    torch.testing.assert_close(loss.detach(), trl_loss.detach(), atol=1e-5, rtol=1e-5)
    lit_logged = logged(metrics)
    for name in NAMES:
        assert lit_logged[name] == pytest.approx(trl_logged[name], abs=1e-5, rel=1e-5), name
    theirs = dict(trainer.model.named_parameters())
    for name, parameter in module.policy.policy.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(parameter.grad, theirs[name].grad, atol=1e-7, rtol=1e-4, msg=name)

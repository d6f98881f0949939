"""What is trained runs in training mode, what is frozen in eval mode, for models loaded from a directory too:
``from_pretrained`` returns eval mode and Lightning keeps each module's mode, so a policy or reward model left as
loaded would train in eval mode, where gradient checkpointing (and dropout) silently do nothing."""

from __future__ import annotations

import lightning as L
import pytest

from lit_align import PolicyWithReference
from lit_align.data import PreferenceDataModule
from lit_align.objectives import DPO, RewardModeling


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_model")
    policy = PolicyWithReference(model="tiny", reference="none")
    policy.policy.save_pretrained(directory)
    policy.tokenizer.save_pretrained(directory)
    return str(directory)


class ModesSeen(L.Callback):
    """The modes of the trained and the frozen modules at each training step."""

    def __init__(self, trained, frozen) -> None:
        self.trained, self.frozen, self.seen = trained, frozen, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        trained, frozen = self.trained(module), self.frozen(module)
        layers = [m for m in trained.modules() if hasattr(m, "gradient_checkpointing")]
        self.seen.append({
            "trained": all(m.training for m in trained.modules()),
            "frozen": frozen is None or not any(m.training for m in frozen.modules()),
            "checkpointing": bool(layers) and all(m.gradient_checkpointing and m.training for m in layers),
        })


def _fit(module, callback) -> None:
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                        val_check_interval=1, callbacks=[callback])
    trainer.fit(module, datamodule=PreferenceDataModule(path="tiny", batch_size=2, limit_rows=8, val_fraction=0.25))


def test_a_policy_loaded_from_a_directory_trains_in_training_mode_with_checkpointing_in_effect(saved_tiny):
    module = DPO(policy=PolicyWithReference(model=saved_tiny, reference="copy", gradient_checkpointing=True))
    seen = ModesSeen(lambda m: m.policy.policy, lambda m: m.policy.reference.weights)
    _fit(module, seen)
    # the second step comes after a validation pass, which puts modules in eval mode and back
    assert seen.seen == [{"trained": True, "frozen": True, "checkpointing": True}] * 2


def test_a_reward_model_loaded_from_a_directory_trains_in_training_mode(saved_tiny):
    module = RewardModeling(model=saved_tiny, gradient_checkpointing=True)
    seen = ModesSeen(lambda m: m.scorer, lambda m: None)
    _fit(module, seen)
    assert seen.seen == [{"trained": True, "frozen": True, "checkpointing": True}] * 2


@pytest.mark.parametrize("reference", ["lora", "copy"])
def test_the_reference_scores_in_eval_mode_while_the_policy_trains_with_dropout(reference):
    """With dropout kept (``disable_dropout: false``) the training policy is random, pi_0 never: the LoRA base
    runs in eval mode for its forward (and the policy is back in training mode after it)."""
    import torch
    from peft import LoraConfig
    from support.examples import ragged_examples

    from lit_align.data.collate import CompletionCollator

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"]) if reference == "lora" else None
    policy = PolicyWithReference(model="tiny", reference=reference, disable_dropout=False, lora=lora)
    for module in policy.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    module = DPO(policy=policy)
    module.train()
    batch = CompletionCollator(pad_token_id=0)(ragged_examples(2))
    first, second = (module.row_logps(batch, "reference").policy for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert all(m.training for m in policy.policy.modules())
    with torch.no_grad():
        noisy = [module.row_logps(batch).policy for _ in range(2)]
    assert not torch.equal(*noisy)  # the policy itself does train with dropout


def test_activation_checkpointing_recomputes_with_the_same_gradients_and_no_deprecation_warning():
    import warnings

    import torch

    from lit_align.models.loading import enable_activation_checkpointing

    plain = PolicyWithReference(model="tiny", reference="none").policy
    recomputing = PolicyWithReference(model="tiny", reference="none").policy
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        enable_activation_checkpointing(recomputing)
    layers = [m for m in recomputing.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and all(m.gradient_checkpointing for m in layers) and recomputing.config.use_cache is False
    ids = torch.randint(3, 400, (2, 12), generator=torch.Generator().manual_seed(0))
    saved = []
    for model in (plain, recomputing):
        sizes = []

        def pack(t, sizes=sizes):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids).logits.float().logsumexp(-1).sum().backward()
        saved.append(sum(sizes))
    assert saved[1] < saved[0]  # fewer activations kept for the backward
    for a, b in zip(plain.parameters(), recomputing.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)

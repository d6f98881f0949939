"""Stand-ins for on-policy tests: a length reward, a small distillation objective, its prompts and a short fit."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from lit_align.data import PromptDataModule
from lit_align.objectives import PreferenceDistillation
from lit_align.generation.rollout import Rollout, SamplingConfig
from lit_align.objectives.onpolicy.experience import Experience
from lit_align.models.loading import load_causal_lm


class LengthReward(nn.Module):
    """Stand-in reward model: ``scale * number of real tokens``; ``scale`` is a parameter that must stay frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.scale * attention_mask.sum(-1).float()


def make_objective(**kwargs) -> PreferenceDistillation:
    kwargs.setdefault("reward_model", LengthReward())
    kwargs.setdefault("sampling", SamplingConfig(max_new_tokens=6, temperature=1.0))
    kwargs.setdefault("learning_rate", 1e-2)
    kwargs.setdefault("warmup_ratio", 0.0)
    return PreferenceDistillation(**kwargs)


def make_data(**kwargs) -> PromptDataModule:
    return PromptDataModule(path="tiny", batch_size=4, limit_rows=32, max_length=64, max_prompt_length=32, **kwargs)


def fit(module, max_steps: int) -> L.Trainer:
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=make_data())
    return trainer


def prompt_batch(module, n: int = 3) -> dict[str, torch.Tensor]:
    data = make_data()
    data._tokenizer = module.tokenizer
    data.setup("fit")
    return data.collator()(data.train_examples[:n])


def fake_rollout(rows: int, width: int, temperature: float = 1.0) -> Rollout:
    """``rows`` one-token prompts with ``width`` response tokens each (ids 1, ...), two rows per prompt."""
    ids = torch.arange(1, width + 2).repeat(rows, 1)
    mask = torch.ones_like(ids)
    completion = torch.cat([torch.zeros(rows, 1, dtype=torch.long), torch.ones(rows, width, dtype=torch.long)], 1)
    return Rollout(ids, mask, completion, 1, torch.ones(rows, dtype=torch.bool), torch.arange(rows) // 2,
                   sampling=SamplingConfig(max_new_tokens=width, temperature=temperature))


def fake_experience(scores: torch.Tensor | None = None, old_logps: torch.Tensor | None = None,
                    ref_logps: torch.Tensor | None = None, cls: type[Experience] = Experience, **fields) -> Experience:
    """An experience of given values on a stand-in rollout of matching shape. By default two pairs, per-token
    log-probs over 2 positions (sums: old -3, -5, -2, -6; ref -4, -4, -2, -7)."""
    if scores is None:
        scores = torch.tensor([1.0, 0.5, -0.5, 0.25])
        old_logps = torch.tensor([[-1.0, -2.0], [-2.0, -3.0], [-1.0, -1.0], [-3.0, -3.0]])
        ref_logps = torch.tensor([[-2.0, -2.0], [-1.0, -3.0], [-1.5, -0.5], [-4.0, -3.0]])
    rows, width = old_logps.shape
    return cls(rollout=fake_rollout(rows, width), scores=scores, old_logps=old_logps,
               response_mask=torch.ones(rows, width, dtype=torch.bool), ref_logps=ref_logps, **fields)


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_only_policy_changed(module) -> None:
    initial = state(load_causal_lm("tiny"))
    policy, reference = state(module.policy.policy), state(module.policy.reference.weights)
    assert any(not torch.equal(policy[k], initial[k]) for k in initial), "the policy did not change"
    assert all(torch.equal(reference[k], initial[k]) for k in initial), "the reference changed"

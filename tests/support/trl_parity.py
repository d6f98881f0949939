"""Drive TRL 1.16's own trainer loss code on crafted float64 log-probs, and lit-align's objectives on the same ones.

TRL's trainers compute their losses inside methods that call the model: ``DPOTrainer._compute_loss``,
``KTOTrainer._compute_loss``, ``GRPOTrainer._compute_loss``, ``RLOOTrainer._compute_loss``. Each is called here
unbound, on a namespace holding the attributes its ``__init__`` would set from a real TRL config, with a stand-in
model whose output is the crafted per-token log-probs (what TRL's fused LM head returns). lit-align's objectives
are real instances on the tiny model whose row forward is replaced by the same crafted log-probs, so their own
``compute_loss``/``experience_loss``, metrics and reductions run. Only tests marked ``extended`` import this.
"""

from __future__ import annotations

import dataclasses
import types
from collections import defaultdict
from contextlib import nullcontext

import torch
from torch import nn

from lit_align.objectives.metrics import StageMeans
from lit_align.objectives.offline.base import OfflineObjective, RowLogps

DTYPE = torch.float64
TOL = 1e-6


def config(cls, **settings):
    """A TRL config on CPU, without output files."""
    return cls(output_dir="unused", use_cpu=True, bf16=False, report_to="none", **settings)


def default(cls, name):
    """A TRL config class's default for field ``name``, read from the class (never typed in)."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


class Accelerator:
    """One process: every collective is the identity."""

    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True

    def gather(self, value):
        return value

    gather_for_metrics = gather

    def reduce(self, value, reduction="sum"):
        return value

    def pad_across_processes(self, value, dim=0, pad_index=0):
        return value

    def unwrap_model(self, model):
        return model

    def autocast(self):
        return nullcontext()


class FusedHeadModel(nn.Module):
    """Stands in for a model with TRL's fused LM head: returns the crafted outputs of the ``input_ids`` given."""

    is_gradient_checkpointing = False

    def __init__(self, outputs: dict[int, dict[str, torch.Tensor]]):
        super().__init__()
        self.outputs = outputs  # keyed by id(input_ids)

    def forward(self, input_ids=None, **kwargs):
        return types.SimpleNamespace(aux_loss=None, **self.outputs[id(input_ids)])


def trainer(cls, args, model, **attributes):
    """A namespace standing in for ``cls``'s instance: TRL's config, metrics and a single-process accelerator."""
    return types.SimpleNamespace(args=args, model=model, accelerator=Accelerator(), aux_loss_enabled=False,
                                 _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                                 _total_train_tokens=0, _tp_size=1, **attributes)


def trl_metrics(namespace) -> dict[str, float]:
    return {name: values[-1] for name, values in namespace._metrics["train"].items()}


def logged(metrics: dict) -> dict[str, float]:
    """What lit-align logs for one step of these per-example metrics (its StageMeans reduction)."""
    means = StageMeans()
    means.update(metrics)
    return {name: value.item() for name, value in means.compute().items()}


def pair_batch(lengths_chosen, lengths_rejected, prompt: int = 2):
    """A right-padded batch of B pairs (chosen rows first) with the given completion lengths: ``input_ids``,
    ``attention_mask``, ``completion_mask`` (2B, T) and ``index`` (B,)."""
    lengths = list(lengths_chosen) + list(lengths_rejected)
    width = prompt + max(lengths)
    attention = torch.zeros(len(lengths), width, dtype=torch.long)
    completion = torch.zeros_like(attention)
    for row, length in enumerate(lengths):
        attention[row, :prompt + length] = 1
        completion[row, prompt:prompt + length] = 1
    ids = torch.arange(attention.numel()).reshape(attention.shape) % 50 + 3
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion,
            "index": torch.arange(len(lengths_chosen))}


def token_logps(mask: torch.Tensor, seed: int, scale: float = 1.0, requires_grad: bool = False) -> torch.Tensor:
    """Crafted per-token log-probs (R, T) in ``mask``'s dtype, zero off ``mask``; a leaf when ``requires_grad``."""
    generator = torch.Generator().manual_seed(seed)
    values = -(torch.rand(mask.shape, generator=generator, dtype=DTYPE) * 2 * scale + 0.05).to(mask.dtype)
    leaf = values.requires_grad_(requires_grad)
    return leaf, leaf * mask


def use_crafted_rows(monkeypatch, rows: dict[str, RowLogps]) -> None:
    """Replace lit-align's row forward by crafted log-probs: ``rows["policy"]`` and ``rows["reference"]``."""
    def row_logps(self, batch, source="policy"):
        return rows["reference" if source == "reference" else "policy"]

    monkeypatch.setattr(OfflineObjective, "row_logps", row_logps)


def row_logps(tokens: torch.Tensor, mask: torch.Tensor, mean_logits: torch.Tensor) -> RowLogps:
    return RowLogps(policy=tokens.sum(-1), tokens=tokens, mask=mask.bool(), mean_logits=mean_logits)


def assert_close(actual, expected, what="", tol=TOL):
    actual, expected = torch.as_tensor(actual, dtype=DTYPE), torch.as_tensor(expected, dtype=DTYPE)
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")

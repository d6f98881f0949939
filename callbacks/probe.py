"""The shared machinery of the monitoring callbacks: a fixed prompt set, a schedule, sampling, rank reduction.

A probe measures the policy every ``every_n_steps`` optimizer steps (and once before training, which gives the
starting values), on the same prompts each time, so its curves are comparable across steps and its cost is
bounded by ``num_prompts * num_samples`` responses of at most ``max_new_tokens``. Each rank measures its own
share of the prompts; the probe returns sums and counts, which are summed over ranks before dividing, so the
logged value is the mean over every measured sample whatever the number of processes. Values go straight to
the trainer's loggers (``logger.log_metrics`` at the current ``global_step``) and to ``trainer.callback_metrics``.

Under a sharded strategy (FSDP2) every forward pass is a collective (each block's weights are all-gathered), so
every rank must measure at the same steps, make the same choices (``all_ranks``), run the same number of forward
passes on equal prompt shares, generate on every rank (``PolicyWithReference.generate`` keeps sharded ranks in step) and call every other collective (including
``trainer.log_dir``, a broadcast) whether or not it is the rank that writes.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lit_align.data.collate import CompletionCollator, left_padded_prompts
from lit_align.data.formats import Example
from lit_align.errors import UserError
from lit_align.policy.with_reference import PolicyWithReference
from lit_align.generation.rollout import Rollout, SamplingConfig

Totals = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (sum, count)


class PolicyProbe(L.Callback):
    """Base class of the monitors: subclasses implement ``measure`` and may override ``after_measure``.

    Args:
        every_n_steps: Measure every this many optimizer steps (and once before the first).
        num_prompts: Prompts of the fixed probe set, the first of the validation data (training data when
            there is none); rounded down to a multiple of the number of processes.
        num_samples: Responses sampled per prompt.
        sampling: How probe responses are sampled. Temperature 1 and no top-p/top-k sample the policy itself,
            which the KL and entropy estimates assume.
        prefix: Metric name prefix.
    """

    def __init__(self, every_n_steps: int = 50, num_prompts: int = 16, num_samples: int = 4,
                 sampling: SamplingConfig | None = None, prefix: str = "monitor") -> None:
        if every_n_steps < 1 or num_prompts < 1 or num_samples < 1:
            raise ValueError("every_n_steps, num_prompts and num_samples must be positive")
        self.every_n_steps = every_n_steps
        self.num_prompts = num_prompts
        self.num_samples = num_samples
        self.sampling = sampling if sampling is not None else SamplingConfig(max_new_tokens=16)
        self.prefix = prefix
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, values), on every rank
        self._last_step = -1

    # -- what a subclass provides ------------------------------------------------------------------------------

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, examples: list[Example]) -> Totals:
        """Sums and counts of the quantities on this rank's ``examples``."""
        raise NotImplementedError

    def after_measure(self, trainer: L.Trainer, values: dict[str, float]) -> None:
        """React to the reduced values (e.g. warn or stop)."""

    # -- schedule ----------------------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(getattr(pl_module, "policy", None), PolicyWithReference):
            raise UserError(f"{type(self).__name__} samples responses from a policy, and {type(pl_module).__name__} "
                            "trains no policy to sample (a reward model scores text): remove this callback")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = -1
        self.run(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Measure now (at most once per optimizer step), reduce over ranks, log, and return the values."""
        step = trainer.global_step
        if step == self._last_step:  # gradient accumulation: several batches end within one optimizer step
            return {}
        self._last_step = step
        with _eval_mode(pl_module), torch.no_grad():
            totals = self.measure(trainer, pl_module, self.probe_examples(trainer))
        values = self._reduce(trainer, totals)
        self.history.append((step, values))
        for name, value in values.items():
            trainer.callback_metrics[name] = torch.tensor(value)
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
        self.after_measure(trainer, values)
        return values

    def _reduce(self, trainer: L.Trainer, totals: Totals) -> dict[str, float]:
        names = sorted(totals)  # the same order on every rank
        if not names:
            return {}
        stacked = torch.stack([torch.stack([totals[n][0].float(), torch.as_tensor(totals[n][1]).float().to(
            totals[n][0].device)]) for n in names])  # (K, 2)
        if trainer.world_size > 1:
            stacked = trainer.strategy.reduce(stacked, reduce_op="sum")
        return {f"{self.prefix}/{n}": (s / c.clamp(min=1)).item() for n, (s, c) in zip(names, stacked)}

    # -- helpers for subclasses --------------------------------------------------------------------------------

    def probe_examples(self, trainer: L.Trainer) -> list[Example]:
        """This rank's share of the fixed probe prompts."""
        datamodule = trainer.datamodule
        examples = getattr(datamodule, "val_examples", None) or getattr(datamodule, "train_examples", None)
        if not examples:
            raise RuntimeError(f"{type(self).__name__} takes its prompts from the data module's examples; "
                               "this data module has none")
        world, rank = trainer.world_size, trainer.global_rank
        count = max(world, self.num_prompts // world * world)
        if count > len(examples):
            count = len(examples) // world * world
            if count == 0:
                raise RuntimeError(f"{type(self).__name__} needs at least one prompt per process")
        return list(examples[:count])[rank::world]

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule, examples: list[Example]) -> Rollout:
        """``num_samples`` responses of the current policy to each example's prompt."""
        policy = pl_module.policy
        tokenizer = pl_module.tokenizer
        prompts = left_padded_prompts(examples, tokenizer.pad_token_id)
        rollout = policy.generate(prompts["prompt_ids"].to(pl_module.device),
                                  prompts["prompt_mask"].to(pl_module.device), self.sampling, self.num_samples)
        return dataclasses.replace(rollout, sampling=rollout.sampling or self.sampling)

    @staticmethod
    def completion_batch(trainer: L.Trainer, pl_module: L.LightningModule,
                         examples: list[Example]) -> dict[str, torch.Tensor] | None:
        """The examples' first completions (the chosen ones), right-padded, or None on every rank when a rank's
        examples have none (the caller's forward pass on it must run on all ranks or on none)."""
        examples = [Example(ex.index, ex.prompt_ids, ex.completion_ids[:1]) for ex in examples if ex.completion_ids]
        if not all_ranks(trainer, bool(examples)):
            return None
        batch = CompletionCollator(pl_module.tokenizer.pad_token_id)(examples)
        return {k: v.to(pl_module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @staticmethod
    def gather_rows(trainer: L.Trainer, rows: torch.Tensor, pad_value: int = 0) -> torch.Tensor:
        """Concatenate (N, W) or (N,) tensors from every rank -> (world * N, W_max).

        Every rank holds the same number of rows (``probe_examples`` gives equal shares), but widths may differ:
        each rank pads its own prompts to its own longest. A collective on tensors of different shapes aborts
        gloo and can hang NCCL, so rows are first padded on the right with ``pad_value`` to the widest rank's.
        """
        if trainer.world_size == 1:
            return rows
        if rows.dim() == 2:
            width = torch.tensor(float(rows.shape[1]), device=rows.device)
            width = int(trainer.strategy.reduce(width, reduce_op="max").item())
            rows = torch.nn.functional.pad(rows, (0, width - rows.shape[1]), value=pad_value)
        return trainer.strategy.all_gather(rows.contiguous()).flatten(0, 1)

    def padded_responses(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Response ids and mask padded to ``max_new_tokens`` columns (equal shapes on every rank)."""
        ids, mask = rollout.response_ids, rollout.response_mask
        width = self.sampling.max_new_tokens
        pad = width - ids.shape[1]
        if pad > 0:
            ids = torch.nn.functional.pad(ids, (0, pad))
            mask = torch.nn.functional.pad(mask, (0, pad))
        return ids[:, :width], mask[:, :width]

    @staticmethod
    def warn(message: str) -> None:
        rank_zero_warn(message)


def all_ranks(trainer: L.Trainer, flag: bool) -> bool:
    """Whether ``flag`` holds on every rank: the same answer everywhere, for a choice every rank must share."""
    if trainer.world_size == 1:
        return flag
    value = torch.tensor(float(flag), device=trainer.strategy.root_device)
    return bool(trainer.strategy.reduce(value, reduce_op="sum").item() == trainer.world_size)


@contextmanager
def _eval_mode(module: torch.nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def scored_rollout(pl_module: L.LightningModule, rollout: Rollout, with_reference: bool,
                   temperature: float | None = None, entropy: bool = False):
    """The policy's ``CompletionScores`` of sampled rows at ``temperature`` (by default the one they were sampled
    at, ``rollout.sampling.temperature``; 1 for greedy rows): token log-probs, the mask, with ``entropy`` the token
    entropies and ``with_reference`` the exact token KL to pi_0 and pi_0's log-probs, all from the LM head applied
    in chunks (``PolicyWithReference.completion_scores``)."""
    if temperature is None:
        temperature = (rollout.sampling.temperature if rollout.sampling is not None else 0.0) or 1.0
    return pl_module.policy.completion_scores(rollout.input_ids, rollout.attention_mask, rollout.completion_mask,
                                              temperature, entropy=entropy, kl=with_reference)

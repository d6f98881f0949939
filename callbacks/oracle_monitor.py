"""Distance to the known target pi* on the oracle task: the quantity the paper's convergence theory is about."""

from __future__ import annotations

import lightning as L
import torch

from lit_align.callbacks.probe import PolicyProbe, Totals
from lit_align.data.formats import Example
from lit_align.models.logprobs import token_kl
from lit_align.models.oracle import LogitsFn, exact_sequence_kl, logits_fn, sample_responses


class OracleMonitor(PolicyProbe):
    """Forward KL(pi* || pi) and reverse KL(pi || pi*) on the prompts of an ``OracleDataModule``.

    With responses of 1 or 2 tokens both are exact (every response prefix is enumerated); longer responses use
    ``num_samples`` exact samples per prompt from the first argument of each KL and the exact per-token KL
    summed along them (unbiased). Logs ``{prefix}/forward_kl`` and ``{prefix}/reverse_kl``, averaged over the
    prompts (uniform, as the task draws them). The data module of the run must be an ``OracleDataModule``.

    Args:
        every_n_steps: Measure every this many optimizer steps (and once before the first).
        num_prompts: How many of the task's prompts to use (``None``: all); rounded down to a multiple of the
            number of processes.
        num_samples: Samples per prompt when the responses are too long to enumerate.
        seed: Seed of those samples.
        prefix: Metric name prefix.
    """

    def __init__(self, every_n_steps: int = 50, num_prompts: int | None = None, num_samples: int = 64,
                 seed: int = 0, prefix: str = "oracle") -> None:
        super().__init__(every_n_steps, num_prompts or 1, num_samples, None, prefix)
        self.all_prompts = num_prompts is None
        self.seed = seed

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, examples: list[Example]) -> Totals:
        task = getattr(trainer.datamodule, "build_task", None)
        if task is None:
            raise RuntimeError("OracleMonitor needs the oracle task: use lit_align.data.OracleDataModule")
        task = task()
        world, rank = trainer.world_size, trainer.global_rank
        count = task.prompts.shape[0] if self.all_prompts else min(self.num_prompts, task.prompts.shape[0])
        count = max(world, count // world * world)
        prompts = task.prompts[:count][rank::world].to(pl_module.device)
        target = logits_fn(task.target.to(pl_module.device))
        policy: LogitsFn = lambda ids, mask: pl_module.policy(ids, mask)  # noqa: E731
        forward = self._kl(target, policy, prompts, task.response_length)
        reverse = self._kl(policy, target, prompts, task.response_length)
        n = torch.tensor(float(prompts.shape[0]), device=prompts.device)
        return {"forward_kl": (forward.sum(), n), "reverse_kl": (reverse.sum(), n)}

    def _kl(self, p: LogitsFn, q: LogitsFn, prompts: torch.Tensor, length: int) -> torch.Tensor:
        if length <= 2:
            return exact_sequence_kl(p, q, prompts, length)
        generator = torch.Generator().manual_seed(self.seed)
        rows = prompts.repeat_interleave(self.num_samples, 0)
        ids = torch.cat([rows, sample_responses(p, rows, length, generator)], 1)
        mask = torch.ones_like(ids)
        start = prompts.shape[1] - 1  # logits at this position predict the first response token
        per_token = token_kl(p(ids, mask)[:, start:-1], q(ids, mask)[:, start:-1]).sum(-1)  # (B*k,)
        return per_token.view(prompts.shape[0], self.num_samples).mean(-1)

    def probe_examples(self, trainer: L.Trainer) -> list[Example]:
        return []  # the prompts come from the task itself

"""Mode collapse: diversity, length and entropy of the policy's samples, with a warning (or a stop) when they fall."""

from __future__ import annotations

import lightning as L
import torch

from lit_align.callbacks.probe import PolicyProbe, Totals, scored_rollout
from lit_align.data.formats import Example
from lit_align.generation.rollout import SamplingConfig


def distinct_n(responses: list[list[int]], n: int) -> tuple[int, int]:
    """Distinct and total n-grams over all responses: distinct-n is their ratio."""
    grams = [tuple(r[i : i + n]) for r in responses for i in range(len(r) - n + 1)]
    return len(set(grams)), len(grams)


class ModeCollapseMonitor(PolicyProbe):
    """Diversity of the policy's samples on a fixed prompt set, compared with its value before training.

    Logs ``{prefix}/distinct_1`` and ``{prefix}/distinct_2`` (distinct uni/bigrams over all sampled responses,
    gathered from every rank), ``{prefix}/unique_fraction`` (distinct responses among the ``num_samples`` of a
    prompt, divided by ``num_samples``, averaged over prompts), ``{prefix}/mean_length`` and
    ``{prefix}/length_drift`` (mean length minus its starting value), and ``{prefix}/entropy`` (mean token
    entropy of the samples, of the distribution they are sampled from: ``softmax(logits / sampling.temperature)``,
    default temperature 1, the policy itself; under greedy sampling, which has no distribution of its own, the
    policy's at temperature 1). When a watched quantity falls below ``min_fraction`` of its starting value it
    warns once, and with ``stop_on_collapse`` it stops the run (on every rank: the values are already reduced).

    Args:
        every_n_steps: Measure every this many optimizer steps (and once before the first).
        num_prompts: Prompts of the fixed probe set.
        num_samples: Responses sampled per prompt (at least 2 for ``unique_fraction`` to mean anything).
        sampling: How responses are sampled and scored (default: temperature 1, 16 new tokens; greedy, 0, counts
            the diversity of greedy responses).
        min_fraction: Collapse threshold as a fraction of the starting value.
        watch: Quantities compared with the threshold (names without prefix).
        stop_on_collapse: Stop training when a watched quantity collapses.
        prefix: Metric name prefix.
    """

    def __init__(self, every_n_steps: int = 50, num_prompts: int = 16, num_samples: int = 4,
                 sampling: SamplingConfig | None = None, min_fraction: float = 0.5,
                 watch: list[str] | None = None, stop_on_collapse: bool = False, prefix: str = "collapse") -> None:
        super().__init__(every_n_steps, num_prompts, num_samples, sampling, prefix)
        if not 0.0 < min_fraction < 1.0:
            raise ValueError(f"min_fraction must be in (0, 1), got {min_fraction}")
        self.min_fraction = min_fraction
        self.watch = list(watch) if watch is not None else ["entropy", "distinct_2", "unique_fraction"]
        self.stop_on_collapse = stop_on_collapse
        self.baseline: dict[str, float] = {}
        self.collapsed: list[str] = []
        self._restored = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._restored:  # a resumed run keeps the starting values of the run it continues
            self.baseline, self.collapsed = {}, []
        self._restored = False
        super().on_train_start(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"baseline": dict(self.baseline), "collapsed": list(self.collapsed)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.baseline = dict(state_dict.get("baseline", {}))
        self.collapsed = list(state_dict.get("collapsed", []))
        self._restored = bool(self.baseline)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, examples: list[Example]) -> Totals:
        rollout = self.sample(trainer, pl_module, examples)
        # scored at the distribution the rollout was drawn from (rollout.sampling; 1 for greedy samples)
        scores = scored_rollout(pl_module, rollout, with_reference=False, entropy=True)
        mask = scores.mask
        entropy = (scores.entropy * mask).sum()
        ids, response_mask = self.padded_responses(rollout)
        ids, response_mask = self.gather_rows(trainer, ids), self.gather_rows(trainer, response_mask)
        responses = [row[m.bool()].tolist() for row, m in zip(ids.cpu(), response_mask.cpu())]
        device = mask.device
        one = torch.tensor(1.0, device=device)
        samples = torch.tensor(float(len(examples) * self.num_samples), device=device)
        totals: Totals = {"entropy": (entropy, mask.sum()), "mean_length": (rollout.lengths.sum().float(), samples)}
        # the gathered responses are the same on every rank: divide the global counts by the world size
        world = trainer.world_size
        for n in (1, 2):
            distinct, total = distinct_n(responses, n)
            totals[f"distinct_{n}"] = (torch.tensor(distinct / world, device=device), one * max(total, 1) / world)
        groups = [responses[i : i + self.num_samples] for i in range(0, len(responses), self.num_samples)]
        unique = sum(len({tuple(r) for r in g}) / len(g) for g in groups)
        totals["unique_fraction"] = (torch.tensor(unique / world, device=device), one * len(groups) / world)
        return totals

    def after_measure(self, trainer: L.Trainer, values: dict[str, float]) -> None:
        key = lambda name: f"{self.prefix}/{name}"  # noqa: E731
        if not self.baseline:
            self.baseline = {name: values[key(name)] for name in self.watch if key(name) in values}
            self.baseline["mean_length"] = values.get(key("mean_length"), 0.0)
        drift = values.get(key("mean_length"), 0.0) - self.baseline["mean_length"]
        values[key("length_drift")] = drift
        trainer.callback_metrics[key("length_drift")] = torch.tensor(drift)
        for logger in trainer.loggers:
            logger.log_metrics({key("length_drift"): drift}, step=trainer.global_step)
        for name in self.watch:
            start, now = self.baseline.get(name), values.get(key(name))
            if start is None or now is None or start <= 0 or now >= self.min_fraction * start:
                continue
            if name not in self.collapsed:
                self.collapsed.append(name)
                self.warn(f"mode collapse: {name} fell to {now:.4g} at step {trainer.global_step}, below "
                          f"{self.min_fraction:g} x its starting value {start:.4g}")
            if self.stop_on_collapse:
                trainer.should_stop = True

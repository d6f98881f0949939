"""A table of sampled responses, written to the log directory and through loggers that show tables."""

from __future__ import annotations

import json
import os

import lightning as L
import torch

from lit_align.callbacks.probe import PolicyProbe, Totals
from lit_align.data.formats import Example
from lit_align.generation.rollout import SamplingConfig


class SampleLogger(PolicyProbe):
    """Samples responses to a few fixed prompts every ``every_n_steps`` and records them.

    Every record ``{step, prompt, response, length, ended}`` is appended to ``<log_dir>/<filename>`` (JSON
    lines, by rank 0, with the samples of every rank). Loggers with a table API (``log_table``, e.g. Weights &
    Biases) also get the table, and TensorBoard gets it as markdown text. Logs ``{prefix}/sample_length``.

    Args:
        every_n_steps: Sample every this many optimizer steps (and once before the first).
        num_prompts: Prompts of the fixed set.
        num_samples: Responses per prompt.
        sampling: How responses are sampled.
        filename: JSON-lines file in the run's log directory.
        prefix: Metric name prefix.
    """

    def __init__(self, every_n_steps: int = 50, num_prompts: int = 4, num_samples: int = 2,
                 sampling: SamplingConfig | None = None, filename: str = "samples.jsonl",
                 prefix: str = "samples") -> None:
        super().__init__(every_n_steps, num_prompts, num_samples, sampling, prefix)
        self.filename = filename
        self.path: str | None = None

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, examples: list[Example]) -> Totals:
        rollout = self.sample(trainer, pl_module, examples)
        tokenizer = pl_module.tokenizer
        ids, mask = self.padded_responses(rollout)
        prompt_ids = rollout.input_ids[:, : rollout.prompt_length]
        prompt_mask = rollout.attention_mask[:, : rollout.prompt_length]
        ended = rollout.ended.long()
        gathered = [self.gather_rows(trainer, t.contiguous()) for t in (ids, mask, prompt_ids, prompt_mask, ended)]
        # ``trainer.log_dir`` broadcasts from rank 0, a collective: every rank must ask, not only the writer.
        directory = trainer.log_dir or trainer.default_root_dir
        if trainer.is_global_zero:
            self._write(trainer, tokenizer, directory, *gathered)
        return {"sample_length": (rollout.lengths.sum().float(), torch.tensor(float(len(rollout.lengths))))}

    def _write(self, trainer, tokenizer, directory, ids, mask, prompt_ids, prompt_mask, ended) -> None:
        step = trainer.global_step
        rows = []
        for i in range(ids.shape[0]):
            prompt = tokenizer.decode(prompt_ids[i][prompt_mask[i].bool()].tolist(), skip_special_tokens=True)
            response = ids[i][mask[i].bool()].tolist()
            text = tokenizer.decode(response, skip_special_tokens=True)
            rows.append({"step": step, "prompt": prompt, "response": text, "length": len(response),
                         "ended": bool(ended[i])})
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, self.filename)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        columns = ["step", "prompt", "response", "length", "ended"]
        data = [[row[c] for c in columns] for row in rows]
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table(key=f"{self.prefix}/table", columns=columns, data=data)
            elif hasattr(getattr(logger, "experiment", None), "add_text"):
                lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                for r in data:
                    lines.append("| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in r) + " |")
                logger.experiment.add_text(f"{self.prefix}/table", "\n".join(lines), global_step=step)

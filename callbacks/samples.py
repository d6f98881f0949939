"""A table of sampled responses, written to the log directory and through loggers that show tables."""

from __future__ import annotations

import json
import os

import lightning as L
import torch

from lit_align.callbacks.probe import PolicyProbe, Totals
from lit_align.data.formats import Example
from lit_align.generation.records import decode_rows
from lit_align.generation.rollout import Rollout, SamplingConfig


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
        # every rank's rows (padded on the right to the widest rank's: the masks tell prompt from response)
        ids, attention, completion = (self.gather_rows(trainer, t.contiguous()) for t in
                                      (rollout.input_ids, rollout.attention_mask, rollout.completion_mask))
        ended = self.gather_rows(trainer, rollout.ended.long()).bool()
        gathered = Rollout(ids, attention, completion, 0, ended, torch.arange(ids.shape[0], device=ids.device))
        # ``trainer.log_dir`` broadcasts from rank 0, a collective: every rank must ask, not only the writer.
        directory = trainer.log_dir or trainer.default_root_dir
        if trainer.is_global_zero:
            self._write(trainer, decode_rows(gathered, pl_module.tokenizer, prompt_special_tokens=False), directory)
        return {"sample_length": (rollout.lengths.sum().float(), torch.tensor(float(len(rollout.lengths))))}

    def _write(self, trainer, texts, directory) -> None:
        step = trainer.global_step
        rows = [{"step": step, "prompt": text.prompt, "response": text.response, "length": text.length,
                 "ended": text.ended} for text in texts]
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

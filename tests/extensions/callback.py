"""A per-step callback that reads the objective through public contracts only."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class StepJournal(L.Callback):
    """Appends one JSON line per optimizer step: the step, the learning rate, the step's loss and the reference.

    Args:
        path: The file to append to.
    """

    def __init__(self, path: str = "journal.jsonl") -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        record = {"step": trainer.global_step, "lr": trainer.optimizers[0].param_groups[0]["lr"],
                  "loss": float(outputs["loss"]), "reference": pl_module.policy.reference.name}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

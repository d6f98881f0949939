"""Draw the run's curves (``lit_align.runs.plot``) when ``fit`` ends."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class PlotCurves(L.Callback):
    """Writes ``<default_root_dir>/plots/*.png`` (loss, rewards, KL, entropy, diversity, throughput) at the end of
    ``fit``, from the CSV logger's files; the same figures as ``lit-align plot <run folder>``.

    Args:
        dirpath: Where the figures go; defaults to ``<trainer.default_root_dir>/plots``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from lit_align.runs.plot import plot_runs

        for logger in trainer.loggers:
            if hasattr(logger, "save"):
                logger.save()  # the CSV logger buffers rows until it is finalised, after this hook
        written = plot_runs([trainer.default_root_dir], self.dirpath)
        if written:
            rank_zero_info(f"plots: {len(written)} figures in {written[0].parent}")

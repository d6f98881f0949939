"""Callbacks of lit-align (installed as ``lit_align.callbacks``)."""

from lit_align.callbacks.checkpoint import AlignCheckpoint
from lit_align.callbacks.export import HFExport

__all__ = ["AlignCheckpoint", "HFExport"]

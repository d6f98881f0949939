"""Callbacks of lit-align (installed as ``lit_align.callbacks``)."""

from lit_align.callbacks.checkpoint import AlignCheckpoint
from lit_align.callbacks.collapse import ModeCollapseMonitor
from lit_align.callbacks.console import AlignProgressBar, RunSummary
from lit_align.callbacks.export import HFExport
from lit_align.callbacks.generation_gap import GenerationGapMonitor
from lit_align.callbacks.monitors import EntropyMonitor, KLMonitor
from lit_align.callbacks.numerics import NonFiniteError, NonFiniteGuard
from lit_align.callbacks.predictions import PredictionWriter
from lit_align.callbacks.oracle_monitor import OracleMonitor
from lit_align.callbacks.plots import PlotCurves
from lit_align.callbacks.probe import PolicyProbe
from lit_align.callbacks.samples import SampleLogger
from lit_align.callbacks.throughput import ThroughputMonitor

__all__ = [
    "EntropyMonitor", "KLMonitor", "ModeCollapseMonitor", "OracleMonitor", "PolicyProbe", "SampleLogger",
    "AlignCheckpoint", "HFExport", "NonFiniteError", "NonFiniteGuard", "PredictionWriter",
    "ThroughputMonitor", "AlignProgressBar", "PlotCurves", "RunSummary", "GenerationGapMonitor"]

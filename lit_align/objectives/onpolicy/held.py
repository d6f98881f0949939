"""The update forward kept and replayed: ``HeldForward`` hands a forward's output (with its graph, or as leaves) to
the update's loss instead of recomputing it, and the random state a group's forward is replayed with."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

from lit_align.generation.rollout import map_tensors, select_rows


class HeldForward:
    """The sampling-time policy forward of a batch, kept with its graph for the first update to use.

    ``arm(on)`` around ``make_experience``: while armed, ``policy_experience`` runs its forward of every row with
    gradient and hands it to ``keep``. ``for_rows(rows)`` around the first update, whose forward asks
    ``take(num_rows)`` first: the kept output at ``rows``, once (later forwards are computed as usual). Whatever
    was not taken is dropped when the update ends, with its graph.
    """

    def __init__(self) -> None:
        self.armed = False
        self._output: Any = None
        self._rows: torch.Tensor | int | None = None

    @contextmanager
    def arm(self, on: bool):
        self.armed, self._output = on, None
        try:
            yield
        finally:
            self.armed = False

    def keep(self, output: Any) -> Any:
        self._output = output
        return output

    @contextmanager
    def for_rows(self, rows: torch.Tensor | int):
        """Hand the kept output at ``rows`` to the update's forward; an int: all that many rows, as kept."""
        self._rows = rows
        try:
            yield
        finally:
            self._output = self._rows = None  # a later update recomputes its forward

    @property
    def pending(self) -> bool:
        """A kept output that the update has not taken (yet)."""
        return self._output is not None and self._rows is not None

    def take(self, num_rows: int) -> Any:
        if self._output is None or self._rows is None:
            return None
        whole = isinstance(self._rows, int)
        if (self._rows if whole else self._rows.numel()) != num_rows:
            return None
        output, self._output = self._output, None
        return output if whole else select_rows(output, self._rows)


def random_state(device: torch.device) -> tuple:
    """torch's random state on the CPU and on ``device`` (when a CUDA device), to draw the same numbers again."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None), device


def set_random_state(state: tuple) -> None:
    cpu, accelerator, device = state
    torch.set_rng_state(cpu)
    if accelerator is not None:
        torch.cuda.set_rng_state(accelerator, device)


def detached(value: Any) -> Any:
    """``value`` (as ``select_rows`` takes it) without its graph."""
    return map_tensors(torch.Tensor.detach, value)

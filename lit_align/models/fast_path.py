"""Partial forwards that prove themselves on the run's own first batch, or are not used.

lit-align's speed comes from two partial replacements of the model's own forward: the chunked LM head
(``lit_align.models.chunked_head``: the (B, T, V) logits never exist) and shared-prompt packing (``lit_align.models.packing``:
one copy of the prompt for all its completions). Both must give the log-probs of the model's own forward, and
whether they do depends on the architecture (its attention windows, position scheme, what it does to its logits
after the head, whether it takes a 4-D mask at all). Rather than trust a list of names, ``FastPathCheck`` decides,
once per run and per scoring role (the policy, pi_0, a model given as it is):

1. before the first use, a path whose preconditions the model's config rules out (``head_refusal``,
   ``packing_refusal``) is off for the run;
2. on the first batch, the fast forward runs as usual and, once, the model's plain forward (full logits, separate
   rows, its own mask and positions) runs beside it without gradient, in the same precision and autocast
   context, on a few of the batch's rows (``check_rows``: the longest, the last, the shortest and the first, as
   many as keep its (rows, T, V) logits within the chunked head's budget, so the check never raises the run's
   peak memory). On those rows every scored token's log-prob (and the entropy and KL the call asked for) must
   agree within ``tolerance`` (1e-4 nats in float32, 0.05 in 16-bit compute); a fast path that raises counts as a
   difference;
3. equal: the path is kept for the run; different: the run falls back to the plain path, says so in one line
   naming the architecture, the path and the measured difference, and this call's result is recomputed the
   plain way. With both paths on and a difference, each is tried alone (one more forward) to keep the one that is
   right.

A model with attention windows whose first batch has no row longer than the narrowest window is checked again
(once) on the first batch that has one, so the decision is made where the window matters (until then each batch's
longest row is read: one device sync per scoring call). Under several processes the measured difference and the
longest row are the maxima over ranks, so every rank decides the same and runs the same forwards. The cost is one
extra forward of a few rows of the first batch per role (``cost_s`` records it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lit_align.models.chunked_head import CHUNK_ELEMENTS, CompletionScores, head_refusal
from lit_align.models.packing import packing_refusal, smallest_window

log = logging.getLogger(__name__)

CHUNKED_HEAD = "chunked LM head"
PACKING = "shared-prompt packing"
#: Why a model cannot take each path, from its config alone (None: it can, the first batch decides).
REFUSALS: dict[str, Callable[[nn.Module], str | None]] = {CHUNKED_HEAD: head_refusal, PACKING: packing_refusal}
#: Largest difference per token (nats) the fast and the plain forward may have, by the precision of the compute.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-4}
HALF_PRECISION_TOLERANCE = 0.05


def tolerance(dtype: torch.dtype) -> float:
    """How far the fast path's log-probs may be from the plain forward's, per token, when the model computes in
    ``dtype`` (float32: 1e-4 nats; 16-bit: 0.05, the rounding of two forwards that group their sums differently)."""
    return TOLERANCE.get(dtype, HALF_PRECISION_TOLERANCE)


@dataclass
class Verdict:
    """What was decided about one fast path for one role."""

    kept: bool
    difference: float  # largest |fast - plain| per token, nats (inf: the fast path raised; nan: never run)
    detail: str = ""  # the reason it is off
    final: bool = True  # False: kept on rows shorter than the model's attention window, checked again once


#: ``scorer(paths, rows)``: the call's scores with the fast paths in ``paths`` on (an empty set: the plain forward),
#: of the batch rows ``rows`` (a (K,) index; None: every row; only the plain forward is asked for a subset).
Scorer = Callable[[frozenset, "torch.Tensor | None"], CompletionScores]
#: Fewest rows the check's plain forward sees (the longest and the last row; fewer when the batch has fewer).
MIN_CHECK_ROWS = 2


def check_rows(lengths: torch.Tensor, vocab: int, budget: int | None = None) -> torch.Tensor:
    """The rows the check's plain forward runs: the longest (attention windows, positions), the last (the latest
    completion of its shared prompt, whose packed mask must hide its siblings), the shortest (the most padding) and
    the first, then the others in order, as many as keep (rows, longest, vocab) logits within ``budget`` floats
    (default: the chunked head's ``CHUNK_ELEMENTS``), at least ``MIN_CHECK_ROWS``; sorted.

    Args:
        lengths: (B,) tokens of each row (its attention mask's sum).
        vocab: the size of the model's output layer.
        budget: float32 logits the plain forward may hold at once.
    """
    count = len(lengths)
    width = max(1, int(lengths.max())) if count else 1
    allowed = max(MIN_CHECK_ROWS, (CHUNK_ELEMENTS if budget is None else budget) // (width * max(1, vocab)))
    order = [int(lengths.argmax()), count - 1, int(lengths.argmin()), 0, *range(count)] if count else []
    chosen: list[int] = []
    for row in order:
        if row not in chosen and len(chosen) < allowed:
            chosen.append(row)
    return torch.tensor(sorted(chosen), dtype=torch.long, device=lengths.device)


class FastPathCheck:
    """Which fast paths a run uses, per scoring role, decided on the first batch (see the module docstring)."""

    def __init__(self) -> None:
        self.verdicts: dict[tuple[str, str], Verdict] = {}
        self.cost_s = 0.0  # seconds spent in the check's extra forwards
        self.lines: list[str] = []  # what the fallbacks said

    def allows(self, role: str, path: str) -> bool:
        verdict = self.verdicts.get((role, path))
        return verdict is None or verdict.kept

    def run(self, role: str, model: nn.Module, paths: tuple[str, ...], scorer: Scorer,
            lengths: Callable[[], torch.Tensor]) -> CompletionScores:
        """The call's scores through the allowed fast paths of ``paths``, checked first where still due.
        ``model``: the transformers model that scores (its architecture); ``lengths()``: (B,) tokens of each row."""
        for path in paths:
            if (role, path) not in self.verdicts and (reason := REFUSALS[path](model)) is not None:
                self._decide(role, path, model, Verdict(False, math.nan, reason))
        on = frozenset(p for p in paths if self.allows(role, p))
        window = smallest_window(model) if on else None
        device = next(model.parameters()).device
        agreed_longest = _once(lambda: int(_agreed(float(lengths().max()), device)))  # every rank checks alike
        due = [p for p in on if self._due(role, p, window, agreed_longest)]
        if not due:
            return scorer(on, None)
        every = lengths()
        rows = check_rows(every, _vocab(model))
        rows = None if len(rows) == len(every) else rows  # None: the plain forward sees the whole batch
        return self._check(role, model, on, due, scorer, window, agreed_longest(), rows)

    def _due(self, role: str, path: str, window: int | None, longest: Callable[[], int]) -> bool:
        verdict = self.verdicts.get((role, path))
        return verdict is None or (not verdict.final and window is not None and longest() > window)

    def _check(self, role, model, on, due, scorer, window, length, rows) -> CompletionScores:
        start = time.perf_counter()
        with torch.no_grad():
            plain = scorer(frozenset(), rows)
        self.cost_s += time.perf_counter() - start
        limit = tolerance(_compute_dtype(model))
        fast, error = _attempt(scorer, on)
        difference = _agreed(_difference(fast, plain, rows), plain.logps.device)
        final = window is None or length > window
        if difference <= limit:
            for path in due:
                self._decide(role, path, model, Verdict(True, difference, final=final))
            return fast
        keep = self._attribute(on, due, scorer, plain, rows, limit)
        for path in due:
            detail = (f"raised {error}" if error else f"its log-probs differ from the model's own forward by up to "
                      f"{difference:.3g} nats per token (tolerance {limit:g})")
            self._decide(role, path, model, Verdict(path in keep, difference, "" if path in keep else detail))
        now = frozenset(p for p in on if self.allows(role, p))
        if not now and not torch.is_grad_enabled() and rows is None:
            return plain  # the plain forward saw every row: it is this call's result
        return scorer(now, None)

    def _attribute(self, on, due, scorer, plain, rows, limit) -> set[str]:
        """With several paths on and a difference, the due paths that are right alone (one forward each)."""
        if len(on) < 2:
            return set()
        start = time.perf_counter()
        keep = set()
        for path in due:
            with torch.no_grad():
                alone, _ = _attempt(scorer, frozenset({path}))
            if _agreed(_difference(alone, plain, rows), plain.logps.device) <= limit:
                keep.add(path)
                break  # the other one is the culprit
        self.cost_s += time.perf_counter() - start
        return keep

    def _decide(self, role: str, path: str, model: nn.Module, verdict: Verdict) -> None:
        self.verdicts[(role, path)] = verdict
        name = type(model).__name__
        if verdict.kept:
            log.info("fast path: %s kept for %s (%s): largest difference %.3g nats per token%s", path, name, role,
                     verdict.difference, "" if verdict.final else ", rows shorter than its attention window so far")
            return
        line = f"fast path: {path} off for {name} ({role}): {verdict.detail}; running the model's plain forward"
        self.lines.append(line)
        rank_zero_info(line)


def _once(compute: Callable[[], int]) -> Callable[[], int]:
    """``compute`` evaluated at the first call only (a device sync and, under several ranks, a collective)."""
    value: list[int] = []

    def get() -> int:
        if not value:
            value.append(compute())
        return value[0]

    return get


def _attempt(scorer: Scorer, paths: frozenset) -> tuple[CompletionScores | None, str | None]:
    try:
        return scorer(paths, None), None
    except Exception as err:  # an architecture that rejects the packed mask or the replaced head
        return None, f"{type(err).__name__}: {err}"


def _difference(fast: CompletionScores | None, plain: CompletionScores, rows: torch.Tensor | None) -> float:
    """The largest |fast - plain| over the scored tokens of ``rows`` (the rows ``plain`` holds, of the batch
    ``fast`` scored whole; None: every row), of the log-probs and of what else both computed."""
    if fast is None:
        return math.inf
    mask = plain.mask
    worst = 0.0
    for name in ("logps", "entropy", "kl", "reference_logps"):
        a, b = getattr(fast, name), getattr(plain, name)
        if a is None or b is None:
            continue
        if rows is not None:
            a = a[rows.to(a.device)]
        if a.shape != b.shape:
            return math.inf
        gap = (a.detach() - b.detach()).abs().masked_fill(~mask, 0.0).max() if mask.any() else a.new_zeros(())
        worst = max(worst, float(gap))
    return math.inf if math.isnan(worst) else worst


def _agreed(difference: float, device: torch.device) -> float:
    """The largest difference over all ranks, so that every rank keeps or drops the same paths."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return difference
    value = torch.tensor([difference], dtype=torch.float64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


def _vocab(model: nn.Module) -> int:
    """The size of the model's output layer (its logits' last dimension)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(getattr(model.config, "vocab_size", 1))


def _compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model's matmuls run in: autocast's where it is on, else its weights'."""
    weight = next(model.parameters())
    kind = weight.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype

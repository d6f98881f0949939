"""The default learning-rate schedules: transformers' linear, cosine and constant-with-warm-up."""

import math

import pytest
import torch

from lit_align.objectives.schedules import warmup_then_decay


def _rates(kind: str, total: int, warmup: int, peak: float = 1.0) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = warmup_then_decay(optimizer, total, warmup, kind)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_linear_warmup_starts_at_zero_then_decays_to_zero():
    """total 6, warm-up 2: steps 0, 1 get 0/2, 1/2; then (6 - s) / (6 - 2): 1, 3/4, 1/2, 1/4."""
    assert _rates("linear", 6, 2) == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25])


def test_without_warmup_the_first_step_has_the_peak_rate():
    assert _rates("linear", 4, 0, peak=3e-6) == pytest.approx([3e-6, 2.25e-6, 1.5e-6, 0.75e-6])
    assert _rates("constant", 3, 0) == [1.0, 1.0, 1.0]


def test_cosine_and_constant_after_warmup():
    """Cosine, total 5, warm-up 1: 0, then 0.5 (1 + cos(pi (s - 1) / 4)) for s = 1..4."""
    expected = [0.0] + [0.5 * (1 + math.cos(math.pi * (s - 1) / 4)) for s in range(1, 5)]
    assert _rates("cosine", 5, 1) == pytest.approx(expected)
    assert _rates("constant", 4, 2) == pytest.approx([0.0, 0.5, 1.0, 1.0])


def test_an_unknown_schedule_is_refused_by_name():
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        _rates("polynomial", 2, 0)

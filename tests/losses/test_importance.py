"""Engine/trainer mismatch correction: exact weights against an engine perturbed by a known ratio."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.errors import UserError
from lit_align.losses import ImportanceCorrection, importance_weights

LN2 = math.log(2.0)


def perturbed_engine():
    """Two real rows and one empty row of trainer log-probs; the engine is off by ln 2 on known tokens.

    Row 0: 3 real tokens, engine = trainer - ln 2 on tokens 0 and 1 -> token ratios [2, 2, 1], sequence ratio 4.
    Row 1: 2 real tokens, engine = trainer + ln 2 on token 0 -> token ratios [0.5, 1], sequence ratio 0.5.
    Row 2: padding only. Padding positions carry a wild engine log-prob that must be ignored.
    """
    trainer = -torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) - 0.5
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    shift = torch.tensor([[LN2, LN2, 0.0, 0.0], [-LN2, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    engine = trainer - shift
    engine = torch.where(mask.bool(), engine, torch.full_like(engine, -50.0))
    return trainer, engine, mask


def run(mode, clip_max=3.0, clip_min=None):
    trainer, engine, mask = perturbed_engine()
    return importance_weights(trainer, engine, mask, ImportanceCorrection(mode, clip_max, clip_min))


def close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=1e-5, rtol=1e-5)


def test_token_truncate_caps_each_token():
    out = run("token_truncate", clip_max=1.5)
    close(out.weights, [[1.5, 1.5, 1, 0], [0.5, 1, 0, 0], [0, 0, 0, 0]])
    assert out.keep.tolist() == perturbed_engine()[2].bool().tolist()
    close(out.ratio_mean, (2 + 2 + 1 + 0.5 + 1) / 5)
    close(out.ratio_max, 2.0)
    close(out.ratio_min, 0.5)
    close(out.clipped_fraction, 2 / 5)
    close(out.masked_fraction, 0.0)


def test_token_truncate_lower_bound():
    out = run("token_truncate", clip_max=3.0, clip_min=0.8)
    close(out.weights, [[2, 2, 1, 0], [0.8, 1, 0, 0], [0, 0, 0, 0]])
    close(out.clipped_fraction, 1 / 5)


def test_sequence_truncate_broadcasts_the_capped_sequence_ratio():
    out = run("sequence_truncate", clip_max=3.0)
    close(out.weights, [[3, 3, 3, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 0]])
    close(out.ratio, [[4, 4, 4, 1], [0.5, 0.5, 1, 1], [1, 1, 1, 1]])
    close(out.ratio_mean, (4 + 0.5) / 2)  # over the two sequences with a real token
    close(out.ratio_max, 4.0)
    close(out.clipped_fraction, 1 / 2)


def test_token_mask_drops_tokens_outside_the_band():
    out = run("token_mask", clip_max=1.5, clip_min=0.6)
    close(out.weights, [[0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    assert out.keep.tolist() == [[False, False, True, False], [False, True, False, False], [False] * 4]
    close(out.masked_fraction, 3 / 5)
    close(out.clipped_fraction, 0.0)


def test_token_mask_keeps_the_ratio_inside_the_band():
    out = run("token_mask", clip_max=3.0)
    close(out.weights, [[2, 2, 1, 0], [0.5, 1, 0, 0], [0, 0, 0, 0]])
    close(out.masked_fraction, 0.0)


def test_sequence_mask_drops_whole_sequences():
    out = run("sequence_mask", clip_max=3.0)
    close(out.weights, [[0, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 0]])
    assert out.keep.tolist() == [[False] * 4, [True, True, False, False], [False] * 4]
    close(out.masked_fraction, 1 / 2)
    out = run("sequence_mask", clip_max=None, clip_min=0.6)
    close(out.weights, [[4, 4, 4, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("mode", ["token_truncate", "sequence_truncate", "token_mask", "sequence_mask"])
def test_matching_engine_gives_unit_weights_and_detached_results(mode):
    trainer, _, mask = perturbed_engine()
    trainer = trainer.clone().requires_grad_(True)
    out = importance_weights(trainer, trainer, mask, ImportanceCorrection(mode))
    close(out.weights, mask.float())
    assert not out.weights.requires_grad
    close(out.ratio_mean, 1.0)


@pytest.mark.parametrize("mode", ["token_truncate", "sequence_truncate", "token_mask", "sequence_mask"])
def test_empty_rows_and_empty_batches_give_no_nan(mode):
    trainer, engine, _ = perturbed_engine()
    out = importance_weights(trainer, engine, torch.zeros(3, 4), ImportanceCorrection(mode))
    for value in (out.weights, out.ratio, out.ratio_mean, out.ratio_max, out.clipped_fraction, out.masked_fraction):
        assert torch.isfinite(value).all()
    close(out.weights, torch.zeros(3, 4))
    close(out.ratio_mean, 1.0)


def test_huge_sequence_ratio_stays_finite_when_truncated_and_nan_engine_means_no_correction():
    trainer = torch.zeros(1, 3)
    engine = torch.tensor([[-60.0, -60.0, float("nan")]])  # sequence log-ratio 120: exp overflows float32
    out = importance_weights(trainer, engine, torch.ones(1, 3), ImportanceCorrection("sequence_truncate", 3.0))
    close(out.weights, [[3, 3, 3]])
    out = importance_weights(trainer, engine, torch.ones(1, 3), ImportanceCorrection("token_mask", 3.0))
    close(out.weights, [[0, 0, 1]])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"mode": "token"}, "mode"),
        ({"clip_max": 0.0}, "clip_max"),
        ({"clip_min": -1.0}, "clip_min"),
        ({"clip_min": 3.0, "clip_max": 2.0}, "clip_min"),
        ({"mode": "sequence_truncate", "clip_max": None}, "clip_max"),
        ({"mode": "token_mask", "clip_max": None, "clip_min": None}, "clip_max"),
    ],
)
def test_config_refuses_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(UserError, match=f"importance_correction.{field}") as err:
        ImportanceCorrection(**kwargs)
    assert "\n" not in str(err.value)

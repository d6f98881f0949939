"""Correction of the mismatch between the generation engine and the trainer by importance sampling.

The engine (vLLM, or an HF generate in another precision or an older weight version) samples a completion with
probabilities ``mu`` that differ slightly from the trainer's ``pi`` for the same weights. The policy gradient is an
expectation under ``pi``, so each sampled token is reweighted by the ratio

    rho_t = pi(y_t | s_t) / mu(y_t | s_t) = exp(ln pi_t - ln mu_t)        (token level)
    rho   = prod_t rho_t = exp(sum_t m_t (ln pi_t - ln mu_t))             (sequence level, m the completion mask)

and the ratio is bounded to keep the variance finite. The four modes carry TRL 1.16's names
(``vllm_importance_sampling_mode``) and bounds (``clip_min = C_min``, ``clip_max = C_max``):

    token_truncate     w_t = clamp(rho_t, C_min, C_max)
    sequence_truncate  w_t = clamp(rho, C_min, C_max)               for every token of the sequence
    token_mask         w_t = rho_t * [C_min <= rho_t <= C_max]
    sequence_mask      w_t = rho * [C_min <= rho <= C_max]          for every token of the sequence

A missing bound is no bound. Example: ``ln mu_t = ln pi_t - ln 2`` on two of a sequence's tokens gives
``rho_t = 2`` there and ``rho = 4``: with ``C_max = 3``, token_truncate weighs those tokens 2, sequence_truncate
weighs the whole sequence 3, token_mask keeps them at 2 and sequence_mask drops the sequence. Tokens the engine
could not score (NaN log-prob) get ``rho_t = 1``, as in TRL. The weights are detached: they scale the
policy-gradient term, they are not differentiated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from lit_align.errors import UserError

ImportanceMode = Literal["token_truncate", "sequence_truncate", "token_mask", "sequence_mask"]
IMPORTANCE_MODES: tuple[str, ...] = ("token_truncate", "sequence_truncate", "token_mask", "sequence_mask")


@dataclass(frozen=True)
class ImportanceCorrection:
    """How the engine/trainer mismatch is corrected (an objective's ``importance_correction`` argument).

    Args:
        mode: ``token_truncate`` / ``sequence_truncate`` bound the token's / the sequence's ratio into
            ``[clip_min, clip_max]``; ``token_mask`` / ``sequence_mask`` drop the tokens / whole sequences whose
            ratio leaves that band (TRL's ``vllm_importance_sampling_mode``).
        clip_max: upper bound ``C_max`` of the ratio: the cap of the truncating modes (required there), the top of
            the band of the masking modes (``None``: no upper bound). TRL's ``vllm_importance_sampling_clip_max``.
        clip_min: lower bound ``C_min`` of the ratio (``None``: no lower bound). TRL's
            ``vllm_importance_sampling_clip_min``.
    """

    mode: ImportanceMode = "token_truncate"
    clip_max: float | None = 3.0
    clip_min: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in IMPORTANCE_MODES:
            modes = ", ".join(IMPORTANCE_MODES)
            raise UserError(f"importance_correction.mode must be one of {modes}, got {self.mode!r}")
        if self.clip_max is not None and not self.clip_max > 0:
            raise UserError(f"importance_correction.clip_max must be > 0 (or null), got {self.clip_max}")
        if self.clip_min is not None and not self.clip_min >= 0:
            raise UserError(f"importance_correction.clip_min must be >= 0 (or null), got {self.clip_min}")
        if self.clip_min is not None and self.clip_max is not None and not self.clip_min < self.clip_max:
            raise UserError(f"importance_correction.clip_min ({self.clip_min}) must be below clip_max "
                            f"({self.clip_max})")
        if self.truncates and self.clip_max is None:
            raise UserError(f"importance_correction.clip_max is required by mode {self.mode!r} (the cap of the ratio)")
        if not self.truncates and self.clip_max is None and self.clip_min is None:
            raise UserError(f"importance_correction.clip_max or clip_min is required by mode {self.mode!r}")

    @property
    def sequence_level(self) -> bool:
        """Whether one ratio per sequence is used (else one per token)."""
        return self.mode.startswith("sequence")

    @property
    def truncates(self) -> bool:
        """Whether out-of-band ratios are clamped (else the tokens or sequences are dropped)."""
        return self.mode.endswith("truncate")


@dataclass(frozen=True)
class ImportanceWeights:
    """Detached result of ``importance_weights``.

    Attributes:
        weights: (B, T) float32 factor of each token's policy-gradient term; 0 on padding and on dropped tokens.
        keep: (B, T) bool, the completion mask less the tokens a masking mode dropped (normalise by its sum).
        ratio: (B, T) the uncorrected ratio (the sequence's ratio on each of its tokens in sequence modes), 1 on
            padding.
        ratio_mean, ratio_min, ratio_max: () statistics of the uncorrected ratio over the units of the mode (real
            tokens in token modes, sequences with at least one real token in sequence modes); 1 when there are none.
        clipped_fraction: () share of those units whose ratio a truncating mode clamped (0 in masking modes).
        masked_fraction: () share of those units a masking mode dropped (0 in truncating modes).
    """

    weights: torch.Tensor
    keep: torch.Tensor
    ratio: torch.Tensor
    ratio_mean: torch.Tensor
    ratio_min: torch.Tensor
    ratio_max: torch.Tensor
    clipped_fraction: torch.Tensor
    masked_fraction: torch.Tensor


def token_log_ratio(trainer_logps: torch.Tensor, engine_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``m_t (ln pi_t - ln mu_t)`` in float32 (B, T), 0 on padding and where the engine gave no log-prob (NaN)."""
    log_ratio = trainer_logps.detach().float() - engine_logps.detach().float()
    return torch.nan_to_num(log_ratio, nan=0.0).masked_fill(~mask.bool(), 0.0)


def _out_of_band(ratio: torch.Tensor, correction: ImportanceCorrection) -> torch.Tensor:
    """Whether each ratio lies outside ``[clip_min, clip_max]`` (bool, same shape)."""
    outside = torch.zeros_like(ratio, dtype=torch.bool)
    if correction.clip_max is not None:
        outside |= ratio > correction.clip_max
    if correction.clip_min is not None:
        outside |= ratio < correction.clip_min
    return outside


def _unit_stats(ratio: torch.Tensor, outside: torch.Tensor, units: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mean, min and max of ``ratio`` and the out-of-band share over the set positions of ``units``."""
    count = units.sum()
    if count == 0:
        one = ratio.new_ones(())
        return one, one, one, ratio.new_zeros(())
    values = ratio[units]
    return values.mean(), values.min(), values.max(), outside[units].float().sum() / count


def importance_weights(
    trainer_logps: torch.Tensor,
    engine_logps: torch.Tensor,
    mask: torch.Tensor,
    correction: ImportanceCorrection,
) -> ImportanceWeights:
    """Per-token importance weights that correct for sampling with the engine instead of the trainer.

    Args:
        trainer_logps: (B, T) the trainer's log-probs of the sampled tokens under the weights that sampled them.
        engine_logps: (B, T) the engine's log-probs of the same tokens (NaN where it gave none).
        mask: (B, T) completion mask, 1 on tokens the policy wrote.
        correction: the mode and bounds (see the module docstring for the equations).

    Example: one row, mask ``[1, 1, 0]``, ``ln pi - ln mu = [ln 2, 0, 5]``, ``token_truncate`` with ``C_max = 1.5``:
    ratios ``[2, 1]`` on the real tokens, weights ``[1.5, 1, 0]``, ratio_mean 1.5, clipped_fraction 0.5.
    """
    mask = mask.bool()
    log_ratio = token_log_ratio(trainer_logps, engine_logps, mask)  # (B, T)
    if correction.sequence_level:
        unit_log_ratio = log_ratio.sum(-1, keepdim=True)  # (B, 1)
        units = mask.any(-1, keepdim=True)  # (B, 1): rows with a real token
    else:
        unit_log_ratio, units = log_ratio, mask
    unit_ratio = unit_log_ratio.exp()
    outside = _out_of_band(unit_ratio, correction) & units
    if correction.truncates:
        # clamp in log space: exp of a huge sequence log-ratio is inf, its clamp is still finite
        low = math.log(correction.clip_min) if correction.clip_min else None  # a bound of 0 is no bound
        high = math.log(correction.clip_max)
        unit_weight = unit_log_ratio.clamp(min=low, max=high).exp()
        unit_keep = units
    else:
        unit_keep = units & ~outside
        unit_weight = unit_ratio.masked_fill(~unit_keep, 0.0)
    keep = mask & unit_keep  # broadcasts a sequence's decision over its tokens
    weights = unit_weight.expand_as(log_ratio).masked_fill(~keep, 0.0)
    mean, low_ratio, high_ratio, share = _unit_stats(unit_ratio, outside, units)
    zero = share.new_zeros(())
    return ImportanceWeights(
        weights=weights,
        keep=keep,
        ratio=unit_ratio.expand_as(log_ratio).masked_fill(~mask, 1.0),
        ratio_mean=mean,
        ratio_min=low_ratio,
        ratio_max=high_ratio,
        clipped_fraction=share if correction.truncates else zero,
        masked_fraction=zero if correction.truncates else share,
    )

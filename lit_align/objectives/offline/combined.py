"""A weighted sum of pairwise losses, chosen in YAML by TRL ``loss_type`` name: no new class per combination.

Each part is one of the thin pair objectives, built on the mix's own policy; the mix sums their ``pair_loss``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from lit_align.losses import PreferenceLoss
from lit_align.objectives.offline.base import OfflinePairObjective
from lit_align.objectives.offline.dpo import DPO, IPO
from lit_align.objectives.offline.pair_terms import check_ld_alpha
from lit_align.objectives.offline.pairwise_length import (
    LD_OWNER, ORPO, RPO, WPO, ChosenNLL, LengthNormalizedDPO, SimPO,
)
from lit_align.objectives.offline.pairwise_losses import (
    AOT, APODown, APOZero, BCOPair, DiscoPOP, EXOPair, Hinge, NCAPair, RobustDPO, SPPOHard,
)
from lit_align.policy.reference import Need

#: TRL's ``loss_type`` names of the pair objectives a mix can hold, with the settings a name implies.
PARTS: dict[str, tuple[type[OfflinePairObjective], dict[str, Any]]] = {
    "sigmoid": (DPO, {}), "ipo": (IPO, {}), "hinge": (Hinge, {}), "robust": (RobustDPO, {}),
    "bco_pair": (BCOPair, {}), "apo_zero": (APOZero, {}), "apo_down": (APODown, {}), "nca_pair": (NCAPair, {}),
    "exo_pair": (EXOPair, {}), "sppo_hard": (SPPOHard, {}), "discopop": (DiscoPOP, {}), "aot": (AOT, {}),
    "aot_unpaired": (AOT, {"paired": False}), "sigmoid_norm": (LengthNormalizedDPO, {}), "sft": (ChosenNLL, {}),
    "simpo": (SimPO, {}), "orpo": (ORPO, {}), "wpo": (WPO, {}), "rpo": (RPO, {}),
}


class CombinedPairLoss(OfflinePairObjective):
    """``sum_i weight_i * loss_i`` over pair objectives named as TRL's ``loss_type``, e.g. MPO (Wang et al. 2024,
    TRL's ``loss_type: [sigmoid, bco_pair, sft]`` with ``loss_weights: [0.8, 0.2, 1.0]``)::

        losses:
          - {loss: sigmoid, weight: 0.8, beta: 0.1}
          - {loss: bco_pair, weight: 0.2}
          - {loss: sft, weight: 1.0}

    Each part is logged unweighted as ``loss/<name>`` (``loss/<name>_<i>`` for a name used twice); the
    ``rewards/*`` metrics are the first part's (TRL logs ``beta`` times the log-ratios whatever the parts). The
    reference is loaded only when some part reads it.

    Args:
        losses: The parts, each ``{loss: <name>, weight: <float, default 1>, <that loss's own settings>}``, with
            names ``sigmoid, ipo, hinge, robust, bco_pair, apo_zero, apo_down, nca_pair, exo_pair, sppo_hard,
            discopop, aot, aot_unpaired, sigmoid_norm, sft, simpo, orpo, wpo, rpo`` (``PARTS``: ``DPO``, ``IPO``,
            ...) and each objective's settings, defaults and checks (``ipo`` takes ``length_normalized``: TRL's
            per-token IPO; ``sft``, ``ChosenNLL``, takes ``nll_reduction``, ``token`` by default: TRL's token mean
            over the batch).
        ld_alpha: TRL's ``ld_alpha``: score every part's summed log-probs LD-DPO's way (``LDDPO``); None is off.
    """

    @classmethod
    def reference_need(cls, settings: Mapping[str, Any]) -> Need | None:
        if not any(PARTS[name][0].reference_need(options) for name, _, options in _parts(settings["losses"])):
            return None
        return "data" if settings["ld_alpha"] is None else "samples"

    @classmethod
    def reference_owner(cls, settings: Mapping[str, Any]) -> str:
        return cls.__name__ if settings["ld_alpha"] is None else LD_OWNER

    def __init__(self, losses: list[dict[str, Any]], ld_alpha: float | None = None, **kwargs) -> None:
        check_ld_alpha(ld_alpha)
        specs = _parts(losses)
        super().__init__(**kwargs)
        self.ld_alpha = ld_alpha
        names = [name for name, _, _ in specs]
        self.part_names = [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
        self.weights = [weight for _, weight, _ in specs]
        self.parts = [_build(name, options, self.policy) for name, _, options in specs]  # not submodules
        # a part's state (BCO's running reward mean) is a submodule of the mix: it follows the device and checkpoints
        self.term_states = torch.nn.ModuleDict({key: part.term_state for key, part in zip(self.part_names, self.parts)
                                                if getattr(part, "term_state", None) is not None})
        self._last_parts: dict[str, torch.Tensor] = {}

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        outs = [part.pair_loss(chosen, rejected, batch) for part in self.parts]
        self._last_parts = {f"loss/{key}": out.losses.detach() for key, out in zip(self.part_names, outs)}
        total = sum(weight * out.losses for weight, out in zip(self.weights, outs))
        return outs[0]._replace(losses=total)

    def rows_loss(self, logps, batch):
        losses, metrics = super().rows_loss(logps, batch)
        return losses, {**metrics, **self._last_parts}


def _parts(losses: list[dict[str, Any]]) -> list[tuple[str, float, dict[str, Any]]]:
    """``(name, weight, settings)`` of every ``{loss, weight, **settings}`` entry: its settings are the part's
    objective's own (checked by it when built), defaults filled in."""
    if not losses:
        raise ValueError("CombinedPairLoss needs at least one loss")
    return [_part(spec) for spec in losses]


def _part(spec: Mapping[str, Any]) -> tuple[str, float, dict[str, Any]]:
    settings = dict(spec)
    name = settings.pop("loss", None)
    if name not in PARTS:
        raise ValueError(f"unknown pair loss {name!r}; choose from {', '.join(sorted(PARTS))}")
    weight = float(settings.pop("weight", 1.0))
    cls, implied = PARTS[name]
    own = {key: p for key, p in inspect.signature(cls.__init__).parameters.items()
           if key != "self" and p.kind is p.POSITIONAL_OR_KEYWORD and key not in implied}
    unknown = set(settings) - set(own)
    if unknown:
        raise ValueError(f"{name} takes {sorted(own) or 'no settings'}, not {sorted(unknown)}")
    return name, weight, {**{key: p.default for key, p in own.items()}, **implied, **settings}


def _build(name: str, options: dict[str, Any], policy) -> OfflinePairObjective:
    """The part ``name`` on the mix's ``policy`` (a module-level function: its settings are its own hparams)."""
    return PARTS[name][0](policy=policy, share_prompt=False, **options)

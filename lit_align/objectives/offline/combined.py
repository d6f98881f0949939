"""A weighted sum of pairwise losses, chosen in YAML by TRL ``loss_type`` name: no new class per combination."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from lit_align.losses import PreferenceLoss
from lit_align.objectives.offline.pair_terms import PAIR_LOSSES, LengthDesensitizable, check_ld_alpha, check_settings


class CombinedPairLoss(LengthDesensitizable):
    """``sum_i weight_i * loss_i`` over terms of ``pair_terms.PAIR_LOSSES``, e.g. MPO (Wang et al. 2024, TRL's
    ``loss_type: [sigmoid, bco_pair, sft]`` with ``loss_weights: [0.8, 0.2, 1.0]``)::

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
            discopop, aot, aot_unpaired, sigmoid_norm, sft, simpo, orpo, wpo, rpo`` and each loss's settings,
            defaults and checks as in its objective (``ipo`` takes ``length_normalized``: TRL's per-token IPO;
            ``sft`` takes ``nll_reduction``, ``token`` by default: TRL's token mean over the batch).
        ld_alpha: TRL's ``ld_alpha``: score every part's summed log-probs LD-DPO's way (``LDDPO``); None is off.
    """

    def __init__(self, losses: list[dict[str, Any]], ld_alpha: float | None = None, **kwargs) -> None:
        check_ld_alpha(ld_alpha)
        self.parts = [_part(spec) for spec in losses]
        if not self.parts:
            raise ValueError("CombinedPairLoss needs at least one loss")
        if not any(PAIR_LOSSES[name].needs_reference for name, _, _ in self.parts):
            self.needs_reference = None
            self.default_reference = "none"
        super().__init__(**kwargs)
        self.use_ld_alpha(ld_alpha)
        names = [name for name, _, _ in self.parts]
        self.part_names = [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
        # each part's state (BCO's running reward mean) is a submodule, so it follows the device and checkpoints
        self.term_states = torch.nn.ModuleDict()
        for key, (name, _, settings) in zip(self.part_names, self.parts):
            if PAIR_LOSSES[name].state is not None and settings.get("running_mean"):
                self.term_states[key] = PAIR_LOSSES[name].state()
                settings["reward_mean"] = self.term_states[key]
        self._last_parts: dict[str, torch.Tensor] = {}

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        outs = [PAIR_LOSSES[name].term(chosen, rejected, **settings) for name, _, settings in self.parts]
        self._last_parts = {f"loss/{key}": out.losses.detach() for key, out in zip(self.part_names, outs)}
        total = sum(weight * out.losses for (_, weight, _), out in zip(self.parts, outs))
        return outs[0]._replace(losses=total)

    def rows_loss(self, logps, batch):
        losses, metrics = super().rows_loss(logps, batch)
        return losses, {**metrics, **self._last_parts}


_INPUTS = {"chosen", "rejected", "reward_mean", "policy_chosen", "policy_rejected", "reference_chosen",
           "reference_rejected"}


def _part(spec: dict[str, Any]) -> tuple[str, float, dict[str, Any]]:
    """``(name, weight, settings)`` of one ``{loss, weight, **settings}`` entry, its settings checked by name."""
    settings = dict(spec)
    name = settings.pop("loss", None)
    if name not in PAIR_LOSSES:
        raise ValueError(f"unknown pair loss {name!r}; choose from {', '.join(sorted(PAIR_LOSSES))}")
    weight = float(settings.pop("weight", 1.0))
    # a term's signature (or, for a wrapped loss of the four summed log-probs, the loss's) past its inputs
    accepted = set(inspect.signature(PAIR_LOSSES[name].term).parameters) - _INPUTS
    unknown = set(settings) - accepted
    if unknown:
        raise ValueError(f"{name} takes {sorted(accepted) or 'no settings'}, not {sorted(unknown)}")
    return name, weight, check_settings(name, settings)

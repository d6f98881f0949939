"""Offline objectives: a loss over the rows of a batch (``base``: ``OfflineObjective``, ``OfflinePairObjective``,
``RowLogps``) and the thin objectives built on it (DPO and its family, KTO, SFT, PMLE, reward modelling)."""

import importlib


def __getattr__(name: str):
    # lit_align.objectives.offline was the module now named lit_align.objectives.offline.base
    return getattr(importlib.import_module("lit_align.objectives.offline.base"), name)

"""Frozen submodules kept out of checkpoints: the policy's reference pi_0 and an on-policy run's reward model.

Both are rebuilt from their source when a run starts, so their weights in every checkpoint would only add their
size. Saving drops them from the state dict; loading puts the module's own weights back under the same keys,
so that Lightning's strict load still finds every key it expects.
"""

from __future__ import annotations

from torch import nn


def drop_frozen(state: dict | None, prefix: str) -> None:
    """Remove every entry of ``state`` (a checkpoint's ``state_dict``, if it has one) whose key starts ``prefix``."""
    if state is None:
        return
    for key in [k for k in state if k.startswith(prefix)]:
        del state[key]


def restore_frozen(state: dict | None, module: nn.Module | None, prefix: str) -> None:
    """Add the weights of ``module`` to ``state`` under ``prefix``, where it has none of its own."""
    if state is None or module is None:
        return
    for key, value in module.state_dict(prefix=prefix).items():
        state.setdefault(key, value)

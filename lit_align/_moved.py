"""The module paths of earlier versions, kept importable.

Configs, checkpoints, user code and documentation written for lit-align 0.1 name modules of its flat layout
(``lit_align.rollout``, ``lit_align.objectives.dpo``, ...). Each such path is an alias of the module that holds the
code now: importing it returns that very module, so classes, ``isinstance`` checks and patches agree.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: Old module path -> the module that holds its code now.
MOVED: dict[str, str] = {
    "lit_align.forward": "lit_align.models.forward",
    "lit_align.logprobs": "lit_align.models.logprobs",
    "lit_align.chunked_head": "lit_align.models.chunked_head",
    "lit_align.shared_prompt": "lit_align.models.packing",
    "lit_align.fast_path": "lit_align.models.fast_path",
    "lit_align.oracle_lm": "lit_align.models.oracle",
    "lit_align.sharding": "lit_align.distributed.sharding",
    "lit_align.strategies": "lit_align.distributed.strategies",
    "lit_align.checkpoint_io": "lit_align.runs.checkpoint_io",
    "lit_align.run_lock": "lit_align.runs.lock",
    "lit_align.secrets": "lit_align.runs.secrets",
    "lit_align.fingerprints": "lit_align.runs.fingerprints",
    "lit_align.seeds": "lit_align.runs.seeds",
    "lit_align.identity": "lit_align.runs.identity",
    "lit_align.manifest": "lit_align.runs.manifest",
    "lit_align.run_identity": "lit_align.runs.folder",
    "lit_align.outputs": "lit_align.runs.outputs",
    "lit_align.loggers": "lit_align.runs.loggers",
    "lit_align.plot": "lit_align.runs.plot",
    "lit_align.console": "lit_align.runs.console",
    "lit_align.rollout": "lit_align.generation.rollout",
    "lit_align.reference": "lit_align.policy.reference",
    "lit_align.reference_cache": "lit_align.policy.reference_cache",
    "lit_align.frozen": "lit_align.policy.frozen",
    "lit_align.export": "lit_align.policy.export",
    "lit_align.reward_model": "lit_align.rewards.model",
    "lit_align.reward_functions": "lit_align.rewards.functions",
    "lit_align.reward_inputs": "lit_align.rewards.inputs",
    "lit_align.metrics": "lit_align.objectives.metrics",
    "lit_align.schedules": "lit_align.objectives.schedules",
    "lit_align.objectives.dpo": "lit_align.objectives.offline.dpo",
    "lit_align.objectives.pair_terms": "lit_align.objectives.offline.pair_terms",
    "lit_align.objectives.pairwise_losses": "lit_align.objectives.offline.pairwise_losses",
    "lit_align.objectives.pairwise_length": "lit_align.objectives.offline.pairwise_length",
    "lit_align.objectives.combined": "lit_align.objectives.offline.combined",
    "lit_align.objectives.kto": "lit_align.objectives.offline.kto",
    "lit_align.objectives.sft": "lit_align.objectives.offline.sft",
    "lit_align.objectives.pmle": "lit_align.objectives.offline.pmle",
    "lit_align.objectives.reward": "lit_align.objectives.offline.reward",
    "lit_align.objectives.sampled_pairs": "lit_align.objectives.onpolicy.sampled_pairs",
    "lit_align.objectives.distill": "lit_align.objectives.onpolicy.distill",
    "lit_align.objectives.rebel": "lit_align.objectives.onpolicy.rebel",
    "lit_align.objectives.rlhf": "lit_align.objectives.onpolicy.rlhf",
    "lit_align.objectives.rkl": "lit_align.objectives.onpolicy.rkl",
    "lit_align.objectives.group": "lit_align.objectives.onpolicy.group",
    "lit_align.objectives.grpo": "lit_align.objectives.onpolicy.grpo",
    "lit_align.objectives.rloo": "lit_align.objectives.onpolicy.rloo",
    "lit_align.objectives.online_dpo": "lit_align.objectives.onpolicy.online_dpo",
    "lit_align.objectives.reward_stage": "lit_align.objectives.onpolicy.reward_stage",
    "lit_align.cli_help": "lit_align.cli.help",
    "lit_align.run_settings": "lit_align.cli.settings",
    "lit_align.run_errors": "lit_align.cli.errors",
    "lit_align.shipped_configs": "lit_align.cli.shipped_configs",
    "lit_align.trainer": "lit_align.cli.trainer",
}


def old_names(module: str) -> list[str]:
    """The earlier paths of ``module`` (empty when it never moved)."""
    return [old for old, new in MOVED.items() if new == module]


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass  # the target module ran when it was imported


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(MOVED[fullname]))


def install() -> None:
    """Make the old paths importable (once per process)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())

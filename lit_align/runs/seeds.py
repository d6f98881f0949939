"""One seed for the whole run: ``seed_everything`` drives every component's seed unless that seed is set.

The data order (``TextDataModule.seed``), the initialisation of the embedded tiny model (``PolicyWithReference.seed``,
``RewardModeling.seed``) and the reward stage (``RewardStage.seed``) each take ``seed: None`` by default, which
means "the run's ``seed_everything``". ``lit-align`` seeds before it builds any component (LightningCLI's order),
and Lightning's ``seed_everything`` leaves the seed in ``PL_GLOBAL_SEED``, where ``resolve_seed`` reads it; a
component built outside a seeded run gets 0. A seed given explicitly (``--data.seed 3``) is kept as given.

The effective seeds of a fit are recorded in its run manifest (``lit_align.runs.manifest``) and said once at the start:
``seeds: seed_everything 1 -> data order 1, model init 1``.
"""

from __future__ import annotations

import os

#: Where ``lightning.seed_everything`` records the run's seed.
GLOBAL_SEED_ENV = "PL_GLOBAL_SEED"


def global_seed() -> int | None:
    """The run's ``seed_everything`` value, or None when the run was not seeded."""
    value = os.environ.get(GLOBAL_SEED_ENV, "")
    try:
        return int(value)
    except ValueError:
        return None


def resolve_seed(seed: int | None) -> int:
    """``seed`` when given, else the run's ``seed_everything`` (0 in an unseeded process)."""
    if seed is not None:
        return int(seed)
    found = global_seed()
    return 0 if found is None else found


def effective_seeds(pl_module, datamodule) -> dict[str, int | None]:
    """The seeds a run uses, by what they drive: ``{"seed_everything": 1, "data_order": 1, "model_init": 1, ...}``
    (a component the run does not have is left out)."""
    seeds: dict[str, int | None] = {"seed_everything": global_seed()}
    data_seed = getattr(datamodule, "seed", None)
    if data_seed is not None:
        seeds["data_order"] = data_seed
    # the policy's initialisation seed, else the objective's own (a reward model trained from scratch)
    owners = (getattr(pl_module, "policy", None), pl_module)
    model_seed = next((owner.seed for owner in owners if isinstance(getattr(owner, "seed", None), int)), None)
    if model_seed is not None:
        seeds["model_init"] = model_seed
    stage = getattr(pl_module, "reward_stage", None)
    if stage is not None and getattr(stage, "effective_seed", None) is not None:
        seeds["reward_stage"] = stage.effective_seed
    return seeds


def describe_seeds(seeds: dict[str, int | None]) -> str:
    """``seeds: seed_everything 1 -> data order 1, model init 1`` for the run's log."""
    parts = [f"{name.replace('_', ' ')} {value}" for name, value in seeds.items() if name != "seed_everything"]
    return f"seeds: seed_everything {seeds.get('seed_everything')} -> {', '.join(parts) or 'none used'}"

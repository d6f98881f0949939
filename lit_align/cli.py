"""The ``lit-align`` command: a LightningCLI with lit-align's objectives, data and defaults.

    lit-align fit --config configs/dpo.yaml
    lit-align fit --config configs/dpo.yaml --model.beta 0.05 --trainer.max_steps 20
    lit-align fit --model DPO --data PreferenceDataModule          # short names
    lit-align fit --model my_package.MyObjective --data ...        # your own subclass
    lit-align fit --config configs/dpo.yaml --ckpt_path last       # resume
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

import lit_align.data  # noqa: F401  (registers the DataModules for short names)
import lit_align.objectives  # noqa: F401  (registers the objectives for short names)
from lit_align.callbacks import AlignCheckpoint, HFExport
from lit_align.data.base import TextDataModule
from lit_align.objectives.base import AlignmentModule


class LitAlignCLI(LightningCLI):
    """LightningCLI with a checkpoint that keeps ``last`` (and the best by ``val/loss``), an HF export at the end
    of ``fit``, a CSV logger under the run directory, and the run directory named after the objective."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(AlignCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_top_k": 1,
            "checkpoint.filename": "step{step}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(HFExport, "export")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config["trainer"]
        if trainer.get("default_root_dir") is None:
            model = config.get("model")
            name = str(getattr(model, "class_path", "run")).rsplit(".", 1)[-1].lower()
            trainer["default_root_dir"] = os.path.join("runs", name)
        if trainer.get("logger") in (None, True):
            trainer["logger"] = {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": trainer["default_root_dir"], "name": "logs"},
            }


def build_cli(args: list[str] | None = None, run: bool = True) -> LitAlignCLI:
    """Parse ``args`` (default: the command line) and, with ``run``, execute the subcommand."""
    return LitAlignCLI(
        AlignmentModule,
        TextDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        parser_kwargs={"default_env": False},
    )


def main() -> None:
    """Console entry point of ``lit-align``."""
    build_cli(sys.argv[1:])


if __name__ == "__main__":
    main()

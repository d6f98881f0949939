"""The ``lit-align`` command: a LightningCLI with lit-align's objectives, data and defaults.

    lit-align fit --config configs/dpo.yaml
    lit-align fit --config configs/dpo.yaml --model.beta 0.05 --trainer.max_steps 20
    lit-align fit --model DPO --data PreferenceDataModule          # short names
    lit-align fit --model my_package.MyObjective --data ...        # your own subclass
    lit-align fit --config configs/dpo.yaml --ckpt_path last       # resume
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.loggers import CSVLogger

import lit_align.data  # noqa: F401  (registers the DataModules for short names)
import lit_align.objectives  # noqa: F401  (registers the objectives for short names)
from lit_align.callbacks import AlignCheckpoint, HFExport, NonFiniteError, NonFiniteGuard, PredictionWriter
from lit_align.callbacks.console import RunSummary, progress_bar
from lit_align.cli.entry import answered, exit_with_one_line
from lit_align.cli.help import config_help, help_request, short_help
from lit_align.runs.console import quiet_console, strip_verbose_flag
from lit_align.runs.plot import main as plot_main
from lit_align.cli.shipped_configs import resolve_config_args
from lit_align.runs.checkpoint_io import CheckpointLoadError
from lit_align.data.sources import DataError
from lit_align.errors import UserError
from lit_align.runs.loggers import resolve_logger_dirs, with_logger_save_dir
from lit_align.models.loading import ModelLoadError
from lit_align.data.base import TextDataModule
from lit_align.objectives.base import AlignmentModule
from lit_align.runs.outputs import RunCheckpointIO, unplaced_disk_errors
from lit_align.cli.errors import one_line_errors_of_run
from lit_align.runs.folder import mark_resuming
from lit_align.runs.lock import lock_run_folders
from lit_align.cli.settings import (apply_step_limit, check_bounded, check_trainer_settings, instantiate_checked,
                                    map_optimisation_settings, one_line_parse_errors)
from lit_align.runs.secrets import MaskingStream, mask_logged_hyperparameters, redact_file, refuse_keys_as_names
from lit_align.distributed.strategies import lost_rank_message
from lit_align.cli.trainer import AlignTrainer


# The frozen reference (and reward model) are in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


class RedactingSaveConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` like Lightning, then masks any credential found in it (see ``lit_align.runs.secrets``)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        log_dir = trainer.log_dir if self.save_to_log_dir else None  # a collective: every rank asks
        super().setup(trainer, pl_module, stage)
        if log_dir is not None and trainer.is_global_zero:
            redact_file(os.path.join(log_dir, self.config_filename))


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
            # a re-run into the same directory replaces its files instead of adding last-v1.ckpt, last-v2.ckpt, ...
            "checkpoint.enable_version_counter": False,
            # one line from RunSummary instead of Lightning's table (whose FLOPs column reads 0 for these models)
            "trainer.enable_model_summary": False,
        })
        parser.add_lightning_class_args(HFExport, "export")
        parser.add_lightning_class_args(NonFiniteGuard, "numerics")
        parser.add_lightning_class_args(PredictionWriter, "predictions")

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # `evaluate` runs AlignTrainer.evaluate: sampling, judging and the win-rate / KL report.
        return {**LightningCLI.subcommands(), "evaluate": {"model", "dataloaders", "datamodule"}}

    def _parse_ckpt_path(self) -> None:
        # Lightning loads a --ckpt_path file's hyperparameters over the parsed config, so `--model.beta 0.5`
        # (or a --config) would be silently replaced by the checkpoint's value. Here the parsed config wins;
        # a resume is checked against the checkpoint's run manifest instead (AlignCheckpoint, lit_align.runs.manifest),
        # and the file is read only by the checkpoint IO, which verifies it and never unpickles objects.
        return

    def parse_arguments(self, parser, args) -> None:
        # `--print_config` prints through the masking stream; a bad precision or a misspelt key is one line (with
        # the nearest names), not a page of types.
        subparsers = getattr(self, "_subcommand_parsers", {}).values()
        if not isinstance(args, dict):  # a logger named by class alone writes under the run folder (lit_align.runs.loggers)
            given = sys.argv[1:] if args is None else list(args)
            completed = with_logger_save_dir(given)
            if completed != given:
                if args is None:
                    sys.argv[1:] = completed  # the ranks Lightning launches re-read sys.argv
                else:
                    args = completed
        self.command_line = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        with contextlib.redirect_stdout(MaskingStream(sys.stdout)), one_line_parse_errors(parser, *subparsers):
            super().parse_arguments(parser, args)

    @one_line_errors_of_run  # what Lightning and torch raise once the run is built: one line (lit_align.cli.errors)
    def _run_subcommand(self, subcommand: str) -> None:
        # One fit per run folder at a time (lit_align.runs.lock), taken by global rank 0 only, before the trainer
        # writes anything, and released however the fit ends.
        if subcommand == "fit":  # a fresh fit is checked against the run the folder holds (lit_align.runs.folder)
            mark_resuming(self.trainer, self.config_init[subcommand].get("ckpt_path"))
        if subcommand != "fit" or not _is_rank_zero(self.trainer):
            return super()._run_subcommand(subcommand)
        with lock_run_folders(self.trainer, self.model):  # and every folder the fit writes
            return super()._run_subcommand(subcommand)

    def instantiate_trainer(self, **kwargs):
        kwargs = {**console_callbacks(self.config_init.get(self.subcommand, self.config_init)["trainer"]), **kwargs}
        trainer = instantiate_checked(super().instantiate_trainer, **kwargs)
        # Atomic checkpoint writes unless a CheckpointIO plugin was given (`trainer.plugins`).
        if getattr(trainer.strategy, "_checkpoint_io", None) is None:
            trainer.strategy.checkpoint_io = RunCheckpointIO()
        for logger in trainer.loggers:  # hparams.yaml and the like get a masked copy (lit_align.runs.secrets)
            mask_logged_hyperparameters(logger)
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = config["trainer"]
        if trainer.get("default_root_dir") is None:
            model = config.get("model")
            name = str(getattr(model, "class_path", "run")).rsplit(".", 1)[-1].lower()
            trainer["default_root_dir"] = os.path.join("runs", name)
        apply_step_limit(trainer, getattr(self, "command_line", []))  # --trainer.max_steps N means N steps
        if config.get("model") is not None:  # gradient_clip_val -> model.max_grad_norm; on-policy: no accumulation
            map_optimisation_settings(trainer, config["model"], _optimises_by_hand(config["model"]))
        if self.subcommand == "fit":
            check_bounded(trainer)
        check_trainer_settings(trainer, config)  # run folder, max_steps; a fast_dev_run moves to <root>/debug
        resolve_logger_dirs(trainer, config.get("model"))  # run folder, names, MLflow's store
        refuse_keys_as_names(config)  # a key typed as judge.api_key_env: refused before any message shows it
        if trainer.get("enable_checkpointing") is False:
            # Lightning refuses a ModelCheckpoint next to enable_checkpointing=False, and the CLI always adds
            # one: keep it, writing nothing, so the standard switch does what it says.
            trainer["enable_checkpointing"] = True
            for key, value in {"save_last": False, "save_top_k": 0, "monitor": None, "every_n_train_steps": None}.items():
                config["checkpoint"][key] = value
        if trainer.get("logger") in (None, True):
            trainer["logger"] = {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": trainer["default_root_dir"], "name": "logs"},
            }


def console_callbacks(trainer_config) -> dict:
    """The run's callbacks plus ``RunSummary`` and, unless the progress bar is off or the user chose one,
    ``progress_bar()`` (a bar on a terminal, plain lines otherwise): Trainer keyword arguments for ``instantiate_trainer``."""
    callbacks = trainer_config.get("callbacks") or []
    callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    extra = [RunSummary()]
    if trainer_config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks):
        extra.append(progress_bar())
    return {"callbacks": callbacks + extra}


def build_cli(args: list[str] | None = None, run: bool = True) -> LitAlignCLI:
    """Parse ``args`` (default: the command line) and, with ``run``, execute the subcommand."""
    return LitAlignCLI(
        AlignmentModule,
        TextDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_class=AlignTrainer,
        auto_configure_optimizers=False,
        save_config_callback=RedactingSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        parser_kwargs={"default_env": False},
        # one seed drives every component (lit_align.runs.seeds): reproducible unless asked, and a resume's data order
        seed_everything_default=0,
    )


#: Errors whose message says what is wrong with the user's input; shown as one line instead of a traceback.
USER_ERRORS = (UserError, DataError, ModelLoadError, CheckpointLoadError, NonFiniteError, FileNotFoundError, ValueError)
#: Exit status of a run stopped by SIGTERM after saving its checkpoint (128 + 15, the shell's convention), so
#: job scripts and restart policies can tell a preempted run from a finished one.
EXIT_PREEMPTED = 143
#: Exit status of a rank whose peer went away mid-run (a generic failure, as an uncaught error would give).
EXIT_LOST_RANK = 1


def main(args: list[str] | None = None) -> None:
    """Console entry point of ``lit-align``: bad input ends with one line naming the problem and exit status 2
    (``LIT_ALIGN_DEBUG=1`` shows the traceback instead); SIGTERM saves ``last.ckpt`` and exits with 143.
    Other libraries' console noise is silenced for the run unless ``--verbose`` (see ``lit_align.runs.console``).
    The working directory is importable, as under ``python -m``: ``--model my_objectives.HingeDPO`` finds
    ``./my_objectives.py``. A ``--config`` naming no file here but a shipped config runs that config."""
    given = sys.argv[1:] if args is None else list(args)
    if answered(given):  # the help and ``configs``: no run (lit_align.cli.entry, which lit-align starts in)
        return None
    with importable_working_directory():
        if given[:1] == ["plot"]:
            return _run_user_command(lambda: plot_main(given[1:]))
        _run_cli(given, from_sys_argv=args is None)


def _run_cli(given: list[str], from_sys_argv: bool) -> None:
    given = resolve_config_args(given)
    request = help_request(given)
    if request is not None and request[1] != "all":
        text = config_help(request[0], given) if request[1] == "config" else None
        return print(text or short_help(request[0]))
    if request is not None:  # `--help all`: LightningCLI's own, complete help
        del given[given.index("all")]
    given = strip_verbose_flag(given)
    if from_sys_argv:
        sys.argv[1:] = given  # LightningCLI (and the ranks Lightning launches) read sys.argv itself
    quiet_console()
    try:
        with unplaced_disk_errors():  # a full disk under a logger or sample writer: one line too
            build_cli(None if from_sys_argv else given)
    except SIGTERMException:
        print("lit-align: stopped by SIGTERM after saving last.ckpt; resume with --ckpt_path last", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except USER_ERRORS as err:
        _exit_with_one_line(err)
    except RuntimeError as err:
        # another rank went away mid-collective: one line on each surviving rank, not a traceback per rank
        message = lost_rank_message(err)
        if message is None:
            raise
        _exit_with_one_line(err, message, EXIT_LOST_RANK)


@contextlib.contextmanager
def importable_working_directory():
    """The working directory first on ``sys.path`` while ``lit-align`` runs (a console script has its own folder
    there instead), so class paths and reward functions in the user's own modules import as documented."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _exit_with_one_line(err: BaseException, message: str | None = None, status: int = 2) -> None:
    """``exit_with_one_line`` (lit_align.cli.entry) with the error a class raised, not jsonargparse's wrapper."""
    exit_with_one_line(err if message is not None else _unwrap(err), message, status)


def _run_user_command(command) -> None:
    """Run a command outside LightningCLI (``plot``) with the same one-line errors."""
    try:
        command()
    except USER_ERRORS as err:
        _exit_with_one_line(err)


def _unwrap(err: BaseException) -> BaseException:
    """The error a class raised, not jsonargparse's wrapper around it ("Does not validate against ... Union")."""
    while True:
        inner = err.__cause__ or err.__context__
        if not isinstance(inner, USER_ERRORS) or not _raised_in(err, "jsonargparse"):
            return err
        err = inner


def _optimises_by_hand(model) -> bool:
    """Whether the objective the ``model`` section names optimises by hand (the on-policy objectives)."""
    from jsonargparse._util import import_object

    from lit_align.objectives.onpolicy.base import OnPolicyObjective

    class_path = getattr(model, "class_path", None)
    cls = import_object(class_path) if isinstance(class_path, str) else None
    return isinstance(cls, type) and issubclass(cls, OnPolicyObjective)


def _is_rank_zero(trainer) -> bool:
    """Whether this process is global rank 0, asked before the trainer sets up its processes: from the cluster
    environment's node and local rank (the environment variables the launcher set), 0 for one process."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None:
        return True
    return environment.node_rank() == 0 and environment.local_rank() == 0


def _raised_in(err: BaseException, package: str) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}{package}{os.sep}" in tb.tb_frame.f_code.co_filename


if __name__ == "__main__":
    main()

"""A quiet console for ``lit-align`` runs.

A run prints Lightning's progress bar and lit-align's own one-line messages (which data, rows kept and dropped,
the reference cache, the reward stage, where checkpoints and the export went). Other libraries' progress bars,
adverts, and the warnings a user of lit-align cannot act on (a dependency's internal deprecations, choices
lit-align makes on purpose) are silenced at their source, for the ``lit-align`` process only: importing
``lit_align`` as a library changes nothing. ``--verbose`` on the command line, or ``LIT_ALIGN_VERBOSE=1``,
keeps every line.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "LIT_ALIGN_VERBOSE"

#: Lightning's info lines that say nothing a run's user acts on (the device line is in lit-align's own summary).
LIGHTNING_NOISE = (
    "GPU available:", "TPU available:", "HPU available:", "Seed set to", "💡 Tip:",
    "Loading `train_dataloader` to estimate number of stepping batches",
    "You are using a CUDA device",  # the TF32 hint: set in the config's precision instead
    "`Trainer(limit_",  # an echo of a limit the user set
    "Experiment with name",  # MLflow: "... not found. Creating it." (the summary names the experiment and run)
)

#: Warnings from dependencies, as (message regex, module regex), that are about their internals or about what
#: lit-align does on purpose.
QUIET_WARNINGS = (
    (r".*isinstance\(treespec, LeafSpec\)", r""),  # Lightning's use of a torch internal
    (r".*Total length of `.*` across ranks is zero", r""),  # a run without validation data
    (r".*The dirpath has changed from", r""),  # validate/test/predict read a checkpoint of another run folder
    (r".*gradient checkpointing", r""),  # transformers' FutureWarnings about its own defaults
    (r".*does not have many workers", r""),  # the tokenised examples are in memory: workers would not help
    (r".*torch.distributed.nn.functional.all_gather is deprecated", r""),
    (r".*It is recommended to use `self.log\(.*sync_dist=True\)", r""),  # metrics are reduced by lit-align
    (r".*The number of training batches \(\d+\) is smaller than the logging interval", r""),
    (r".*Checkpoint directory .* exists and is not empty", r""),  # the run folder's own last.ckpt, on purpose
    # the CLI fills a YAML `lora:`'s loftq_config with LoftQConfig's defaults, which peft then says it ignores
    (r".*`loftq_config` specified but will be ignored", r""),
)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _DropLines(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(self.prefixes)


def quiet_console() -> None:
    """Silence other libraries' noise for this process (a no-op with ``LIT_ALIGN_VERBOSE=1``)."""
    if is_verbose():
        return
    drop = _DropLines(LIGHTNING_NOISE)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_utilities"):
        logger = logging.getLogger(name)
        logger.addFilter(drop)
        for handler in logger.handlers:
            handler.addFilter(drop)  # records of child loggers are filtered at the handler, not the parent logger
    for message, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    _quiet_hugging_face()


def _quiet_hugging_face() -> None:
    # transformers: the "Loading weights" / "Writing model shards" bars and the load report table (with raw ANSI
    # codes in log files); datasets: "Generating train split" bars and cache messages.
    import datasets
    import transformers

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # an old hub client: nothing to silence
        pass


def strip_verbose_flag(args: list[str]) -> list[str]:
    """Remove ``--verbose`` from the command line and turn on verbose mode (inherited by spawned ranks)."""
    if "--verbose" not in args:
        return args
    os.environ[VERBOSE_ENV] = "1"
    return [a for a in args if a != "--verbose"]


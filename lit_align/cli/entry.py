"""What ``lit-align`` answers without a run, before torch, Lightning or transformers are imported (``lit-align
--help``, ``lit-align SUBCOMMAND --help``, ``lit-align configs ...``), and its one-line errors. ``lit_align.cli:main``
asks here first; everything else goes to ``lit_align.cli.app``, which builds the LightningCLI."""

from __future__ import annotations

import os
import sys

from lit_align.cli.help import SUBCOMMANDS, help_request, short_help, top_help
from lit_align.cli.shipped_configs import main as configs_main, resolve_config_args
from lit_align.errors import UserError

DEBUG_ENV = "LIT_ALIGN_DEBUG"


def answered(given: list[str]) -> bool:
    """Answer ``given`` (the arguments after ``lit-align``) if it needs no run: ``--help`` (nothing given: the same
    and exit status 2), ``SUBCOMMAND --help`` (without ``--config``, ``all``) and ``configs ...``; whether it did."""
    if not given or given[0] in ("-h", "--help"):
        print(top_help())
        return True if given else sys.exit(2)
    if given[0] == "configs":
        try:
            configs_main(given[1:])
        except (UserError, FileNotFoundError, ValueError) as err:  # what the configs command raises for bad input
            exit_with_one_line(err)
        return True
    if given[0] in SUBCOMMANDS and help_request(resolve_config_args(given)) == (given[0], "short"):
        print(short_help(given[0]))
        return True
    return False


def exit_with_one_line(err: BaseException, message: str | None = None, status: int = 2) -> None:
    """``lit-align: error: <message>`` (default: the error's own, on one line) and exit ``status``; with
    ``LIT_ALIGN_DEBUG=1`` the traceback instead."""
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        raise err
    if message is None:
        message = " ".join(str(err).split()) or type(err).__name__
    print(f"lit-align: error: {message}", file=sys.stderr)
    print(f"(set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
    sys.exit(status)

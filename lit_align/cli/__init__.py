"""The ``lit-align`` command: ``main`` (``lit_align.cli:main``), its help, run settings, one-line errors and the
shipped configs. ``main`` answers the help and ``configs`` without importing torch (``lit_align.cli.entry``) and
imports ``lit_align.cli.app`` only for a run."""

from __future__ import annotations

import sys

from lit_align._lazy import lazy_exports
from lit_align.cli.entry import answered

__all__ = ["LitAlignCLI", "build_cli", "main"]
__getattr__, _ = lazy_exports(__name__, {"LitAlignCLI": "lit_align.cli.app", "build_cli": "lit_align.cli.app"})


def __dir__() -> list[str]:
    return sorted(__all__)


def main(args: list[str] | None = None) -> None:
    """Console entry point of ``lit-align``: the help and ``configs`` answered at once, any other command run by
    ``lit_align.cli.app.main`` (see there: one-line errors, SIGTERM, the working folder importable)."""
    if answered(sys.argv[1:] if args is None else list(args)):
        return None
    from lit_align.cli.app import main as run

    return run(args)

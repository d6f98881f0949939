"""The ``lit-align`` command: ``main`` (``lit_align.cli:main``), its help, run settings, one-line errors and the
shipped configs."""

from lit_align.cli.app import LitAlignCLI, build_cli, main

__all__ = ["LitAlignCLI", "build_cli", "main"]

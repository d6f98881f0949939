"""The shipped configs, reachable wherever lit-align is installed.

The YAML files of the repository's ``configs/`` folder are installed inside the package as ``lit_align/configs``
(pyproject.toml maps the folder), so a ``pip install`` user has them too:

    lit-align configs                       # every shipped config with its first comment line
    lit-align configs show offline/simpo    # print one
    lit-align configs copy dpo [DEST]       # copy one into the working folder (default: ./dpo.yaml)
    lit-align fit --config pdistill         # a name is the shipped file when no such path exists here

A ``--config`` value that is an existing file is always that file. Otherwise a name (``pdistill``,
``offline/simpo``, ``tldr/dpo``; with or without ``.yaml`` and a leading ``configs/``) is looked up among the
shipped configs, so the documented ``--config configs/pdistill.yaml`` works from any folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from lit_align.errors import UserError

SUFFIX = ".yaml"


def configs_root() -> Path:
    """The folder of the shipped configs: ``lit_align/configs`` in an installed wheel, the repository's
    ``configs/`` in a source checkout (an editable install maps no data folder)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def shipped_names() -> list[str]:
    """Every shipped config's name: its path under the configs folder, without ``.yaml`` (``offline/simpo``)."""
    root = configs_root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}"))


def shipped_path(name: str) -> Path | None:
    """The shipped file a name stands for (``dpo``, ``dpo.yaml``, ``configs/dpo.yaml``), or None."""
    name = name.replace("\\", "/")
    name = name[len("configs/"):] if name.startswith("configs/") else name
    name = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    path = configs_root() / f"{name}{SUFFIX}"
    return path if name and ".." not in name.split("/") and path.is_file() else None


def resolve_config_args(args: list[str]) -> list[str]:
    """``args`` with every ``--config VALUE`` (or ``--config=VALUE``) that names no existing file but a shipped
    config replaced by that config's path; other arguments unchanged."""
    resolved = list(args)
    for i, token in enumerate(resolved):
        if token == "--config" and i + 1 < len(resolved):
            resolved[i + 1] = _resolve(resolved[i + 1])
        elif token.startswith("--config="):
            resolved[i] = "--config=" + _resolve(token.split("=", 1)[1])
    return resolved


def _resolve(value: str) -> str:
    if Path(value).exists():
        return value
    shipped = shipped_path(value)
    return str(shipped) if shipped is not None else value


def description(path: Path) -> str:
    """The first comment line of a config, without its ``#``."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def _named(name: str) -> Path:
    path = shipped_path(name)
    if path is None:
        import difflib

        near = difflib.get_close_matches(name, shipped_names(), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise UserError(f"no shipped config named {name!r}{hint} (lit-align configs lists them)")
    return path


def copy_config(name: str, dest: str | None = None) -> Path:
    """Copy a shipped config to ``dest`` (a file, or a folder to copy into; default: ``./<file name>``); never
    replaces an existing file."""
    source = _named(name)
    target = Path(dest) if dest is not None else Path(source.name)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise UserError(f"{target} already exists: give another destination (lit-align configs copy {name} DEST)")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def main(argv: list[str]) -> None:
    """``lit-align configs [list | show NAME | copy NAME [DEST]]``."""
    parser = argparse.ArgumentParser(prog="lit-align configs", description="The configs shipped with lit-align.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("list", help="every shipped config with its first comment line (the default)")
    show = commands.add_parser("show", help="print a shipped config")
    show.add_argument("name", help="a name from the list, e.g. dpo or offline/simpo")
    copy = commands.add_parser("copy", help="copy a shipped config into the working folder")
    copy.add_argument("name", help="a name from the list, e.g. dpo or offline/simpo")
    copy.add_argument("dest", nargs="?", default=None, help="a file or folder (default: ./NAME.yaml)")
    args = parser.parse_args(argv)
    if args.command == "show":
        print(_named(args.name).read_text(), end="")
    elif args.command == "copy":
        target = copy_config(args.name, args.dest)
        print(f"copied {args.name} to {target}; run it with: lit-align fit --config {target}")
    else:
        try:
            _print_list()
        except BrokenPipeError:  # `lit-align configs | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _print_list() -> None:
    names = shipped_names()
    pad = max(len(n) for n in names) + 2
    for name in names:
        print(f"{name:<{pad}}{description(configs_root() / f'{name}{SUFFIX}')}")
    print("\nlit-align fit --config NAME runs one; lit-align configs copy NAME puts a copy here to edit.")

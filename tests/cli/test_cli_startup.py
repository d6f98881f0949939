"""What ``lit-align`` costs before any work: the help answered without torch, datasets imported only to read."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from lit_align.cli.catalogue import DATA_MODULES, OBJECTIVES
from lit_align.cli.help import catalogue_of_classes, short_help

PACKAGE = Path(__file__).resolve().parents[2] / "lit_align"
HEAVY = ("torch", "lightning", "transformers", "datasets")

ANSWER_WITHOUT_IMPORTS = r"""
import contextlib, io, json, sys
from lit_align.cli import main
shown = {}
for args in (["fit", "--help"], ["--help"], ["evaluate", "-h"], ["configs"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(args)
    shown[" ".join(args)] = out.getvalue()
print(json.dumps({"heavy": sorted(m for m in HEAVY if m in sys.modules), "shown": shown}))
"""


def test_help_and_configs_are_answered_before_torch_is_imported():
    code = f"HEAVY = {HEAVY!r}\n" + ANSWER_WITHOUT_IMPORTS
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["heavy"] == []
    assert answer["shown"]["fit --help"].strip() == short_help("fit")
    assert "subcommands:" in answer["shown"]["--help"] and "dpo" in answer["shown"]["configs"]


def test_the_help_catalogue_lists_the_exported_classes():
    objectives, data_modules = catalogue_of_classes()
    assert objectives == OBJECTIVES, "update lit_align/cli/catalogue.py (OBJECTIVES) to the classes exported"
    assert data_modules == DATA_MODULES, "update lit_align/cli/catalogue.py (DATA_MODULES) to the classes exported"


def _imported_at_import_time(tree: ast.Module) -> set[str]:
    """Top-level module names a module imports when it is imported (not inside functions or ``if TYPE_CHECKING``)."""
    names, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            todo += node.body + node.orelse
        elif isinstance(node, (ast.Try, ast.With)):
            todo += node.body + getattr(node, "orelse", []) + [h for handler in getattr(node, "handlers", [])
                                                                 for h in handler.body]
    return names


def test_datasets_is_imported_only_where_rows_are_read():
    eager = [str(path.relative_to(PACKAGE.parent)) for path in sorted(PACKAGE.rglob("*.py"))
             if "datasets" in _imported_at_import_time(ast.parse(path.read_text()))]
    assert eager == [], f"import datasets inside the function that reads rows (about 0.6 s, 80 MiB): {eager}"

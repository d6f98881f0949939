"""Every module imports, with no import cycle among them, and ``lit_align.callbacks`` is the project's top-level
callbacks/ folder, installed under the package (no stray top-level ``callbacks`` package)."""

import ast
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import lit_align

ROOT = Path(__file__).resolve().parents[1]


def _modules():
    import lit_align.callbacks

    names = {"lit_align", "lit_align.callbacks"}
    names |= {info.name for info in pkgutil.walk_packages(lit_align.__path__, prefix="lit_align.")}
    # an editable install maps lit_align.callbacks from callbacks/, outside lit_align/'s folder: walk it too
    names |= {info.name for info in pkgutil.walk_packages(lit_align.callbacks.__path__, prefix="lit_align.callbacks.")}
    return sorted(names)


def test_walk_finds_the_callbacks_subpackage():
    names = _modules()
    assert "lit_align.callbacks" in names and "lit_align.callbacks.checkpoint" in names
    assert {"lit_align.cli", "lit_align.losses", "lit_align.objectives.dpo", "lit_align.data.formats"} <= set(names)


@pytest.mark.parametrize("name", _modules())
def test_module_imports(name):
    importlib.import_module(name)


def _module_imports(name: str, own: set[str], everywhere: bool = False) -> set[str]:
    """The project modules ``name`` imports when it is loaded (imports inside functions and under
    ``TYPE_CHECKING`` are not run then; ``everywhere`` counts them too), each with the packages above it, whose
    ``__init__`` runs first; except the packages above ``name`` itself, which are already being initialised when
    it loads."""
    module = importlib.import_module(name)
    is_package = hasattr(module, "__path__")
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(body) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[: len(name.split(".")) + is_package - node.level]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                found.add(source)
                found.update(f"{source}.{alias.name}" for alias in node.names)  # `from package import module`
            elif isinstance(node, ast.If) and not everywhere:  # ast.walk reaches every nested node itself
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try) and not everywhere:
                visit(node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body])

    visit(list(ast.walk(tree)) if everywhere else tree.body)
    edges = set()
    for imported in found:
        parts = imported.split(".")
        for end in range(1, len(parts) + 1):
            target = ".".join(parts[:end])
            if target in own and target != name and not name.startswith(target + "."):
                edges.add(target)
    return edges


@pytest.mark.parametrize("everywhere", [False, True], ids=["at-load", "anywhere"])
def test_no_import_cycle(everywhere):
    """A cycle (a -> ... -> a among top-level imports) fails as soon as a module of it is imported first, whatever
    the order that happens to work elsewhere; a lazy import inside a function (or under ``TYPE_CHECKING``) only
    hides it, so imports anywhere in a file count too (``anywhere``)."""
    own = set(_modules())
    graph = {name: _module_imports(name, own, everywhere) for name in own}
    state: dict[str, str] = {}

    def cycle_from(name: str, path: list[str]) -> list[str] | None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target] if target in path else [name, target]
            if target not in state:
                found = cycle_from(target, path + [target])
                if found:
                    return found
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            found = cycle_from(name, [name])
            assert found is None, "import cycle: " + " -> ".join(found)


def test_the_reward_stage_chain_is_plain_top_level_imports():
    """onpolicy -> reward_stage -> objectives.reward, imported when each module loads (the cycle test above then
    says the chain has no way back): no lazy import hiding a cycle."""
    own = set(_modules())
    assert "lit_align.objectives.reward_stage" in _module_imports("lit_align.objectives.onpolicy", own)
    assert "lit_align.objectives.reward" in _module_imports("lit_align.objectives.reward_stage", own)


def test_lit_align_callbacks_is_the_callbacks_folder():
    import lit_align.callbacks

    assert Path(lit_align.callbacks.__file__).resolve() == ROOT / "callbacks" / "__init__.py"
    assert hasattr(lit_align.callbacks, "AlignCheckpoint") and hasattr(lit_align.callbacks, "HFExport")


def test_no_top_level_callbacks_package_installed(tmp_path):
    """From a directory outside the repository (so the working directory is not on the path), the installed
    distribution offers ``lit_align.callbacks`` and no top-level ``callbacks``."""
    code = (
        "import importlib.util, lit_align.callbacks as c; "
        "print(importlib.util.find_spec('callbacks') is None); print(c.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "True", "a top-level `callbacks` package is importable"
    assert out[1].endswith(os.path.join("callbacks", "__init__.py"))
    assert "lit_align.callbacks" in (ROOT / "pyproject.toml").read_text()

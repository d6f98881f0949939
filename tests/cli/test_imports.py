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

ROOT = Path(__file__).resolve().parents[2]


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
    assert {"lit_align.cli", "lit_align.losses", "lit_align.objectives.offline.dpo", "lit_align.data.formats"} <= set(names)


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
    assert "lit_align.objectives.onpolicy.reward_stage" in _module_imports("lit_align.objectives.onpolicy.base", own)
    assert "lit_align.objectives.offline.reward" in _module_imports("lit_align.objectives.onpolicy.reward_stage", own)


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


#: The packages from the bottom up; a module imports only from its own package or one before it. ``objectives``
#: itself (its base class, metrics, schedules) sits below its two families; an offline objective never reaches
#: up into the on-policy ones.
LAYERS = (
    ("lit_align.errors", "lit_align._lazy", "lit_align._moved"),
    ("lit_align.losses",),
    ("lit_align.models",),
    ("lit_align.distributed",),
    ("lit_align.runs",),
    ("lit_align.data",),
    ("lit_align.environments",),  # chat messages only; generation's episodes render them into tokens
    ("lit_align.generation",),
    ("lit_align.policy",),
    ("lit_align.rewards",),
    ("lit_align.evaluation",),
    ("lit_align.objectives.base", "lit_align.objectives.metrics", "lit_align.objectives.schedules"),
    ("lit_align.objectives.offline",),
    ("lit_align.objectives.onpolicy", "lit_align.objectives"),  # the package's __init__ gathers every objective
    ("lit_align.callbacks",),
    ("lit_align.cli",),
)


def _layer(name: str) -> int:
    best = (-1, -1)
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                best = max(best, (len(prefix), rank))
    assert best[1] >= 0, f"{name} is in no layer: add its package to LAYERS"
    return best[1]


def test_every_module_has_a_layer():
    for name in _modules():
        if name != "lit_align":
            _layer(name)


def test_imports_point_down():
    """Every import, at load or inside a function, goes to the module's own package or one below it."""
    own = set(_modules())
    upward = [
        f"{name} -> {target}"
        for name in sorted(own - {"lit_align"})
        for target in sorted(_module_imports(name, own, everywhere=True) - {"lit_align"})
        if _layer(target) > _layer(name)
    ]
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_the_top_level_has_no_loose_modules():
    """The package's top holds packages; the only modules beside them are the shared errors and internals."""
    loose = {p.name for p in (ROOT / "lit_align").glob("*.py")}
    assert loose == {"__init__.py", "errors.py", "_lazy.py", "_moved.py"}, sorted(loose)


def test_old_module_paths_are_the_new_modules():
    """Every path of the flat layout imports, as the very module that holds its code now."""
    from lit_align._moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    import lit_align.objectives.offline as offline
    import lit_align.objectives.onpolicy as onpolicy
    from lit_align.objectives.offline.base import OfflineObjective
    from lit_align.objectives.onpolicy.base import OnPolicyObjective

    assert offline.OfflineObjective is OfflineObjective and onpolicy.OnPolicyObjective is OnPolicyObjective
    assert lit_align.PolicyWithReference.__module__ == "lit_align.policy.with_reference"


def test_every_package_folder_is_a_tracked_package():
    """A folder of modules under lit_align/ without a committed ``__init__.py`` imports in a checkout (as a namespace
    package) but is left out of the wheel; an ignore rule once hid lit_align/runs/__init__.py from git."""
    listed = subprocess.run(["git", "ls-files", "lit_align"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = set(listed.stdout.split())
    folders = {str(Path(p).parent) for p in tracked if p.endswith(".py")}
    missing = sorted(f for f in folders if f"{f}/__init__.py" not in tracked)
    assert not missing, f"package folders without a tracked __init__.py: {missing}"

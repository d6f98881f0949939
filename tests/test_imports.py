"""Every module imports, and ``lit_align.callbacks`` is the project's top-level callbacks/ folder, installed under
the package (no stray top-level ``callbacks`` package)."""

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

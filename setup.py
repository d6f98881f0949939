"""Package discovery for lit-align; everything else (metadata, dependencies, folders, data) is in pyproject.toml.

pyproject.toml alone cannot discover a subpackage whose source folder is mapped elsewhere (``callbacks/`` is
``lit_align.callbacks``), so the list is found here: every package under ``lit_align/``, every package under
``callbacks/`` renamed into ``lit_align.callbacks``, and ``lit_align.configs`` (the shipped YAML files, data only).
"""

from setuptools import find_packages, setup

PACKAGES = [
    *find_packages(include=["lit_align", "lit_align.*"]),
    "lit_align.callbacks",
    *(f"lit_align.callbacks.{name}" for name in find_packages("callbacks")),
    "lit_align.configs",
]

setup(packages=PACKAGES)

"""Shared test set-up: offline, deterministic, small."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A fresh working directory, so runs/ and .cache/ of one test never leak into another; the per-user cache
    (``$LIT_ALIGN_CACHE``, e.g. reference log-probs) goes to ``.cache/lit_align`` in it, never to ``~/.cache``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIT_ALIGN_CACHE", str(tmp_path / ".cache" / "lit_align"))
    return tmp_path


@pytest.fixture(scope="session")
def tokenizer():
    from lit_align.models.loading import load_tokenizer

    return load_tokenizer("tiny")





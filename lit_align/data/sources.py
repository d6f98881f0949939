"""Reading raw rows from a hub data set or a local file, through ``datasets``, with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import datasets

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"

# Short names for the data that ships with the package (the embedded default).
EMBEDDED_SOURCES = {
    "tiny": {"train": ASSETS / "tiny_preferences_train.jsonl", "validation": ASSETS / "tiny_preferences_val.jsonl"},
    "tiny-chat": {"train": ASSETS / "tiny_preferences_chat.jsonl"},
}

_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """Bad input data; the message names the source, the row and the field."""


def describe(path: str, split: str) -> str:
    return f"{path} [{split}]" if not Path(path).suffix else path


def load_rows(path: str, split: str = "train", name: str | None = None) -> datasets.Dataset:
    """Rows of ``split`` from a local json/jsonl/parquet/csv file, a local data directory, or a hub data set."""
    if path in EMBEDDED_SOURCES:
        files = EMBEDDED_SOURCES[path]
        if split not in files:
            raise DataError(f"embedded data set {path!r} has no split {split!r}; it has {sorted(files)}")
        return _load_local(files[split])
    local = Path(path)
    if local.suffix in _LOCAL_BUILDERS:
        if not local.is_file():
            raise DataError(f"data file {path} does not exist")
        return _load_local(local)
    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as err:  # hub, network and builder errors all arrive here
        raise DataError(f"could not load data set {path!r} (config {name!r}, split {split!r}): {err}") from err


def _load_local(path: Path) -> datasets.Dataset:
    builder = _LOCAL_BUILDERS[path.suffix]
    if builder == "json":
        _check_json_lines(path)
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:
        raise DataError(f"could not read {path}: {type(err).__name__}: {err}") from err
    if len(dataset) == 0:
        raise DataError(f"{path} contains no rows")
    return dataset


def _check_json_lines(path: Path) -> None:
    """Find the first unreadable line of a JSON-lines file, so the error names it (Arrow's does not)."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path} is empty")
    if raw.lstrip()[:1] == b"[":
        return  # a single JSON array, not JSON lines
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}); is the file truncated?") from err
        if not isinstance(value, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(value).__name__}")

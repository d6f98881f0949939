"""Reading raw rows from a hub data set, a local data directory or a local file, through ``datasets``.

Where a source's rows come from, by kind:

- a local file (``.json``, ``.jsonl``, ``.parquet``, ``.csv``, ``.arrow``) or a ``Dataset.save_to_disk`` folder holds
  ONE split: it is read whole (``holds_one_split``);
- a data directory in the hub's layout (``train.jsonl`` / ``validation.jsonl``, ``data/train-*.parquet``, ...), a
  ``DatasetDict.save_to_disk`` folder, a hub id and the embedded ``tiny`` sets hold named splits: a missing one is
  an error listing those they have.

JSON and JSON-lines files are read once in Python before Arrow reads them, because Arrow's errors name neither
the line nor the cause (a duplicate key, a lone surrogate, a pretty-printed object).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_align.errors import UserError

if TYPE_CHECKING:  # imported where rows are read: a run or --help that reads no data file does not load it
    import datasets

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"

# Short names for the data that ships with the package (the embedded default).
EMBEDDED_SOURCES = {
    "tiny": {"train": ASSETS / "tiny_preferences_train.jsonl", "validation": ASSETS / "tiny_preferences_val.jsonl"},
    "tiny-chat": {"train": ASSETS / "tiny_preferences_chat.jsonl"},
    # arithmetic questions with their answers, for the calculator environment (configs/onpolicy/*_calculator.yaml)
    "tiny-arithmetic": {"train": ASSETS / "tiny_arithmetic_train.jsonl",
                        "validation": ASSETS / "tiny_arithmetic_val.jsonl"},
}

_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


class DataError(UserError, ValueError):
    """Bad input data; the message names the source, the row and the field."""


def holds_one_split(path: str) -> bool:
    """Whether ``path`` is a local file or a saved ``Dataset`` folder: one split, read whole whatever is asked."""
    if path in EMBEDDED_SOURCES:
        return False
    local = Path(path)
    if local.is_dir():
        return (local / "state.json").is_file()  # Dataset.save_to_disk (a DatasetDict writes dataset_dict.json)
    return local.suffix in _LOCAL_BUILDERS or local.is_file()


def describe(path: str, split: str | None) -> str:
    """How a log line or an error names these rows: ``path [split]``, or just ``path`` for one-split sources."""
    return path if holds_one_split(path) or split is None else f"{path} [{split}]"


def load_rows(path: str, split: str | None = "train", name: str | None = None) -> datasets.Dataset:
    """Rows of ``split`` of ``path`` (``None``: the source's only split); a one-split source is read whole."""
    import datasets

    if path in EMBEDDED_SOURCES:
        files = EMBEDDED_SOURCES[path]
        return _load_file(files[_pick_split(files, split, f"embedded data set {path!r}")])
    local = Path(path)
    if local.is_dir():
        if (local / "state.json").is_file():
            return _non_empty(datasets.load_from_disk(str(local)), local)
        if (local / "dataset_dict.json").is_file():
            saved = datasets.load_from_disk(str(local))
            return _non_empty(saved[_pick_split(saved, split, f"saved data set {path}")], local)
        return _load_directory(local, split, name)
    if local.suffix in _LOCAL_BUILDERS:
        if not local.is_file():
            raise DataError(f"data file {path} does not exist")
        return _load_file(local)
    if local.is_file():
        raise DataError(f"{path}: unknown kind of data file; lit-align reads {', '.join(sorted(_LOCAL_BUILDERS))} "
                        "files, data directories, save_to_disk folders and hub data sets")
    try:
        loaded = datasets.load_dataset(path, name, split=split)
    except Exception as err:  # hub, network and builder errors all arrive here
        raise DataError(f"could not load data set {path!r} (config {name!r}, split {split!r}): {err}") from err
    if split is None:
        loaded = loaded[_pick_split(loaded, None, f"data set {path!r}")]
    return loaded


def _pick_split(splits: Mapping[str, Any], split: str | None, source: str) -> str:
    """The name of the split to read: ``split`` when the source has it, its only split when ``split`` is None."""
    have = sorted(str(s) for s in splits)
    if split is None:
        if len(have) == 1:
            return have[0]
        raise DataError(f"{source} holds the splits {have}: name the one to read (split / val_split / test_split)")
    if split not in have:
        raise DataError(f"{source} has no split {split!r}; it has {have}")
    return split


def _load_directory(local: Path, split: str | None, name: str | None) -> datasets.Dataset:
    """A data directory in the hub's layout: split names from the file names (``datasets``' own rules)."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(str(local), name)
    except Exception as err:
        raise DataError(f"could not read data directory {local}: {type(err).__name__}: {err}") from err
    files = {str(s): f for s, f in (builder.config.data_files or {}).items()}
    split = _pick_split(files, split, f"data directory {local}")
    for file in files[split]:
        if Path(file).suffix in (".json", ".jsonl"):
            check_json_records(Path(file))
    try:
        rows = datasets.load_dataset(str(local), name, split=split)
    except Exception as err:
        raise DataError(f"could not read {local} [{split}]: {type(err).__name__}: {err}") from err
    return _non_empty(rows, f"{local} [{split}]")


def _load_file(path: Path) -> datasets.Dataset:
    import datasets

    builder = _LOCAL_BUILDERS[path.suffix]
    if builder == "json":
        check_json_records(path)
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:
        raise DataError(f"could not read {path}: {type(err).__name__}: {err}") from err
    return _non_empty(dataset, path)


def _non_empty(rows: datasets.Dataset, source) -> datasets.Dataset:
    if len(rows) == 0:
        raise DataError(f"{source} contains no rows")
    return rows


# -- JSON checks: every record an object, each key once, every string encodable, the line of each problem ---------


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs)


def check_json_records(path: Path) -> None:
    """Read a JSON-lines file or a file holding one JSON array, and name the line of its first bad record."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = raw.rfind(b"\n", 0, err.start) + 1
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 ({err.reason} at byte {err.start - line_start} of "
                        "the line)") from err
    records = _array_records(path, text) if text.lstrip().startswith("[") else _line_records(path, text)
    for line, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {line}: expected a JSON object, got {type(record).__name__}")
        bad = _lone_surrogate(record)
        if bad is not None:
            field, char = bad
            raise DataError(f"{path}, line {line}: field {field!r} holds a lone surrogate \\u{ord(char):04x} (half "
                            "of a UTF-16 pair, not a character): fix the escape in the file or drop the row")


def _line_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    first = True
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, _DECODER.decode(line)
        except _DuplicateKey as dup:
            raise DataError(f"{path}, line {number}: duplicate key {dup.key!r} (each field may appear once per "
                            "object)") from None
        except json.JSONDecodeError as err:
            if first and _starts_with_a_multiline_object(text):
                raise DataError(f"{path}: this looks like a pretty-printed JSON file: use one object per line (JSON "
                                "lines) or a single JSON array") from err
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}); is the file truncated?") from err
        first = False


def _starts_with_a_multiline_object(text: str) -> bool:
    start = len(text) - len(text.lstrip())
    try:
        value, end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and "\n" in text[start:end]


def _array_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """The elements of a top-level JSON array, each with the line it starts on."""
    pos = _skip_space(text, text.index("[") + 1)
    if text.startswith("]", pos):
        return
    while True:
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except _DuplicateKey as dup:
            raise DataError(f"{path}, line {line}: duplicate key {dup.key!r} (each field may appear once per "
                            "object)") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}); is the file truncated?") from err
        yield line, value
        pos = _skip_space(text, pos)
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
        elif text.startswith("]", pos):
            if text[pos + 1:].strip():
                raise DataError(f"{path}, line {text.count(chr(10), 0, pos) + 1}: text after the closing ']'")
            return
        else:
            where = text.count("\n", 0, pos) + 1
            raise DataError(f"{path}, line {where}: not valid JSON (expected ',' or ']' in the array); is the file "
                            "truncated?")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _lone_surrogate(value: Any, field: str = "") -> tuple[str, str] | None:
    """(field, character) of the first string in ``value`` that UTF-8 cannot encode, e.g. ``chosen[1].content``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return field, value[err.start]
        return None
    if isinstance(value, dict):
        items = ((f"{field}.{k}" if field else k, v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{field}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for name, item in items:
        found = _lone_surrogate(item, name)
        if found is not None:
            return found
    return None

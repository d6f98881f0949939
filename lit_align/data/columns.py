"""Columns of the user's data that an objective reads besides prompt and completions: a label, a score, a weight.

An objective declares them as the class attribute ``data_columns`` (see ``AlignmentModule``), by type alone or as
a ``Column``::

    data_columns = {"label": bool, "weight": Column(float, default=1.0, doc="how much the row counts")}

The data module reads each declared column of every row, after the user's ``columns`` renames (so
``columns: {thumbs_up: label}`` feeds their column to the objective's ``label``), converts it here and puts it in
``batch[name]``, one value per example: a (B,) tensor of ``torch.bool``, ``torch.long`` or ``torch.float32``.

What each type accepts, so that the same column reads alike from JSON, parquet and CSV:

- ``bool``: ``true``/``false``; the integers 0 and 1 (also as 0.0 and 1.0: an integer column with an empty cell is
  read as floats); the text ``true``/``false``/``1``/``0`` in any case (a CSV column with one odd cell is read as
  text).
- ``int``: integers, and floats without a fractional part (parquet and CSV store an integer column with a missing
  value as floats); the text of an integer. Not ``true``/``false``.
- ``float``: integers and floats; the text of a number. Not NaN or infinity, which would turn the loss into NaN
  several steps later instead of naming the row now; not ``true``/``false``.

A row without the column, or with null (an empty CSV cell) in it, takes the column's default; a column without
a default is required there. A missing or bad value is an invalid row like any other: it stops the run with file,
row and field (``invalid_rows: error``) or is dropped and counted (``invalid_rows: skip``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from lit_align.data.sources import DataError

ColumnValue = Union[bool, int, float]

#: Names a declared column may not take: the text columns and the keys the collators already put in a batch.
RESERVED_NAMES = frozenset({
    "prompt", "chosen", "rejected", "completion",
    "index", "input_ids", "attention_mask", "completion_mask", "prompt_ids", "prompt_mask",
})

_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}


@dataclass(frozen=True)
class Column:
    """One column of the user's data that an objective reads.

    Args:
        dtype: ``bool``, ``int`` or ``float``: what the values are converted to, and the batch tensor's type
            (``torch.bool``, ``torch.long``, ``torch.float32``).
        default: The value of a row that lacks the column or holds null in it; ``None`` makes the column required.
        doc: What the column means; the error for a row that lacks it quotes it.
    """

    dtype: type
    default: ColumnValue | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in (bool, int, float):
            raise TypeError(f"Column dtype must be bool, int or float, got {self.dtype!r}")
        if self.default is not None:
            try:
                object.__setattr__(self, "default", convert(self.dtype, self.default))
            except ValueError as err:
                raise TypeError(f"Column({self.dtype.__name__}) default {self.default!r} {err}") from None

    @property
    def required(self) -> bool:
        return self.default is None


def normalise_columns(columns: Mapping[str, Column | type] | None) -> dict[str, Column]:
    """``{name: Column}`` from declarations that may give a type alone (``{"label": bool}``)."""
    out: dict[str, Column] = {}
    for name, spec in (columns or {}).items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"a data column's name must be a non-empty string, got {name!r}")
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} cannot be a data column: the data module already uses that name "
                             f"(reserved: {sorted(RESERVED_NAMES)})")
        if isinstance(spec, Column):
            out[name] = spec
        elif spec in (bool, int, float):
            out[name] = Column(spec)
        else:
            raise TypeError(f"data column {name!r}: expected bool, int, float or a Column, got {spec!r}")
    return out


def merge_columns(*declarations: Mapping[str, Column | type] | None) -> dict[str, Column]:
    """One set of columns from several declarations; a name declared twice must agree on type and default."""
    merged: dict[str, Column] = {}
    for declared in declarations:
        for name, column in normalise_columns(declared).items():
            seen = merged.setdefault(name, column)
            if (seen.dtype, seen.default) != (column.dtype, column.default):
                raise ValueError(
                    f"data column {name!r} is declared twice, as {_describe(seen)} and as {_describe(column)}: "
                    "the objective and the data module must agree on it"
                )
    return merged


def check_columns_present(columns: Mapping[str, Column], rows, source: str,
                          renames: Mapping[str, str] | None = None) -> list[str]:
    """Refuse a required column that no row of ``rows`` (a ``datasets.Dataset``) holds, whatever ``invalid_rows``
    says (skipping would drop every row and hide why); return one line for each defaulted column that no row holds,
    saying its default is used for every row.

    A column counts as held when some row has a non-null value in it, after ``renames``.
    """
    renames = dict(renames or {})
    named = {renames.get(c, c): c for c in rows.column_names}
    lines = []
    for name, column in columns.items():
        original = named.get(name)
        held = original is not None and any(v is not None for v in rows[original])
        if held:
            continue
        if column.required:
            mapped = f" after the column mapping {renames}" if renames else ""
            meaning = f" ({column.doc})" if column.doc else ""
            raise DataError(
                f"{source}: no row has the column {name!r}{mapped}, a {column.dtype.__name__} the objective reads"
                f"{meaning}; the data has {sorted(named)}. Map your column onto it with `columns`, e.g. "
                f"{{\"my_{name}\": \"{name}\"}}, or use data that has it")
        lines.append(f"{source}: no row has the column {name!r}: its default {column.default!r} is used for every row")
    return lines


def read_values(
    columns: Mapping[str, Column], row: Mapping[str, Any], where: str, renames: Mapping[str, str] | None = None
) -> dict[str, ColumnValue]:
    """The declared columns' values of one row (already renamed), converted.

    Args:
        columns: The declared columns (``normalise_columns``).
        row: The row, with the user's renames applied.
        where: How errors name the row, e.g. ``data.jsonl, row 3``.
        renames: The user's renames, quoted in the error for a missing column.

    Raises:
        DataError: A required column is missing or null, or a value does not convert.
    """
    values: dict[str, ColumnValue] = {}
    for name, column in columns.items():
        value = row.get(name)
        if value is None:
            if column.required:
                raise DataError(_missing(name, column, row, where, renames))
            values[name] = column.default
            continue
        try:
            values[name] = convert(column.dtype, value)
        except ValueError as err:
            raise DataError(f"{where}: field {name!r} {err}, got {value!r}") from None
    return values


def convert(dtype: type, value: Any) -> ColumnValue:
    """``value`` as ``dtype`` under the rules of the module docstring; ``ValueError`` says what it must be."""
    if dtype is bool:
        return _to_bool(value)
    if dtype is int:
        return _to_int(value)
    return _to_float(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[value.strip().lower()]
    raise ValueError("must be true or false (or 1 or 0)")


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        value = _number_text(value, "must be an integer")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError("must be an integer")
    if isinstance(value, numbers.Integral):
        return int(value)
    if not math.isfinite(value) or not float(value).is_integer():
        raise ValueError("must be an integer")
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, str):
        value = _number_text(value, "must be a number")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError("must be a number")
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)


def _number_text(text: str, expected: str) -> float | int:
    try:
        return int(text.strip())
    except ValueError:
        pass
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(expected) from None


def _missing(name: str, column: Column, row: Mapping[str, Any], where: str, renames: Mapping[str, str] | None) -> str:
    if name in row:
        return f"{where}: field {name!r} is null"
    mapped = f" (after the column mapping {dict(renames)})" if renames else ""
    meaning = f" ({column.doc})" if column.doc else ""
    return (
        f"{where}: missing field {name!r}{mapped}, a {column.dtype.__name__} the objective reads{meaning}; the row "
        f"has {sorted(row)}. Map your column onto it with `columns`, e.g. {{\"my_{name}\": \"{name}\"}}."
    )


def _describe(column: Column) -> str:
    kind = column.dtype.__name__
    return f"{kind} (required)" if column.required else f"{kind} (default {column.default!r})"

"""Unpaired preference data: single completions labelled desirable or undesirable (e.g. for KTO)."""

from __future__ import annotations

from collections.abc import Mapping

from lit_align.data.base import TextDataModule
from lit_align.data.columns import Column
from lit_align.data.formats import Example, RowEncoder
from lit_align.data.sources import DataError

PAIR_FIELDS = ("chosen", "rejected")
LABEL = Column(bool, doc="true: the completion is desirable, false: it is not")


class UnpairedPreferenceDataModule(TextDataModule):
    """Completions labelled desirable (``label`` true) or undesirable (false), one completion per example.

    Rows hold ``prompt``, ``completion`` and ``label`` (the usual unpaired-preference layout), in the standard
    format (strings) or the conversational one (lists of messages; without a ``prompt`` column the completion's
    leading messages are the prompt). Other names map with ``columns``, e.g. ``{"response": "completion",
    "thumbs_up": "label"}``; ``label`` reads as a ``bool`` column (``lit_align.data.columns``: true/false, 1/0).

    Data of pairs instead (``chosen`` and ``rejected`` columns, in any format or preset, e.g. ``path: tiny``)
    gives two examples per pair: the chosen completion labelled true and the rejected one false. A pair whose
    two completions are the same sequence is dropped, as everywhere.

    Batches have one row per example: ``input_ids``, ``attention_mask``, ``completion_mask`` (B, T), the prompts
    left-padded, ``label`` (B,) ``torch.bool`` whether or not the objective declares it, and every other column
    the objective declares. ``index`` is the example's key (the reference-log-prob cache and the prediction
    writers key by it) and is unique within a split: for rows with a completion, the row's position in its source
    (0-based, as error messages count rows); for pairs, ``2 * row`` for the chosen completion and ``2 * row + 1``
    for the rejected one.
    """

    completion_fields = None

    def declared_columns(self) -> dict[str, Column]:
        """The objective's columns and ``label``, which every example carries (the objective's own ``label``
        declaration, if it has one, must be a ``bool``)."""
        columns = super().declared_columns()
        label = columns.get("label", LABEL)
        if label.dtype is not bool:
            raise ValueError(f"the objective declares 'label' as {label.dtype.__name__}, but {type(self).__name__}'s "
                             "label says whether a completion is desirable: a bool")
        return {**columns, "label": label}

    def resolve_completion_fields(self, columns: list[str]) -> tuple[str, ...]:
        mapped = {(self.hparams.columns or {}).get(c, c) for c in columns}
        if "completion" in mapped:
            return ("completion",)
        if set(PAIR_FIELDS) <= mapped:
            return PAIR_FIELDS
        raise DataError(
            f"{type(self).__name__} needs `prompt`, `completion` and `label` columns, or `chosen`/`rejected` pairs; "
            f"the data has {sorted(columns)}. Map yours with `columns`, e.g. {{\"response\": \"completion\", "
            "\"thumbs_up\": \"label\"}."
        )

    def encoder(
        self, completion_fields: tuple[str, ...], data_columns: Mapping[str, Column] | None = None
    ) -> RowEncoder:
        columns = self.declared_columns() if data_columns is None else dict(data_columns)
        if tuple(completion_fields) == PAIR_FIELDS:
            columns.pop("label", None)  # a pair's labels come from the positions of its completions
        return super().encoder(completion_fields, columns)

    def _encode(self, rows, fields: tuple[str, ...], source: str) -> list[Example]:
        examples = super()._encode(rows, fields, source)
        if tuple(fields) != PAIR_FIELDS:
            return examples
        return [
            Example(2 * ex.index + k, ex.prompt_ids, [ids], {**ex.values, "label": k == 0})
            for ex in examples
            for k, ids in enumerate(ex.completion_ids)
        ]

"""Data for supervised fine-tuning: one reference response per prompt."""

from __future__ import annotations

from lit_align.data.base import TextDataModule
from lit_align.data.sources import DataError


class SFTDataModule(TextDataModule):
    """Prompt + one response per row, for ``SFT``.

    The response is the ``completion`` column when the rows have one (prompt/completion sets), otherwise the
    ``chosen`` response of a preference set, so the same files and formats (standard, conversational, implicit,
    column mappings) serve SFT, the reward model and the preference objectives. Map another column onto
    ``completion`` with ``columns``, e.g. ``{"summary": "completion"}``.
    """

    completion_fields = None

    def resolve_completion_fields(self, columns: list[str]) -> tuple[str, ...]:
        mapped = {(self.hparams.columns or {}).get(c, c) for c in columns}
        if "completion" in mapped:
            return ("completion",)
        if "chosen" in mapped:
            return ("chosen",)
        raise DataError(
            f"SFT needs a `completion` or `chosen` column; the data has {sorted(columns)}. "
            "Map yours with `columns`, e.g. {\"response\": \"completion\"}."
        )

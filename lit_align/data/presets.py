"""Named layouts of the public data sets the paper and its baselines train and evaluate on.

A preset is a hub id, the names its splits go by, its format and the renames that bring its columns to the
canonical ``prompt`` / ``chosen`` / ``rejected`` / ``completion``. It is picked in any data module by naming the
data set, with its short name or its hub id::

    data:
      class_path: lit_align.data.PreferenceDataModule
      init_args:
        path: tldr-preference        # or trl-lib/tldr-preference
        val_split: validation        # the canonical name; the preset maps it to the data set's own

and applied to a local copy in the same layout with ``preset``::

        path: data/hh_rlhf_train.jsonl
        preset: hh-rlhf

The renames are applied to the rows as they are read, so everything downstream (the format detection, the user's
own ``columns``, SFT's choice of response column) sees canonical names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lit_align.data.formats import Format
from lit_align.data.sources import DataError, load_rows

if TYPE_CHECKING:
    import datasets


@dataclass(frozen=True)
class Preset:
    """The layout of one public data set.

    Attributes:
        name: Short name (what ``path`` or ``preset`` may say).
        hub_id: The data set's id on the Hugging Face hub.
        splits: Canonical split names (``train``, ``validation``, ``test``) to the data set's own.
        format: The row format after the renames.
        columns: Renames from the data set's columns to canonical ones.
        drop: Columns removed before encoding (e.g. UltraFeedback's plain-string ``prompt``, which would otherwise
            shadow the conversation's own first message).
        description: What the rows hold.
        marks: Columns that only this layout has: a local copy that has them all and fails to read without the
            preset is told to set it (``layouts_like``). Empty for layouts in the canonical columns.
    """

    name: str
    hub_id: str
    splits: dict[str, str]
    format: Format
    columns: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    description: str = ""
    marks: frozenset[str] = frozenset()

    def split(self, name: str | None) -> str | None:
        """The data set's name for the canonical split ``name`` (other names, and ``None``, pass through)."""
        return self.splits.get(name, name) if name is not None else None

    def normalise(self, rows: datasets.Dataset) -> datasets.Dataset:
        """Rename and drop columns so that the rows are in the canonical layout."""
        present = set(rows.column_names)
        dropped = [c for c in self.drop if c in present]
        if dropped:
            rows = rows.remove_columns(dropped)
        renames = {old: new for old, new in self.columns.items() if old in present and old != new}
        return rows.rename_columns(renames) if renames else rows


_ULTRAFEEDBACK_MARKS = frozenset({"prompt_id", "messages", "score_chosen", "score_rejected"})

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "tldr-comparisons", "CarperAI/openai_summarize_comparisons",
            {"train": "train", "validation": "valid1", "test": "test"}, "standard",
            description="TL;DR human comparisons (Stiennon et al. 2020): prompt = post, chosen/rejected = 'TL;DR: ...'",
        ),
        Preset(
            "tldr-preference", "trl-lib/tldr-preference",
            {"train": "train", "validation": "validation", "test": "validation"}, "standard",
            description="TL;DR human comparisons in TRL's layout: prompt ends with 'TL;DR:', chosen/rejected strings",
        ),
        Preset(
            "tldr-sft-carper", "CarperAI/openai_summarize_tldr",
            {"train": "train", "validation": "valid", "test": "test"}, "standard", columns={"label": "completion"},
            description="TL;DR reference summaries for SFT and evaluation: prompt ending 'TL;DR:', label = summary",
            marks=frozenset({"label"}),
        ),
        Preset(
            "tldr-sft", "trl-lib/tldr",
            {"train": "train", "validation": "validation", "test": "test"}, "standard",
            description="TL;DR reference summaries in TRL's layout: prompt / completion strings",
        ),
        Preset(
            "hh-rlhf", "Anthropic/hh-rlhf",
            {"train": "train", "validation": "test", "test": "test"}, "implicit",
            description="Anthropic helpful/harmless: chosen/rejected are whole '\\n\\nHuman: ... \\n\\nAssistant: ...' "
            "transcripts; the prompt is their shared prefix through the last '\\n\\nAssistant:'",
        ),
        Preset(
            "ultrafeedback", "HuggingFaceH4/ultrafeedback_binarized",
            {"train": "train_prefs", "validation": "test_prefs", "test": "test_prefs"}, "conversational",
            drop=("prompt", "messages"),
            description="UltraFeedback binarized preferences: chosen/rejected message lists that start with the "
            "user turn (the prompt); the plain-string prompt column is dropped",
            marks=_ULTRAFEEDBACK_MARKS,
        ),
        Preset(
            "ultrafeedback-sft", "HuggingFaceH4/ultrafeedback_binarized",
            {"train": "train_sft", "validation": "test_sft", "test": "test_sft"}, "conversational",
            columns={"messages": "completion"}, drop=("prompt", "chosen", "rejected"),
            description="UltraFeedback SFT split: `messages` conversations, the last assistant turn is the response",
            marks=_ULTRAFEEDBACK_MARKS,
        ),
    )
}

# The hub ids select their preset too; where two presets share one (UltraFeedback), the preference layout wins.
_BY_HUB_ID = {p.hub_id: p for p in reversed(list(PRESETS.values()))}


def find_preset(path: str, preset: str | None = None) -> Preset | None:
    """The preset named by ``preset`` (``"none"`` disables presets), else the one ``path`` names, else ``None``."""
    if preset is not None:
        if preset == "none":
            return None
        if preset in PRESETS:
            return PRESETS[preset]
        if preset in _BY_HUB_ID:
            return _BY_HUB_ID[preset]
        raise DataError(f"unknown data preset {preset!r}; known presets: {sorted(PRESETS)}")
    return PRESETS.get(path) or _BY_HUB_ID.get(path)


def layouts_like(columns: list[str]) -> list[Preset]:
    """The presets whose marking columns the data has (the first is the likeliest: preference before SFT)."""
    present = set(columns)
    return [p for p in PRESETS.values() if p.marks and p.marks <= present]


def layout_hint(columns: list[str]) -> str | None:
    """``this looks like the <name> layout: set preset: <name>`` for data in a preset's layout, else ``None``."""
    like = layouts_like(columns)
    if not like:
        return None
    others = f" (or {', '.join(p.name for p in like[1:])})" if len(like) > 1 else ""
    return f"this looks like the {like[0].name} layout: set preset: {like[0].name}{others}"


def load_source(path: str, split: str | None, name: str | None = None, preset: str | None = None) -> datasets.Dataset:
    """``load_rows`` with the preset's hub id, split names and column renames applied.

    ``path`` that names a preset (short name or hub id) reads the hub data set; any other ``path`` (a local file
    in the same layout) is read as it is and only renamed.
    """
    layout = find_preset(path, preset)
    if layout is None:
        return load_rows(path, split, name)
    if path in (layout.name, layout.hub_id):
        rows = load_rows(layout.hub_id, layout.split(split), name)
    else:
        rows = load_rows(path, split, name)
    return layout.normalise(rows)

"""Data: sources, formats and the DataModules."""

from lit_align.data.base import TextDataModule
from lit_align.data.columns import Column
from lit_align.data.formats import Example, RowEncoder
from lit_align.data.oracle import OracleDataModule, OracleReward
from lit_align.data.preference import PreferenceDataModule, PromptDataModule
from lit_align.data.sft import SFTDataModule
from lit_align.data.sources import DataError
from lit_align.data.unpaired import UnpairedPreferenceDataModule

__all__ = [
    "Column", "DataError", "Example", "OracleDataModule", "OracleReward", "PreferenceDataModule", "PromptDataModule",
    "RowEncoder", "SFTDataModule", "TextDataModule", "UnpairedPreferenceDataModule",
]

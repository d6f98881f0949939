"""DataModules for preference pairs and for prompts."""

from __future__ import annotations

from lit_align.data.base import TextDataModule


class PreferenceDataModule(TextDataModule):
    """Pairs ``(prompt, chosen, rejected)``; batches hold both completions for one concatenated forward pass."""

    completion_fields = ("chosen", "rejected")


class PromptDataModule(TextDataModule):
    """Prompts for on-policy objectives, from a prompt-only set or the prompts of a preference set.

    When the rows also carry completions (``chosen``/``rejected`` or ``completion``) they are kept in the batch,
    for objectives that train on data pairs or evaluations that compare with reference responses.
    """

    completion_fields = None

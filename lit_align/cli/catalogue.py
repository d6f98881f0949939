"""What ``lit-align fit --help`` lists, known without importing the classes (so the help needs no torch).

A static table: ``tests/cli/test_cli_startup.py`` checks it against the classes ``lit_align.objectives`` and
``lit_align.data`` export (``catalogue_of_classes`` in ``lit_align.cli.help``), so a new objective or data module
fails that test until it is listed here.
"""

#: The objectives by the base they build on, in the order the help shows the groups.
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "on offline pairs": (
        "AOT", "APODown", "APOZero", "BCOPair", "CombinedPairLoss", "DPO", "DiscoPOP", "EXOPair", "Hinge", "IPO",
        "LDDPO", "LengthNormalizedDPO", "NCAPair", "ORPO", "PMLE", "RPO", "RobustDPO", "SPPOHard", "SimPO", "WPO",
    ),
    "on labelled rows": ("KTO",),
    "sampled during training": ("GRPO", "OnlineDPO", "PreferenceDistillation", "REBEL", "RLHF", "RLOO", "ReverseKL"),
    "stages": ("RewardModeling", "SFT"),
}

#: The data modules with the first paragraph of each one's docstring.
DATA_MODULES: dict[str, str] = {
    "OracleDataModule": "Preference pairs labelled by a known target LM pi* (the oracle task), in "
                        "``PreferenceDataModule``'s layout.",
    "PreferenceDataModule": "Pairs ``(prompt, chosen, rejected)``; batches hold both completions for one "
                            "concatenated forward pass.",
    "PromptDataModule": "Prompts for on-policy objectives, from a prompt-only set or the prompts of a preference set.",
    "SFTDataModule": "Prompt + one response per row, for ``SFT``.",
    "UnpairedPreferenceDataModule": "Completions labelled desirable (``label`` true) or undesirable (false), one "
                                    "completion per example.",
}

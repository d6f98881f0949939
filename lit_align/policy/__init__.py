"""The trained policy and its reference: ``PolicyWithReference`` (``with_reference``), the four references
(``reference``), the reference's log-prob cache (``reference_cache``), frozen modules kept out of checkpoints
(``frozen``) and the Hugging Face export (``export``)."""

from lit_align._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {"PolicyWithReference": "lit_align.policy.with_reference", "default_lora_config": "lit_align.policy.with_reference",
     "run_causal_lm": "lit_align.models.forward", "position_ids_from_mask": "lit_align.models.forward"},
)

"""Models: loading tokenizers and models (``loading``), the forward with position ids from the mask (``forward``),
per-token log-probs (``logprobs``), the LM head in chunks (``chunked_head``), prompt packing (``packing``), the
self-check that decides the fast paths (``fast_path``) and the small oracle language model (``oracle``)."""

from lit_align._lazy import lazy_exports

_LOADING = (
    "EMBEDDED_DIR", "EMBEDDED_NAMES", "EMBEDDED_SEED", "ModelLoadError", "is_embedded", "resolve_dtype",
    "load_tokenizer", "tokenizer_adds_bos", "load_causal_lm", "quantization_config", "load_sequence_classifier",
    "enable_activation_checkpointing", "zero_dropout", "check_tokens_fit",
)
__getattr__, __dir__ = lazy_exports(__name__, {name: "lit_align.models.loading" for name in _LOADING})

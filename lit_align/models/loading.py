"""Loading language models and tokenizers: Hugging Face ids, local directories and the embedded tiny model.

``"tiny"`` names the embedded default: a 150k-parameter Llama-architecture model built from the config shipped in
``lit_align/assets/tiny`` with random weights drawn from a fixed seed, and a byte-level BPE tokenizer with a chat
template. It needs no download, so every shipped config and test runs offline. Any other name goes to
``AutoModelForCausalLM`` / ``AutoTokenizer`` unchanged.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny"
EMBEDDED_NAMES = ("tiny",)
EMBEDDED_SEED = 0

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says which and why."""


def is_embedded(name: str) -> bool:
    return name in EMBEDDED_NAMES


def resolve_dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is None or dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or 'auto', got {dtype!r}")
    return _DTYPES[dtype]


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer; a missing pad token falls back to EOS (padding is always masked out)."""
    source = str(EMBEDDED_DIR) if is_embedded(name) else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises OSError, ValueError or HF hub errors here
        raise ModelLoadError(_explain(name, "tokenizer", err)) from err
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ModelLoadError(f"tokenizer {name!r} has neither a pad token nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
        log.warning("tokenizer %r has no pad token: padding with its EOS token %r (padding is masked out by the "
                    "attention mask, so the EOS that ends a completion is still trained on)", name, tokenizer.eos_token)
    return tokenizer


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts its BOS token in front of every encoding by itself."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True).input_ids[:1] == [bos]


def load_causal_lm(
    name: str,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    seed: int = EMBEDDED_SEED,
    attn_implementation: str | None = None,
    revision: str | None = None,
    quantization: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """Load a causal LM by hub id or local path, or build the embedded tiny model (random init from ``seed``).

    ``attn_implementation`` (``eager``, ``sdpa``, ``flash_attention_2``, ...), ``revision`` (a hub branch, tag or
    commit), ``quantization`` (the fields of ``transformers.BitsAndBytesConfig``) and ``model_kwargs`` (anything
    else) go to ``from_pretrained``; the embedded model honours ``attn_implementation`` only.
    """
    torch_dtype = resolve_dtype(dtype)
    if is_embedded(name):
        _refuse_for_embedded(name, revision=revision, quantization=quantization, model_kwargs=model_kwargs)
        config = AutoConfig.from_pretrained(EMBEDDED_DIR)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, **_attention(attn_implementation))
        return model.to(torch_dtype) if torch_dtype is not None else model
    kwargs = _pretrained_kwargs(torch_dtype, trust_remote_code, attn_implementation, revision, quantization,
                                model_kwargs)
    try:
        return AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as err:
        raise ModelLoadError(_explain(name, "model", err)) from err


def quantization_config(settings: dict[str, Any]):
    """A ``transformers.BitsAndBytesConfig`` of ``settings`` (e.g. ``{load_in_4bit: true, bnb_4bit_quant_type: nf4,
    bnb_4bit_compute_dtype: bfloat16}``), built only when asked for: bitsandbytes and a CUDA device are needed."""
    from transformers import BitsAndBytesConfig

    fields = [n for n in inspect.signature(BitsAndBytesConfig).parameters if n != "kwargs"]
    unknown = sorted(set(settings) - set(fields))
    if unknown:  # BitsAndBytesConfig itself would log them and carry on without
        raise ValueError(f"quantization: unknown field(s) {', '.join(unknown)}; BitsAndBytesConfig takes "
                         f"{', '.join(fields)}")
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA device (none is visible)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if missing:
        raise ModelLoadError(f"quantization {settings} loads the model through bitsandbytes, which needs "
                             + " and ".join(missing))
    return BitsAndBytesConfig(**settings)


def _pretrained_kwargs(torch_dtype, trust_remote_code, attn_implementation, revision, quantization,
                       model_kwargs) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(model_kwargs or {})
    own = sorted(set(kwargs) & _OWN_ARGUMENTS.keys())
    if own:
        raise ValueError(f"model_kwargs: {', '.join(own)} has an argument of its own: set "
                         + ", ".join(_OWN_ARGUMENTS[k] for k in own) + " instead")
    kwargs.update(dtype=torch_dtype, trust_remote_code=trust_remote_code, **_attention(attn_implementation))
    if revision is not None:
        kwargs["revision"] = revision
    if quantization is not None:
        kwargs["quantization_config"] = quantization_config(quantization)
    return kwargs


#: ``from_pretrained`` keywords that lit-align sets from arguments of its own, and those arguments' names.
_OWN_ARGUMENTS = {"dtype": "dtype", "torch_dtype": "dtype", "trust_remote_code": "trust_remote_code",
                  "attn_implementation": "attn_implementation", "revision": "revision",
                  "quantization_config": "quantization"}


def _attention(attn_implementation: str | None) -> dict[str, str]:
    # Left out when unset: transformers then picks its own default (SDPA where available).
    return {} if attn_implementation is None else {"attn_implementation": attn_implementation}


def _refuse_for_embedded(name: str, **settings) -> None:
    given = sorted(key for key, value in settings.items() if value)
    if given:
        raise ValueError(f"{', '.join(given)} cannot apply to the embedded model {name!r}, which is built from its "
                         "shipped config, not loaded from a checkpoint; save it with save_pretrained and load that "
                         "directory instead")


def load_sequence_classifier(
    name: str,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    seed: int = EMBEDDED_SEED,
    pad_token_id: int | None = None,
    attn_implementation: str | None = None,
    revision: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """A scalar-output ``AutoModelForSequenceClassification`` (``num_labels=1``) on the backbone ``name``.

    A causal-LM checkpoint gets a freshly initialised score head (transformers' usual warning says so); the
    embedded ``tiny`` is built from its shipped config with the seeded random init. ``pad_token_id`` is written
    into the config so that other tools' pooling finds the padding. ``attn_implementation``, ``revision`` and
    ``model_kwargs`` go to ``from_pretrained`` as in ``load_causal_lm``.
    """
    from transformers import AutoModelForSequenceClassification

    torch_dtype = resolve_dtype(dtype)
    extra = {"num_labels": 1} if pad_token_id is None else {"num_labels": 1, "pad_token_id": pad_token_id}
    if is_embedded(name):
        _refuse_for_embedded(name, revision=revision, model_kwargs=model_kwargs)
        config = AutoConfig.from_pretrained(EMBEDDED_DIR, **extra)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_config(config, **_attention(attn_implementation))
        return model.to(torch_dtype) if torch_dtype is not None else model
    kwargs = _pretrained_kwargs(torch_dtype, trust_remote_code, attn_implementation, revision, None, model_kwargs)
    try:
        return AutoModelForSequenceClassification.from_pretrained(name, **{**kwargs, **extra})
    except Exception as err:
        raise ModelLoadError(_explain(name, "sequence-classification model", err)) from err


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each transformer block's activations in the backward (non-reentrant, so parameter names and
    state dicts stay as they are). transformers 5.24 renamed ``gradient_checkpointing_enable`` (now deprecated,
    with a warning at every call) to ``activation_checkpointing_enable``; older versions have only the first."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


#: Float attributes HF modules read their functional dropout probabilities from.
DROPOUT_ATTRIBUTES = ("attention_dropout", "dropout", "attn_dropout", "hidden_dropout")


def zero_dropout(model: nn.Module) -> None:
    """Zero every dropout, including the functional attention dropout that HF attention modules read from attributes.

    Preference losses compare log-probs of the same text under two models (or two passes); dropout noise in
    one of them biases the comparison.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in DROPOUT_ATTRIBUTES:
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


def has_dropout(model: nn.Module) -> bool:
    """Whether any dropout of ``model`` (a module or an attribute ``zero_dropout`` zeroes) is above 0."""
    return any(isinstance(module, nn.Dropout) and module.p > 0
               or any(isinstance(getattr(module, attr, None), float) and getattr(module, attr) > 0
                      for attr in DROPOUT_ATTRIBUTES) for module in model.modules())


def check_tokens_fit(model: nn.Module, tokenizer: PreTrainedTokenizerBase, data_tokenizer, examples) -> None:
    """Stop with one line when the rows cannot be read by ``model``: encoded by a ``data_tokenizer`` whose
    vocabulary is not the model's ``tokenizer``'s, or holding token ids beyond the model's embedding table (a
    tokenizer with added tokens and no resized embeddings). ``examples``: the encoded rows (``prompt_ids``,
    ``completion_ids``); they are read only when the tokenizer has more entries than the table."""
    if data_tokenizer is not None and data_tokenizer is not tokenizer:
        ours, theirs = tokenizer.get_vocab(), data_tokenizer.get_vocab()
        if ours != theirs:
            differing = sorted(set(ours.items()) ^ set(theirs.items()), key=lambda item: item[1])[:1]
            raise ModelLoadError(
                f"data.tokenizer ({len(theirs)} entries) has another vocabulary than the model's tokenizer "
                f"({len(ours)} entries; e.g. {differing[0][0]!r} is id {differing[0][1]} in one only): the rows "
                "would be encoded with one and read by the model with the other; leave data.tokenizer unset")
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(getattr(embeddings, "weight", None), "shape", (None,))[0]
    if rows is None or len(data_tokenizer or tokenizer) <= rows:
        return
    largest = max((max(_ids(example), default=-1) for example in examples), default=-1)
    if largest >= rows:
        raise ModelLoadError(
            f"the data holds token id {largest}, beyond the model's embedding table of {rows} rows (the tokenizer "
            f"has {len(data_tokenizer or tokenizer)} entries): resize the model's embeddings to the tokenizer "
            "(model.resize_token_embeddings(len(tokenizer)) and save it) or use the model's own tokenizer")


def _ids(example) -> list[int]:
    ids = list(getattr(example, "prompt_ids", []) or [])
    for completion in getattr(example, "completion_ids", []) or []:
        ids.extend(completion)
    return ids


def _explain(name: str, what: str, err: Exception) -> str:
    hint = ""
    if not Path(name).exists():
        hint = (
            " It is not a local directory, so it was looked up as a Hugging Face hub id: check the spelling, the "
            "network, or set HF_HUB_OFFLINE=1 with the model already in the local cache."
        )
    return f"could not load {what} {name!r}: {type(err).__name__}: {err}.{hint}"

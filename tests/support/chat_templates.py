"""Tokenizers of the chat template families users bring, built offline from the embedded tiny tokenizer.

Each family's template (``tests/fixtures/chat_templates/<name>.jinja``) is written in the shape of the real one;
the tokenizer gets that family's special tokens, BOS and EOS, and adds BOS itself where the real one does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"


@dataclass(frozen=True)
class Family:
    name: str
    specials: tuple[str, ...]  # added as special tokens (the tiny tokenizer already has <s>, </s>, <|user|>, ...)
    bos: str | None
    eos: str
    adds_bos: bool  # the tokenizer itself puts BOS in front of every encoding
    end_of_turn: str  # the token that must close every completion
    generation_prompt: str  # what the prompt ends with, so that the completion starts with the reply
    system: bool = True  # the template accepts a system message


FAMILIES = [
    Family("chatml", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), None, "<|im_end|>", False, "<|im_end|>",
           "<|im_start|>assistant\n"),
    Family("llama3", ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>"), "<|begin_of_text|>", "<|eot_id|>", True, "<|eot_id|>",
           "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    Family("llama2", (), "<s>", "</s>", True, "</s>", " [/INST]"),
    Family("mistral", (), "<s>", "</s>", True, "</s>", " [/INST]", system=False),
    Family("gemma", ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>", True, "<end_of_turn>",
           "<start_of_turn>model\n", system=False),
    Family("phi3", ("<|end|>", "<|endoftext|>"), "<s>", "<|endoftext|>", True, "<|end|>", "<|assistant|>\n"),
    Family("zephyr", (), "<s>", "</s>", True, "</s>", "<|assistant|>\n"),
]
BY_NAME = {family.name: family for family in FAMILIES}


def build_tokenizer(family: Family, template: str | None = None, adds_bos: bool | None = None):
    """A fresh tiny tokenizer dressed as ``family`` (optionally with another template file or BOS behaviour)."""
    from lit_align.models.loading import load_tokenizer

    tokenizer = load_tokenizer("tiny")
    if family.specials:
        tokenizer.add_special_tokens({"additional_special_tokens": list(family.specials)})
    tokenizer.bos_token = family.bos
    tokenizer.eos_token = family.eos
    tokenizer.add_bos_token = family.adds_bos if adds_bos is None else adds_bos
    tokenizer.chat_template = (TEMPLATES / f"{template or family.name}.jinja").read_text()
    return tokenizer


@cache
def family_tokenizer(name: str):
    """The family's tokenizer, built once per test session (treat as read-only)."""
    return build_tokenizer(BY_NAME[name])

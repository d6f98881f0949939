"""Tiny tokenizers with real-shaped chat templates, built offline from the embedded tokenizer."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import lit_align
from transformers import AutoTokenizer

HERE = Path(__file__).parent
EMBEDDED = Path(lit_align.__file__).parent / "assets" / "tiny"
FIXTURES = HERE.parent / "fixtures" / "chat_templates"

# name: (template file, extra special tokens, bos, eos)
TEMPLATES = {
    "chatml_tools": (HERE / "chatml_tools.jinja", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), None, "<|im_end|>"),
    "chatml": (FIXTURES / "chatml.jinja", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), None, "<|im_end|>"),
    "llama3": (FIXTURES / "llama3.jinja", ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                           "<|eot_id|>"), "<|begin_of_text|>", "<|eot_id|>"),
    "gemma": (FIXTURES / "gemma.jinja", ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<bos>",
              "<end_of_turn>"),
}


@cache
def template_tokenizer(name: str):
    """The embedded tiny tokenizer dressed with the named template and its special tokens (treat as read-only)."""
    path, specials, bos, eos = TEMPLATES[name]
    tokenizer = AutoTokenizer.from_pretrained(str(EMBEDDED))
    tokenizer.add_special_tokens({"additional_special_tokens": list(specials)})
    tokenizer.bos_token = bos
    tokenizer.eos_token = eos
    tokenizer.chat_template = path.read_text()
    tokenizer.name_or_path = name
    tokenizer.model_max_length = 1 << 20  # episodes outgrow the embedded tokenizer's 256
    return tokenizer

"""Regenerate the embedded default: a small preference data set and the byte-level BPE tokenizer.

The outputs are committed, so nothing here runs at install or training time. Re-run after changing the
templates:

    python scripts/make_tiny_assets.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[1] / "lit_align" / "assets"

THINGS = [
    "the sea", "a garden", "the moon", "a library", "the forest", "a river", "the city", "a mountain",
    "the desert", "a cat", "a dog", "the rain", "a bicycle", "the sun", "a song", "a teacher", "the night",
    "a bridge", "the wind", "a market", "an island", "a lamp", "the snow", "a clock", "a ship", "a village",
]
GOOD = ["calm", "bright", "kind", "gentle", "warm", "clear", "lovely", "quiet", "wise", "careful", "happy"]
BAD = ["bad", "dull", "boring", "ugly", "loud", "cold", "awful"]
ASKS = ["Describe {t}.", "Tell me about {t}.", "Write a line about {t}.", "What is {t} like?", "Say something about {t}."]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer briefly."]
# The validation prompts are asked in words the training prompts never use, so that no validation prompt is a
# training prompt: val/* measures held-out pairs, not remembered ones.
VAL_ASKS = ["How would you describe {t}?", "Give me one sentence on {t}.", "What comes to mind about {t}?"]


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def make_row(rng: random.Random, asks: list[str] = ASKS) -> dict[str, str]:
    thing = rng.choice(THINGS)
    prompt = rng.choice(asks).format(t=thing)
    a, b = rng.sample(GOOD, 2)
    chosen = rng.choice([
        f"{_capital(thing)} is {a} and {b}.",
        f"I think {thing} is {a}, and it feels {b}.",
        f"{_capital(thing)} can be very {a}.",
    ])
    rejected = rng.choice([
        f"{_capital(thing)} is {rng.choice(BAD)}.",
        "I do not know.",
        f"{_capital(thing)} is {rng.choice(BAD)} and {rng.choice(BAD)}.",
        f"No. {_capital(thing)}.",
    ])
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def make_data(rng: random.Random) -> list[dict[str, str]]:
    data_dir = ROOT / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    train = [make_row(rng) for _ in range(512)]
    # Drawn as in the first release so the shipped tokenizer, trained on these rows too, is reproduced exactly;
    # the validation file itself holds held-out prompts (VAL_ASKS), from a generator of its own.
    tokenizer_rows = [make_row(rng) for _ in range(64)]
    val_rng = random.Random(1)
    val = [make_row(val_rng, VAL_ASKS) for _ in range(64)]
    write_jsonl(data_dir / "tiny_preferences_train.jsonl", train)
    write_jsonl(data_dir / "tiny_preferences_val.jsonl", val)
    # The same pairs as chat messages, exercising the conversational format and the chat template.
    chat = []
    for row in train[:64]:
        system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.5 else []
        chat.append({
            "prompt": system + [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        })
    write_jsonl(data_dir / "tiny_preferences_chat.jsonl", chat)
    return train + tokenizer_rows


SPECIAL = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(rows: list[dict[str, str]]) -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [text for row in rows for text in row.values()] + [" ".join(THINGS + GOOD + BAD)] * 4
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    # BOS is prepended once by the tokenizer itself; the data code never adds a second one.
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)],
    )
    out = ROOT / "tiny"
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "additional_special_tokens": SPECIAL[3:],
        "model_max_length": 256,
        "padding_side": "right",
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    model_config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": tokenizer.get_vocab_size(), "hidden_size": 64, "intermediate_size": 176,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "attention_dropout": 0.0,
        "bos_token_id": bos, "eos_token_id": tokenizer.token_to_id("</s>"),
        "pad_token_id": tokenizer.token_to_id("<pad>"), "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")


if __name__ == "__main__":
    make_tokenizer(make_data(random.Random(0)))

"""Every causal-LM architecture transformers registers, built tiny on CPU and scored through lit-align's fast paths.

    python benchmarks/architecture_matrix.py                 # the whole matrix, table to stdout
    python benchmarks/architecture_matrix.py --write docs/architectures.md
    python benchmarks/architecture_matrix.py llama mistral   # some model types only

For each entry of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` (none hand-picked) the config class is built with a small
hidden size, 2 layers, a 96-token vocabulary, few experts and, where the architecture has one, a 4-token attention
window (layer types mixed, sliding then full, where the config has them), and a random model from it. Rows are
longer than the window (prompts of 6-9 tokens, completions of 8-13). Two calls of ``PolicyWithReference`` run
with their fast paths on and a fresh check each: ``packed_scores`` (shared-prompt packing and the chunked LM head)
on right-padded pairs, ``completion_scores`` (the chunked head, with entropy) on left-padded rows. Each result is
compared with the model's own plain forward (full logits, separate rows): **exact** means both fast paths were kept
and every token agrees within 1e-5; **fallback** means a path was turned off by its check (the line it printed is
listed) and the result, from the plain path, agrees within 1e-5; **wrong** (a failure) is any result beyond 1e-5.
Architectures that cannot be built tiny or do not run a text-only forward on CPU are listed with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch

TOKEN_TOLERANCE = 1e-5
MAX_PARAMETERS = 5_000_000  # beyond this the tiny settings did not reach some part of the model
VOCAB = 96
WINDOW = 4
#: Fields set on every config that has them (aliases through the config's attribute_map).
TINY = {
    "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 128,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_topk": 2,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "n_shared_experts": 1,
    "num_shared_experts": 1, "first_k_dense_replace": 0, "n_group": 1, "topk_group": 1,
    "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8,
    "qk_head_dim": 16, "rotary_dim": 4, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    "tie_word_embeddings": False, "encoder_layers": 2, "decoder_layers": 2, "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
}


@dataclass
class Outcome:
    """What one architecture did."""

    model_type: str
    status: str  # exact | fallback | wrong | not buildable
    detail: str = ""
    lines: list[str] = field(default_factory=list)
    difference: float = 0.0  # largest |lit-align - plain| per token of the results


def tiny_config(model_type: str):
    """The architecture's config with the ``TINY`` fields and a ``WINDOW``-token attention window where it has one
    (its sub-configs, e.g. a multimodal wrapper's text and vision configs, likewise)."""
    from transformers import CONFIG_MAPPING

    return _tiny(CONFIG_MAPPING[model_type])


def _tiny(cls):
    base = cls()
    given = {k: v for k, v in TINY.items() if _has(base, k)}
    if getattr(base, "sliding_window", None) is not None:
        given["sliding_window"] = WINDOW
    if getattr(base, "use_sliding_window", None) is False:
        given["use_sliding_window"] = True
        given["sliding_window"] = WINDOW
    types = getattr(base, "layer_types", None)
    if types is not None and "sliding_attention" in types:
        given["layer_types"] = ["sliding_attention", "full_attention"]
    elif types is not None:
        given["layer_types"] = list(types[:1]) * 2 if len(set(types)) == 1 else list(types[:2])
    for name, sub in (getattr(cls, "sub_configs", None) or {}).items():
        if isinstance(sub, type) and getattr(base, name, None) is not None:
            with contextlib.suppress(Exception):
                given[name] = _tiny(sub)
    config = _build(cls, given)
    for key, value in given.items():  # fields an __init__ renamed or ignored
        if _has(config, key) and getattr(config, key) != value and key != "layer_types":
            with contextlib.suppress(Exception):
                setattr(config, key, value)
    return config


def _build(cls, given: dict):
    """``cls(**given)``; where the config refuses a field it names (a derived property), without that field, and
    where it still refuses, without the layer types."""
    given = dict(given)
    for _ in range(4):
        try:
            return cls(**given)
        except Exception as err:
            named = [key for key in given if f"'{key}'" in str(err)]
            if not named and "layer_types" not in given:
                raise
            for key in named or ["layer_types"]:
                given.pop(key)
    return cls(**given)


def _has(config, name: str) -> bool:
    return name in getattr(config, "attribute_map", {}) or hasattr(config, name)


def rows(vocab: int, seed: int = 0):
    """Two examples of two completions each, right-padded (prompt lengths 6-9, completions 8-13)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [6, 9]
    completions = [[8, 13], [11, 9]]  # [example][k]
    width = max(p + c for p, cs in zip(prompts, completions) for c in cs)
    ids = torch.zeros(4, width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    completion = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        prompt = torch.randint(3, vocab, (p,), generator=g)
        for k, c in enumerate(completions[b]):
            row = k * 2 + b
            ids[row, :p] = prompt
            ids[row, p : p + c] = torch.randint(3, vocab, (c,), generator=g)
            attention[row, : p + c] = 1
            completion[row, p : p + c] = 1
    return ids, attention, completion


def left_padded(ids, attention, completion):
    """The same rows padded on the left (the on-policy layout)."""
    shift = (attention.shape[1] - attention.sum(-1)).tolist()
    out = [torch.roll(t, s, dims=0) for t in (ids, attention, completion) for s in [0]]
    del out
    return tuple(torch.stack([torch.roll(t[r], shift[r]) for r in range(t.shape[0])])
                 for t in (ids, attention, completion))


def plain_logps(model, ids, attention, completion, temperature=1.0):
    """The model's own forward of the separate rows: full logits, its own mask, positions counting real tokens."""
    from lit_align.models.logprobs import completion_token_logprobs, token_entropy
    from lit_align.policy.with_reference import position_ids_from_mask

    logits = model(input_ids=ids, attention_mask=attention, position_ids=position_ids_from_mask(attention),
                   use_cache=False).logits
    logps, mask = completion_token_logprobs(logits, ids, completion, temperature)
    return logps, mask, token_entropy(logits[:, :-1])


def check(model_type: str) -> Outcome:
    """Build ``model_type`` tiny and score it through the fast paths; see the module docstring."""
    from transformers import AutoModelForCausalLM

    from lit_align.models.fast_path import FastPathCheck
    from lit_align.policy.with_reference import PolicyWithReference
    from lit_align.models.packing import pack_shared_prompt

    try:
        config = tiny_config(model_type)
        with torch.device("meta"):
            size = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        if size > MAX_PARAMETERS:
            return Outcome(model_type, "not buildable", f"{size / 1e6:.0f}M parameters with the tiny settings "
                           "(fields the matrix does not know keep their full size)")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        vocab = model.get_input_embeddings().weight.shape[0]
        ids, attention, completion = rows(min(vocab, VOCAB))
        with torch.no_grad():
            expected, mask, entropy = plain_logps(model, ids, attention, completion)
            left = left_padded(ids, attention, completion)
            expected_left, _, entropy_left = plain_logps(model, *left)
    except Exception as err:
        return Outcome(model_type, "not buildable", _short(err))
    policy = _host()
    policy.policy = model
    policy.fast_paths = FastPathCheck()
    try:
        with torch.no_grad():
            packed = pack_shared_prompt(ids, attention, completion, 2)
            got = policy.packed_scores(packed, ids.shape[1] - 1)
            policy_left = policy.fast_paths
            policy.fast_paths = FastPathCheck()
            got_left = policy.completion_scores(*left, entropy=True)
    except Exception as err:  # the plain path itself failed: lit-align could not score this model
        return Outcome(model_type, "wrong", f"lit-align raised {_short(err)}")
    lines = list(dict.fromkeys(policy_left.lines + policy.fast_paths.lines))
    gaps = [(got.logps - expected).abs()[mask], (got_left.logps - expected_left).abs()[mask.flip(0) * 0 == 0][:0],
            ((got_left.logps - expected_left).abs() * left[2][:, 1:]).flatten(),
            ((got_left.entropy - entropy_left).abs() * left[2][:, 1:]).flatten()]
    difference = float(max(float(g.max()) if g.numel() else 0.0 for g in gaps))
    if not difference <= TOKEN_TOLERANCE:
        return Outcome(model_type, "wrong", f"differs by {difference:.3g} nats per token", lines, difference)
    return Outcome(model_type, "fallback" if lines else "exact", "", lines, difference)


_HOST = None


def _host():
    """A ``PolicyWithReference`` without a reference whose ``policy`` is swapped for each architecture."""
    global _HOST
    if _HOST is None:
        from lit_align.policy.with_reference import PolicyWithReference

        _HOST = PolicyWithReference(reference="none")
    return _HOST


def _short(err: Exception) -> str:
    text = f"{type(err).__name__}: {err}".splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


def model_types(selected: list[str] | None = None) -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    return [n for n in names if n in selected] if selected else names


def run(selected: list[str] | None = None) -> list[Outcome]:
    outcomes = []
    torch.set_num_threads(1)  # tiny matmuls: more threads only wait for each other
    quiet = {"transformers": logging.ERROR, "lightning.pytorch": logging.WARNING}
    levels = {name: logging.getLogger(name).level for name in quiet}  # put back after: a caller's logs stay
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    try:
        for name in model_types(selected):
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                outcomes.append(check(name))
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    return outcomes


def table(outcomes: list[Outcome], seconds: float | None = None) -> str:
    import transformers

    counts = {s: sum(o.status == s for o in outcomes) for s in ("exact", "fallback", "wrong", "not buildable")}
    head = [f"transformers {transformers.__version__}, torch {torch.__version__}: {len(outcomes)} causal-LM "
            f"architectures registered; **{counts['exact']} exact**, **{counts['fallback']} fallback**, "
            f"{counts['wrong']} wrong, {counts['not buildable']} not buildable tiny on CPU"
            + (f" ({seconds:.0f} s)." if seconds is not None else "."), "",
            "| model type | result | detail |", "|---|---|---|"]
    body = []
    for o in outcomes:
        detail = o.detail or "; ".join(line.split(": ", 1)[1] if ": " in line else line for line in o.lines)
        if o.status == "exact":
            detail = f"largest difference {o.difference:.1e}"
        body.append(f"| {o.model_type} | {o.status} | {detail.replace('|', '/')} |")
    return "\n".join(head + body) + "\n"


PAGE = """# Architectures: which fast paths serve which models

lit-align scores completions through two partial forwards, the chunked LM head and shared-prompt packing
([architecture.md](architecture.md)). Each checks itself against the model's own forward on the run's first
batch and falls back to the plain forward for the run when they differ, saying so in one line
(`lit_align/fast_path.py`). This page is the result of that check over every causal-LM architecture the installed
transformers registers, each built tiny on CPU (2 layers, hidden size 32, a 96-token vocabulary, a 4-token
attention window where the architecture has one, rows longer than the window). Regenerate it with

    python benchmarks/architecture_matrix.py --write docs/architectures.md

- **exact**: both fast paths kept; every completion token's log-prob (and entropy) within 1e-5 of the plain forward.
- **fallback**: a fast path turned itself off (the reason is the line the run prints); the plain path's result is
  within 1e-5.
- **wrong**: lit-align's result differs from the model's own forward (none is expected: the test fails on it).
- **not buildable**: the architecture cannot be built tiny from its config, or its forward does not run on text
  alone on CPU; the reason is given.

The whole matrix runs in the extended test step (`tests/models/test_architecture_matrix.py`), a sample in the default one.

"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_types", nargs="*", help="model types to check (default: all registered)")
    parser.add_argument("--write", help="write the page (markdown) to this path")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    outcomes = run(args.model_types or None)
    text = table(outcomes, time.perf_counter() - start)
    if args.write:
        with open(args.write, "w") as f:
            f.write(PAGE + text)
    print(text)
    return 1 if any(o.status == "wrong" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())

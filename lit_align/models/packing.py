"""One forward pass per example for all its completions: the prompt is run once and shared.

A preference batch holds every example twice (prompt + chosen, prompt + rejected), so the transformer runs over
each prompt twice. Packing the example into one row ``prompt | completion 1 | ... | completion K`` with an
attention mask that lets completion k see the prompt and itself but no other completion, and positions that
restart after the prompt for every completion, gives every completion token exactly the context and position it
has in its own sequence, so the log-probs are those of the separate rows (up to float rounding), for 2P + C + R
tokens of work replaced by P + C + R.

The first token of every completion is predicted by the last prompt position; later tokens by the token before
them. Only the positions from the shortest prompt's last token on go through the LM head (``logits_to_keep``).

What the mask must reproduce depends on the architecture (``packing_refusal``, ``masks_for``): a sliding attention
window is applied inside the mask, per completion, on the restarted positions (a 4-D mask is taken by
transformers as given, window included); a model whose layers differ (some full, some sliding) gets one mask per
layer type, as its forward builds them itself. Position schemes by physical distance (ALiBi) and layers that carry
a state along the sequence (linear attention, state-space and convolution layers) are never packed. The rest is
not assumed: every run checks the packed forward against the model's own forward of the separate rows on its first
batch and runs the rows separately when they differ (``lit_align.models.fast_path``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from lit_align.models.logprobs import token_logprobs

#: Attention kernels that honour an arbitrary 4-D mask (flash attention does not).
MASKED_ATTENTION = ("eager", "sdpa")
#: Layer types whose keys a packed mask can describe, and whether they attend through a window.
_MASKABLE_LAYERS = {"full_attention": False, "sliding_attention": True}


@dataclass
class SharedPromptBatch:
    """K completions per example packed behind one copy of their prompt (B examples, L packed positions)."""

    input_ids: torch.Tensor  # (B, L), right-padded
    attention_mask: torch.Tensor  # (B, 1, L, L) bool, True where the query (row) may attend to the key (column)
    position_ids: torch.Tensor  # (B, L): positions each token has in its own prompt + completion sequence
    logits_to_keep: int  # the model computes logits for the last logits_to_keep positions only
    source: torch.Tensor  # (N,) flat index into the kept (B * logits_to_keep) logits predicting each scored token
    labels: torch.Tensor  # (N,) the scored completion tokens
    row: torch.Tensor  # (N,) the unpacked row (block k * B + b) each scored token belongs to
    column: torch.Tensor  # (N,) its position in that row's next-token layout (T-1 columns, lit_align.models.logprobs)
    num_rows: int  # K * B
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # the unpacked (ids, attention, completion)


def pack_shared_prompt(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
    groups: int | torch.Tensor,
) -> SharedPromptBatch:
    """Pack (R, T) rows of prompt + completion, each group of rows sharing one prompt, into one row per group.

    Args:
        input_ids: (R, T) rows whose real tokens are contiguous: right-padded (``CompletionCollator``) or a
            left-padded prompt followed by a right-padded completion (a ``Rollout``).
        attention_mask: (R, T) the real tokens.
        completion_mask: (R, T) the scored tokens: one contiguous completion per row, after its prompt.
        groups: which rows share a prompt: K for the collator's block layout (row ``k * B + b`` is completion k
            of example b), or (R,) the example of every row (a rollout's ``prompt_index``). The rows of a group
            must hold the same prompt; the packed row b is the b-th example in increasing order.
    """
    rows, device = input_ids.shape[0], input_ids.device
    if isinstance(groups, int):
        groups = torch.arange(rows, device=device) % (rows // groups)
    mask, real = completion_mask.bool(), attention_mask.bool()
    lengths = mask.sum(-1)  # (R,)
    starts = real.int().argmax(-1)  # the first real token: 0 for right-padded rows
    # the completion starts where the prompt ends; a row whose completion was truncated away is all prompt
    ends = torch.where(lengths > 0, mask.int().argmax(-1), starts + real.sum(-1))
    layout = torch.stack([groups.to(device), starts, ends, lengths], 1).tolist()  # one sync
    members: dict[int, list[int]] = {}
    for row, (group, *_) in enumerate(layout):
        members.setdefault(group, []).append(row)
    order = [members[g] for g in sorted(members)]
    # each group's prompt: that of its row with the longest one (rows without a completion may run longer)
    prompts = [max(group, key=lambda r: layout[r][2] - layout[r][1]) for group in order]
    prompt_sizes = [layout[r][2] - layout[r][1] for r in prompts]

    num_examples = len(order)
    packed_length = max(p + sum(layout[r][3] for r in group) for p, group in zip(prompt_sizes, order))
    ids = torch.zeros(num_examples, packed_length, dtype=input_ids.dtype, device=device)
    position_ids = torch.zeros(num_examples, packed_length, dtype=torch.long, device=device)
    segment = torch.full((num_examples, packed_length), -1, dtype=torch.long, device=device)  # -1 pad, 0 prompt
    sources, labels, row_of, column_of = [], [], [], []
    first_kept = max(min(prompt_sizes) - 1, 0)
    keep = packed_length - first_kept
    for b, (group, prompt_row, prompt) in enumerate(zip(order, prompts, prompt_sizes)):
        begin = layout[prompt_row][1]
        ids[b, :prompt] = input_ids[prompt_row, begin : begin + prompt]
        position_ids[b, :prompt] = torch.arange(prompt, device=device)
        segment[b, :prompt] = 0
        start = prompt
        for k, row in enumerate(group):
            completion, length = layout[row][2], layout[row][3]
            ids[b, start : start + length] = input_ids[row, completion : completion + length]
            position_ids[b, start : start + length] = torch.arange(prompt, prompt + length, device=device)
            segment[b, start : start + length] = k + 1
            # token j of the completion sits at start + j and is predicted by start + j - 1, token 0 by the
            # prompt's end; in the row's own next-token layout it is column completion - 1 + j
            predictors = torch.arange(start - 1, start + length - 1, device=device)
            predictors[0:1] = prompt - 1
            scored = predictors >= 0  # a completion with no prompt before it: its first token has no predictor
            sources.append(b * keep + predictors[scored] - first_kept)
            labels.append(ids[b, start : start + length][scored])
            row_of.append(torch.full((int(scored.sum()),), row, device=device))
            column_of.append(torch.arange(completion - 1, completion - 1 + length, device=device)[scored])
            start += length

    causal = torch.ones(packed_length, packed_length, dtype=torch.bool, device=device).tril()
    same_or_prompt = (segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None])  # (B, query, key)
    return SharedPromptBatch(
        input_ids=ids, attention_mask=(causal & same_or_prompt)[:, None], position_ids=position_ids,
        logits_to_keep=keep, source=torch.cat(sources), labels=torch.cat(labels), row=torch.cat(row_of),
        column=torch.cat(column_of), num_rows=rows, rows=(input_ids, attention_mask, completion_mask),
    )


def packing_pays(packed: SharedPromptBatch, width: int, model: nn.Module) -> bool:
    """Whether the packed forward costs less than that of the separate (``num_rows``, ``width``) rows.

    Per layer a token costs about 24 H^2 multiply-adds in its projections and MLP, and a row of L tokens about
    4 H L^2 in attention, so a row costs ~ L (1 + L / (6 H)), padding included. Packing removes the copies of the
    prompt but lengthens the row, so many long completions behind a short prompt (a group of 8 samples of 1,000
    tokens) cost more packed, and their (L, L) mask grows with the square of the packed length: those run apart.
    """
    hidden = getattr(_text_config(model), "hidden_size", None)
    if not isinstance(hidden, int) or hidden <= 0:
        return True

    def cost(rows: int, length: int) -> float:
        return rows * length * (1 + length / (6 * hidden))

    return cost(*packed.input_ids.shape) < cost(packed.num_rows, width + 1)


def shared_prompt_token_logps(
    logits: torch.Tensor, packed: SharedPromptBatch, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (K*B, width) of every completion, zero off its tokens, in the unpacked rows' layout
    (``width`` = T-1 of the unpacked batch), and the mean logit over each completion's tokens (K*B,), detached.
    ``logits``: (B, logits_to_keep, V)."""
    picked = logits.reshape(-1, logits.shape[-1])[packed.source]  # (N, V)
    token_logps = token_logprobs(picked[None], packed.labels[None])[0]  # (N,) float32
    tokens = torch.zeros(packed.num_rows, width, dtype=torch.float32, device=logits.device)
    tokens = tokens.index_put((packed.row, packed.column), token_logps)
    zeros = torch.zeros(packed.num_rows, dtype=torch.float32, device=logits.device)
    counts = zeros.index_add(0, packed.row, torch.ones_like(token_logps))
    mean_logits = zeros.index_add(0, packed.row, picked.detach().float().mean(-1)) / counts.clamp(min=1)
    return tokens, mean_logits


def _text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def attention_windows(model: nn.Module) -> dict[str, int | None]:
    """The attention window of each layer type of ``model`` (None: full attention), read from its (text) config:
    ``layer_types`` with ``sliding_window``; without ``layer_types`` (Mistral, Phi-3) a ``sliding_window`` applies to
    every layer, unless ``use_sliding_window`` is off. Key ``"*"``: one kind for every layer."""
    config = _text_config(model)
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None:
        return {kind: window if _MASKABLE_LAYERS.get(kind) else None for kind in set(types)}
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    return {"*": window}


def smallest_window(model: nn.Module) -> int | None:
    """The narrowest attention window of ``model``'s layers, None when every layer attends to everything."""
    windows = [w for w in attention_windows(model).values() if isinstance(w, int)]
    return min(windows) if windows else None


def packing_refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot be packed behind shared prompts (None: it can; its first batch confirms it)."""
    config = model.config
    kernel = getattr(config, "_attn_implementation", "sdpa")
    if kernel not in MASKED_ATTENTION:
        return f"{kernel!r} attention ignores the packed mask (a 4-D mask)"
    if _uses_alibi(config) or _uses_alibi(_text_config(model)):
        return "its positions are physical distances (ALiBi), which the packed row changes"
    if "position_ids" not in inspect.signature(_forward_owner(model).forward).parameters:
        return "its forward takes no position ids, so the completions' positions cannot restart"
    types = set(getattr(_text_config(model), "layer_types", None) or ())
    other = sorted(types - set(_MASKABLE_LAYERS))
    if other:
        return f"its {', '.join(other)} layers are not described by an attention mask"
    if any(_MASKABLE_LAYERS.get(k) and not isinstance(w, int) for k, w in attention_windows(model).items()):
        return "its sliding-window layers have no sliding_window in the config"
    return None


def _uses_alibi(config) -> bool:
    nested = getattr(config, "attn_config", None)
    return bool(getattr(config, "alibi", False) or getattr(nested, "alibi", False)
                or "alibi" in str(getattr(config, "position_embedding_type", "")).lower())


def _forward_owner(model: nn.Module) -> nn.Module:
    # a peft wrapper forwards **kwargs: the transformers model underneath says what it takes
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def masks_for(model: nn.Module, allowed: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor | dict:
    """The packed (B, 1, L, L) boolean mask ``allowed`` as ``model``'s attention takes it: with each layer type's
    window applied on the restarted positions (a query attends to a key less than ``window`` positions before it in
    its own sequence), one mask for every layer or a dict by layer type, in the kernel's form (SDPA: boolean;
    eager: 0 where allowed, the dtype's minimum elsewhere)."""
    windows = attention_windows(model)
    if any(window is not None for window in windows.values()):
        distance = position_ids[:, None, :, None] - position_ids[:, None, None, :]  # (B, 1, query, key)
    masks = {kind: allowed if window is None else allowed & (distance < window) for kind, window in windows.items()}
    masks = {kind: _in_kernel_form(model, mask) for kind, mask in masks.items()}
    if len(masks) == 1:
        return next(iter(masks.values()))
    return masks


def _in_kernel_form(model: nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    # SDPA takes the boolean mask as it is. Eager attention adds the mask to the scores, so it needs 0 where
    # attention is allowed and a large negative number elsewhere: given True/False it silently adds 1/0.
    if getattr(model.config, "_attn_implementation", "sdpa") == "sdpa":
        return allowed
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)

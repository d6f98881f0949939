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
    prompts = ends - starts  # (R,)
    every = torch.arange(rows, device=device)

    # groups in increasing order; the rows of each in their order (a stable sort keeps it)
    _, example = torch.unique(groups.to(device), return_inverse=True)  # (R,) packed row of each row
    order = torch.sort(example, stable=True).indices  # (R,) rows group by group
    num_examples = int(example.max()) + 1 if rows else 0
    # each group's prompt: that of its row with the longest one (rows without a completion may run longer)
    prompt_size = prompts.new_zeros(num_examples).scatter_reduce(0, example, prompts, "amax")  # (G,)
    longest = torch.where(prompts == prompt_size[example], every, rows)
    prompt_row = every.new_full((num_examples,), rows).scatter_reduce(0, example, longest, "amin")  # (G,)
    # where each row's completion starts in its packed row: after the prompt and the group's earlier rows
    done_before = lengths[order].cumsum(0) - lengths[order]  # (R,) completion tokens before, in `order`
    group_start = every.new_full((num_examples,), rows).scatter_reduce(0, example[order], every, "amin")
    offset = torch.empty_like(lengths)
    offset[order] = prompt_size[example[order]] + done_before - done_before[group_start[example[order]]]
    rank = torch.empty_like(lengths)
    rank[order] = every - group_start[example[order]]  # k: the row's place within its group
    totals = prompt_size + lengths.new_zeros(num_examples).index_add(0, example, lengths)
    packed_length, first_prompt = (int(v) for v in torch.stack([totals.max(), prompt_size.min()]).tolist())

    # the prompt part of every packed row: positions 0 .. P-1
    column = torch.arange(packed_length, device=device)[None]  # (1, L)
    in_prompt = column < prompt_size[:, None]  # (G, L)
    source = (starts[prompt_row][:, None] + column).clamp(max=input_ids.shape[1] - 1)
    ids = torch.where(in_prompt, input_ids[prompt_row[:, None], source], 0).to(input_ids.dtype)
    position_ids = torch.where(in_prompt, column, 0)
    segment = torch.where(in_prompt, 0, -1)  # -1 padding, 0 prompt, k + 1 completion k

    # the completion tokens, group by group, row by row (one entry per token)
    token_row = torch.repeat_interleave(order, lengths[order])  # (N,)
    token_step = every.new_zeros(0) if token_row.numel() == 0 else \
        torch.arange(token_row.numel(), device=device) - torch.repeat_interleave(done_before, lengths[order])
    packed_row, place = example[token_row], offset[token_row] + token_step
    labels = input_ids[token_row, ends[token_row] + token_step]
    ids[packed_row, place] = labels
    position_ids[packed_row, place] = prompt_size[packed_row] + token_step
    segment[packed_row, place] = rank[token_row] + 1
    # token j is predicted by the position before it; token 0 by the prompt's last position (none without one)
    predictor = torch.where(token_step == 0, prompt_size[packed_row] - 1, place - 1)
    scored = predictor >= 0
    first_kept = max(first_prompt - 1, 0)
    keep = packed_length - first_kept
    row_of, column_of = token_row[scored], (ends[token_row] - 1 + token_step)[scored]
    sources, labels = (packed_row * keep + predictor - first_kept)[scored], labels[scored]

    causal = torch.ones(packed_length, packed_length, dtype=torch.bool, device=device).tril()
    same_or_prompt = (segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None])  # (B, query, key)
    return SharedPromptBatch(
        input_ids=ids, attention_mask=(causal & same_or_prompt)[:, None], position_ids=position_ids,
        logits_to_keep=keep, source=sources, labels=labels, row=row_of, column=column_of, num_rows=rows,
        rows=(input_ids, attention_mask, completion_mask),
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

"""Completion log-probs (and entropies, KLs) from the final hidden states: the (B, T, V) logits never exist.

At a modern vocabulary (128k-152k entries) the logits tensor, not the weights, decides whether a run fits. So
for the duration of one forward the model's LM head (``get_output_embeddings()``) is replaced by a
``ChunkedHead``: the model hands it the final hidden states (after the final norm) that it would have multiplied
by the head; it keeps the positions that predict a scored token (prompt and padding positions never meet the
head) and, chunk by chunk of positions, computes their logits, the float32 log-softmax and what was asked: the
scored token's log-prob, the entropy, the exact KL to a reference. Each chunk runs under non-reentrant activation
checkpointing, so forward and backward hold one chunk of logits at a time.

The head runs inside the model's own forward, as the unreplaced head would: whatever that forward does to the
weights still holds (FSDP2 all-gathers the root unit's embeddings, final norm and head around it; tied
embeddings; peft wrappers). What the model's forward does to the head's output afterwards would act on our
columns instead, so the columns are taken from the ``ChunkedHead`` itself and the model's output is dropped; the
post-head transforms that configs declare (``LogitTransform``: muP's ``lm_head_multiplier``, Cohere's
``logit_scale``, ``output_multiplier``, Granite's ``logits_scaling``, Gemma's ``final_logit_softcapping``,
RecurrentGemma's ``logits_soft_cap``, xLSTM's ``output_logit_soft_cap``, in the config or its text config) are
applied to each chunk of logits, as the model applies them to its full logits. A transform the config does not
declare is not guessed at: every run checks this head against the model's own forward on its first batch and
falls back to the full logits when they differ (``lit_align.models.fast_path``). The values then equal those of
``lit_align.models.logprobs`` on the full logits (same dtype of the head matmul, same float32 maths, same temperature
division), up to the rounding of a matmul over fewer rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lit_align.models.logprobs import check_temperature

#: Most float32 logits per chunk (64 MiB): 128 positions at a 131,072-entry vocabulary.
CHUNK_ELEMENTS = 2**24
#: Fewest float32 logits per chunk the work may choose (16 MiB): smaller chunks start to cost time (measured in
#: docs/performance.md: 8 and 32 chunks of 1,024 positions at 131,072 entries took the same time, 128 more).
MIN_CHUNK_ELEMENTS = 2**22
#: A chunk's logits are kept to about one decoder layer's activations of the same positions (~16 floats per
#: hidden unit and position), between the two bounds above: a small model is not made to hold 64 MiB of logits.
ACTIVATION_MULTIPLE = 16
# Config fields of what forwards do to the logits after the head: factors, divisors and the soft cap.
_MULTIPLIERS = ("lm_head_multiplier", "logit_scale", "output_multiplier")
_DIVISORS = ("logits_scaling",)
_SOFTCAPS = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")


@dataclass
class CompletionScores:
    """What one forward gives of every row's completion (R rows, T columns of input).

    Attributes:
        logps: (R, T-1) float32 log-probs of the completion tokens (column t scores token t+1), zero off ``mask``.
        mask: (R, T-1) bool, the completion tokens.
        mean_logits: (R,) mean logit over the completion tokens, detached (the ``logits/*`` diagnostic).
        entropy: (R, T-1) entropy of the next-token distribution at the completion positions, zero elsewhere.
        kl: (R, T-1) exact KL(model || reference) over the vocabulary at the completion positions.
        reference_logps: (R, T-1) the reference's log-probs of the same tokens (with ``kl``).
        hidden: (R, T, H) the final hidden states (the head's input), when asked for (value heads).
    """

    logps: torch.Tensor
    mask: torch.Tensor
    mean_logits: torch.Tensor
    entropy: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    reference_logps: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


@dataclass
class HeadRequest:
    """What the head is asked for: the scored positions and labels; outputs are left on it by ``ChunkedHead``."""

    index: torch.Tensor  # (N,) rows of the flattened (B * kept, H) head input that predict a scored token
    labels: torch.Tensor  # (N,) the tokens they predict
    temperature: float = 1.0
    entropy: bool = False
    reference: tuple[torch.Tensor, nn.Module] | None = None  # (reference hidden (N, H), reference head) for KL
    keep_input: bool = False
    kept: int | None = None  # how many trailing positions ``index`` counts in (None: all of them)
    transform: LogitTransform | None = None  # what the model does to the head's output
    head_input: torch.Tensor | None = None  # (B, kept, H), with keep_input
    selected: torch.Tensor | None = None  # (N, H) hidden states of the scored positions, detached
    columns: torch.Tensor | None = None  # (N, C) the answer, left here by ChunkedHead


@dataclass(frozen=True)
class LogitTransform:
    """What a model's forward does to its head's output, as its config declares it: ``logits * multiplier /
    divisor``, then ``cap * tanh(logits / cap)`` with a soft cap. Applied in the logits' dtype, as the model does."""

    multiplier: float = 1.0
    divisor: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, model: nn.Module) -> LogitTransform | str:
        """The transform ``model``'s config declares (its own fields and its text config's), or why it cannot say."""
        found: dict[str, float] = {}
        for config in _configs(model):
            for name in (*_MULTIPLIERS, *_DIVISORS, *_SOFTCAPS):
                value = getattr(config, name, None)
                if value is None or name in found:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    return f"its config's {name} is {value!r}, not a number"
                found[name] = float(value)
        multiplier = divisor = 1.0
        for name in _MULTIPLIERS:
            multiplier *= found.get(name, 1.0)
        for name in _DIVISORS:
            divisor *= found.get(name, 1.0)
        softcap = next((found[n] for n in _SOFTCAPS if found.get(n)), None)
        return cls(multiplier, divisor, softcap)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.multiplier != 1.0:
            logits = logits * self.multiplier
        if self.divisor != 1.0:
            logits = logits / self.divisor
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class PostHead:
    """The LM head followed by the model's ``LogitTransform``: what the model's logits are made of."""

    def __init__(self, head: nn.Module, transform: LogitTransform | None) -> None:
        self.head, self.transform = head, transform

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        return logits if self.transform is None else self.transform(logits)


def _configs(model: nn.Module) -> list:
    config = getattr(model, "config", None)
    if config is None:
        return []
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return [config] if text is config else [config, text]


class ChunkedHead(nn.Module):
    """Stands in for the LM head during one forward and returns (N, C) scores instead of (B, kept, V) logits."""

    def __init__(self, head: nn.Module, request: HeadRequest) -> None:
        super().__init__()
        self.head = head
        self.request = request

    @property
    def weight(self) -> torch.Tensor:
        """The replaced head's weight, for forwards that read it (its dtype, its device)."""
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        request = self.request
        if request.kept is not None and hidden.shape[1] > request.kept:  # a forward that ignored logits_to_keep
            hidden = hidden[:, -request.kept :]
        if request.keep_input:
            request.head_input = hidden
        picked = hidden.reshape(-1, hidden.shape[-1])[request.index]  # (N, H)
        request.selected = picked.detach()
        request.columns = head_scores(PostHead(self.head, request.transform), picked, request.labels,
                                      request.temperature, request.entropy, request.reference)
        # a copy for the forward to transform (or edit in place); ``run_with_request`` keeps the head's own
        return request.columns.clone()


def head_scores(head: nn.Module | PostHead, hidden: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                entropy: bool = False, reference: tuple[torch.Tensor, nn.Module] | None = None) -> torch.Tensor:
    """Columns (log-prob, mean logit, [entropy], [KL, reference log-prob]) of each of the N positions, float32
    (N, C), from their hidden states (N, H) and the head, chunk by chunk under activation checkpointing. Logits
    that fit in one chunk of at most ``MIN_CHUNK_ELEMENTS`` floats (a small vocabulary) are kept for the backward
    instead: recomputing them would cost a head matmul and saves nothing worth it."""
    check_temperature(temperature)
    vocab = head.weight.shape[0]
    rows = chunk_rows(hidden.shape[0], hidden.shape[-1], vocab)
    recompute = torch.is_grad_enabled() and (hidden.shape[0] > rows or hidden.shape[0] * vocab > MIN_CHUNK_ELEMENTS)
    ref_hidden, ref_head = reference if reference is not None else (None, None)
    parts = []
    for start in range(0, hidden.shape[0], rows):
        piece = slice(start, start + rows)
        args = (hidden[piece], labels[piece], None if ref_hidden is None else ref_hidden[piece])

        def run(h, y, ref_h):
            ref_logits = None if ref_h is None else ref_head(ref_h)
            return _scores(head(h), y, temperature, entropy, ref_logits)

        parts.append(checkpoint(run, *args, use_reentrant=False) if recompute else run(*args))
    if not parts:
        return hidden.new_zeros(0, 2 + entropy + 2 * (reference is not None), dtype=torch.float32)
    return torch.cat(parts)


def chunk_rows(positions: int, width: int, vocab: int) -> int:
    """Positions per chunk of the head: logits of about ``ACTIVATION_MULTIPLE`` x ``positions`` x ``width``
    floats (one layer's activations), at least ``MIN_CHUNK_ELEMENTS`` and at most ``CHUNK_ELEMENTS``, split evenly
    over the chunks that takes (no small last chunk).

    Args:
        positions: the scored positions N of the call.
        width: the hidden size H (the head's input).
        vocab: the head's output size V.
    """
    budget = min(CHUNK_ELEMENTS, max(MIN_CHUNK_ELEMENTS, ACTIVATION_MULTIPLE * positions * width))
    most = max(1, budget // vocab)
    chunks = max(1, -(-positions // most))
    return max(1, -(-positions // chunks))


def _scores(logits: torch.Tensor, labels: torch.Tensor, temperature: float, entropy: bool,
            ref_logits: torch.Tensor | None) -> torch.Tensor:
    """The columns of ``head_scores`` from (n, V) logits in the model's dtype."""
    mean = logits.detach().float().mean(-1)  # of the untempered logits, like the full-logits diagnostic
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)
    columns = [logp.gather(-1, labels[:, None]).squeeze(-1), mean]
    if entropy:
        columns.append(-(logp.exp() * logp).sum(-1))
    if ref_logits is not None:
        ref_logits = ref_logits.float()
        ref_logp = F.log_softmax(ref_logits / temperature if temperature != 1.0 else ref_logits, dim=-1)
        columns.append((logp.exp() * (logp - ref_logp)).sum(-1))
        columns.append(ref_logp.gather(-1, labels[:, None]).squeeze(-1))
    return torch.stack(columns, -1)


def head_refusal(model: nn.Module) -> str | None:
    """Why ``model``'s head cannot be replaced by a ``ChunkedHead`` (None: it can; the first batch confirms it)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        return "it has no output embeddings with a weight to replace"
    transform = LogitTransform.of(model)
    return transform if isinstance(transform, str) else None


def chunkable(model: nn.Module) -> bool:
    """Whether ``model``'s head can be replaced (``head_refusal``)."""
    return head_refusal(model) is None


def _owner(model: nn.Module, child: nn.Module) -> tuple[nn.Module, str]:
    for module in model.modules():
        for name, candidate in module.named_children():
            if candidate is child:
                return module, name
    raise ValueError(f"the output embeddings of {type(model).__name__} are not one of its submodules")


def run_with_request(model: nn.Module, request: HeadRequest, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     **kwargs) -> torch.Tensor:
    """One forward of ``model`` whose head answers ``request``: the (N, C) columns of ``head_scores``, taken from
    the head itself (what the forward does to its output afterwards is dropped; ``LogitTransform`` applies it)."""
    from lit_align.models.forward import run_causal_lm

    head = model.get_output_embeddings()
    parent, name = _owner(model, head)
    request.transform = LogitTransform.of(model)
    request.columns = None
    setattr(parent, name, ChunkedHead(head, request))
    try:
        out = run_causal_lm(model, input_ids, attention_mask, **kwargs)
    finally:
        setattr(parent, name, head)
    if request.columns is None:
        raise RuntimeError(f"{type(model).__name__}'s forward never called its output embeddings")
    if not out.requires_grad:
        return request.columns
    # The gradient must still enter through the forward's output: FSDP2 hooks the re-gather of the root's weights
    # (the head's among them) there, before the head's chunks are recomputed. A zero-weighted link does that.
    return request.columns + (out - out.detach()).sum() * 0


def run_with_full_logits(model: nn.Module, request: HeadRequest, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, ref_logits: torch.Tensor | None = None,
                         **kwargs) -> torch.Tensor:
    """``run_with_request`` through the model's own head and its full (B, kept, V) logits: the path of models
    that are not ``chunkable`` (and of the KL to a sharded reference copy, whose head is sharded outside its
    own forward). ``ref_logits``: the reference's logits of the same forward, for the KL columns."""
    from lit_align.models.forward import run_causal_lm

    def keep(module, args):
        request.head_input = args[0]

    hook = model.get_output_embeddings().register_forward_pre_hook(keep) if request.keep_input else None
    try:
        logits = run_causal_lm(model, input_ids, attention_mask, **kwargs)
    finally:
        if hook is not None:
            hook.remove()
    if request.kept is not None and logits.shape[1] > request.kept:  # a forward that ignored logits_to_keep
        logits = logits[:, -request.kept :]
    flat = logits.reshape(-1, logits.shape[-1])[request.index]  # (N, V)
    ref = None if ref_logits is None else ref_logits.reshape(-1, ref_logits.shape[-1])[request.index]
    return _scores(flat, request.labels, check_temperature(request.temperature), request.entropy, ref)


@dataclass
class Layout:
    """Where the scored tokens of a forward sit: in the head's input and in the (rows, width) output."""

    index: torch.Tensor  # (N,) flat index into the (B * kept) positions of the head's input
    labels: torch.Tensor  # (N,)
    row: torch.Tensor  # (N,)
    column: torch.Tensor  # (N,)
    num_rows: int
    width: int
    kept: int | None = None  # the trailing positions ``index`` counts in (None: all)

    @classmethod
    def of_rows(cls, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> Layout:
        """Unpacked (R, T) rows, every position kept: column t predicts token t+1 (``lit_align.models.logprobs``)."""
        mask = completion_mask[:, 1:].bool()
        row, column = mask.nonzero(as_tuple=True)
        width = input_ids.shape[1]
        return cls(index=row * width + column, labels=input_ids[row, column + 1], row=row, column=column,
                   num_rows=input_ids.shape[0], width=width - 1)

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) values -> (rows, width), zero where no token is scored."""
        out = torch.zeros(self.num_rows, self.width, dtype=values.dtype, device=values.device)
        return out.index_put((self.row, self.column), values)

    def unpack(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, kept, H) states of a packed forward -> (rows, width + 1, H) in the rows' layout: column t holds the
        state that predicts token t + 1 where that token is scored, zero elsewhere (the last column always)."""
        picked = hidden.reshape(-1, hidden.shape[-1])[self.index]  # (N, H)
        out = hidden.new_zeros(self.num_rows, self.width + 1, hidden.shape[-1])
        return out.index_put((self.row, self.column), picked)

    def row_means(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) values -> (rows,) mean over each row's scored tokens."""
        zeros = torch.zeros(self.num_rows, dtype=values.dtype, device=values.device)
        counts = zeros.index_add(0, self.row, torch.ones_like(values))
        return zeros.index_add(0, self.row, values) / counts.clamp(min=1)

    def scores(self, columns: torch.Tensor, entropy: bool, kl: bool, hidden: torch.Tensor | None = None,
               mask: torch.Tensor | None = None) -> CompletionScores:
        """``CompletionScores`` from the (N, C) columns of ``head_scores``."""
        if mask is None:
            mask = self.scatter(torch.ones_like(self.labels, dtype=torch.bool))
        if hidden is not None and self.kept is not None:  # packed rows: the states of the scored positions
            hidden = self.unpack(hidden)
        out = CompletionScores(logps=self.scatter(columns[:, 0]), mask=mask,
                               mean_logits=self.row_means(columns[:, 1].detach()), hidden=hidden)
        if entropy:
            out.entropy = self.scatter(columns[:, 2])
        if kl:
            out.kl = self.scatter(columns[:, 2 + entropy])
            out.reference_logps = self.scatter(columns[:, 3 + entropy])
        return out

"""Sampling responses from the current policy, laid out for log-prob computation.

``sample`` is the Hugging Face backend of ``PolicyWithReference.generate``, the one way lit-align samples: it
draws ``num_samples`` responses per prompt with Hugging Face ``generate`` (KV cache, left-padded
prompts with position ids taken from the attention mask), without gradient, and restores the model's train/eval
mode afterwards. The result concatenates each left-padded prompt with its right-padded response, so
``PolicyWithReference`` and ``lit_align.models.logprobs`` score it exactly like an offline pair.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from lit_align.errors import UserError

log = logging.getLogger(__name__)


class Warping(NamedTuple):
    """``SamplingConfig.warping``: the temperature, top-k and top-p a draw applies (None: not applied)."""

    temperature: float | None
    top_k: int | None
    top_p: float | None
    greedy: bool = False


@dataclass
class SamplingConfig:
    """How responses are sampled.

    On-policy objectives score every sampled response under the distribution it was drawn from:
    ``softmax(logits / temperature)`` of the current, the sampling-time and the reference policy alike (the
    paper's own code divides all three by the temperature). The objective is then the paper's objective for the
    tempered policy pi_T (its KL is KL(pi_T || pi0_T), its entropy H(pi_T)), which is what generation at that
    temperature produces after training.

    ``top_p`` and ``top_k`` truncate the vocabulary after the temperature, but the log-probs stay those of the
    untruncated tempered softmax (the truncation set moves with the weights, so it has no gradient). Under
    truncation the ratios, KL estimates and entropies are those of pi_T evaluated on samples of the truncated
    distribution: the samples are slightly off-policy, every estimate is biased by the probability mass cut
    away, and the tokens outside the kept set are never sampled, so never reinforced nor penalised. Keep
    ``top_p: 1`` and ``top_k: 0`` (the defaults) for on-policy training; truncation is for generation
    (``lit-align predict``).

    Args:
        max_new_tokens: Longest response in tokens. Default 32 (the field's usual short-response cap; PAPER
            TL;DR: 53, set by the TL;DR configs).
        min_new_tokens: Shortest response: EOS is suppressed before it, so samples no longer come from the
            policy itself and on-policy estimates are biased. Default 0 (Hugging Face ``generate``'s default).
        temperature: Softmax temperature; 0 means greedy decoding (generation only: on-policy training needs a
            distribution to score and refuses it). Default 1 (Hugging Face ``generate``'s default: the policy
            itself).
        top_p: Nucleus sampling threshold (1 disables it, the default; see above).
        top_k: Keep only the k most likely tokens (0 disables it, the default; see above).
        logprobs: Have the engine report the log-probability of each sampled token under the distribution it
            drew from (after temperature, top-k, top-p and min_new_tokens: ``Rollout.engine_logps``), as vLLM's
            ``logprobs``. An objective with an ``importance_correction`` turns it on. Default false (vLLM's
            default; it costs one log-softmax over the vocabulary per new token).
    """

    max_new_tokens: int = 32
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.min_new_tokens < 0 or self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"need 0 <= min_new_tokens <= max_new_tokens and max_new_tokens >= 1, got {self}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0, got {self}")

    @property
    def warping(self) -> Warping:
        """What changes the policy's next-token distribution before a draw, each None where it changes nothing:
        the one reading of these settings that every generation backend applies."""
        if self.temperature == 0:
            return Warping(None, None, None, greedy=True)
        return Warping(None if self.temperature == 1 else self.temperature, self.top_k or None,
                       self.top_p if self.top_p < 1 else None)

    @property
    def reports_logprobs(self) -> bool:
        """Whether the engine reports the sampled tokens' log-probs: asked for, and there is a distribution."""
        return self.logprobs and self.temperature > 0

    def require_distribution(self, owner: str, setting: str = "sampling") -> None:
        """Refuse greedy decoding where responses are scored as samples of a distribution (training, monitors)."""
        if self.temperature == 0:
            raise UserError(f"{owner}: {setting}.temperature=0 is greedy decoding, which has no log-probs to train on "
                            f"or measure; set {setting}.temperature > 0 (1.0 samples the policy itself)")


@dataclass
class Rollout:
    """Sampled responses. Row ``i * num_samples + j`` is sample j of prompt i.

    Attributes:
        input_ids: (N, P + L) left-padded prompt followed by the right-padded response.
        attention_mask: (N, P + L) real tokens of prompt and response (through the first EOS).
        completion_mask: (N, P + L) response tokens through the first EOS.
        prompt_length: P, the padded prompt width: ``input_ids[:, P:]`` are the responses.
        ended: (N,) whether the response ended with EOS within ``max_new_tokens``.
        prompt_index: (N,) which prompt of the batch each row answers.
        sampling: the settings the responses were drawn with (their temperature is the one every score of these
            samples uses); None only where nothing set it (a rollout built by hand).
        prompt_messages: the chat messages of each prompt (one list per prompt of the batch, row ``i`` answers
            ``prompt_messages[prompt_index[i]]``), when the data had them: a reward model of another tokenizer
            renders these instead of decoding the policy's tokens.
        engine_logps: (N, P + L) the generation engine's log-probability of each sampled token at its position
            (0 elsewhere), when the engine reports them: the behaviour policy of a mismatch correction.
        policy_mask: (N, P + L) the tokens the policy wrote; equal to ``completion_mask`` for a single turn, a
            subset of it in a multi-turn episode (environment and tool turns are in ``completion_mask`` only as
            context, never trained on). None means ``completion_mask``.
        version: the weight version (optimizer steps taken) of the policy that sampled the rows.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_length: int
    ended: torch.Tensor
    prompt_index: torch.Tensor
    sampling: SamplingConfig | None = None
    prompt_messages: list[list[dict]] | None = None
    engine_logps: torch.Tensor | None = None
    policy_mask: torch.Tensor | None = None
    version: int = 0

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length :]

    @property
    def response_mask(self) -> torch.Tensor:
        return self.completion_mask[:, self.prompt_length :]

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    @property
    def trained_mask(self) -> torch.Tensor:
        """(N, P + L) the tokens a loss trains on: ``policy_mask``, else ``completion_mask``."""
        return self.completion_mask if self.policy_mask is None else self.policy_mask

    def rows(self, index: torch.Tensor) -> Rollout:
        """The rollout restricted to the rows ``index`` (``select_rows``)."""
        return select_rows(self, index)


def select_rows(value: Any, index: torch.Tensor) -> Any:
    """``value`` at the rows ``index``: a tensor with a first dimension is indexed, a tuple or a dataclass is taken
    field by field (``dataclasses.fields``), anything else (an int, a 0-dim tensor, a setting, a per-prompt list,
    None) is kept as it is. The one way rows of a rollout, an experience or a forward's output are sliced."""
    if isinstance(value, torch.Tensor):
        return value[index] if value.dim() else value
    if isinstance(value, tuple):
        return type(value)(*(select_rows(v, index) for v in value)) if hasattr(value, "_fields") else \
            tuple(select_rows(v, index) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: select_rows(getattr(value, f.name), index)
                                             for f in dataclasses.fields(value) if f.init})
    return value


def join_rows(parts: list[Any]) -> Any:
    """The inverse of ``select_rows`` over consecutive row splits: tensors with a first dimension concatenated on
    it, tuples and dataclasses field by field, anything else taken from the first part."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts) if first.dim() else first
    if isinstance(first, tuple):
        joined = [join_rows([p[i] for p in parts]) for i in range(len(first))]
        return type(first)(*joined) if hasattr(first, "_fields") else tuple(joined)
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(first, **{f.name: join_rows([getattr(p, f.name) for p in parts])
                                             for f in dataclasses.fields(first) if f.init})
    return first


def map_tensors(fn, value: Any) -> Any:
    """``value`` with ``fn`` applied to every tensor in it (through tuples and dataclasses, as ``select_rows``)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        mapped = [map_tensors(fn, v) for v in value]
        return type(value)(*mapped) if hasattr(value, "_fields") else tuple(mapped)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: map_tensors(fn, getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    config: SamplingConfig,
    eos_token_id: int | list[int],
    pad_token_id: int,
    num_samples: int = 1,
    synced_gpus: bool = False,
) -> Rollout:
    """Sample ``num_samples`` responses for each left-padded prompt in (B, P) ``prompt_ids``.

    ``model`` is a transformers causal LM (or a peft wrapper): the policy's current weights. ``eos_token_id`` is
    the token, or the tokens, that end a response (``PolicyWithReference.stop_token_ids``: EOS and the chat
    template's end of turn). ``synced_gpus`` keeps every rank generating until all are done, which sharded (FSDP)
    models need.

    The responses are drawn as ``config`` says and nothing else: whatever the model's own generation config (its
    checkpoint's ``generation_config.json``) sets is put back to Hugging Face's neutral value
    (``generation_settings``), and the temperature, top-k and top-p warpers are applied here, before the
    log-prob recorder (``SampledLogps``).
    """
    was_training = model.training
    model.eval()
    try:
        # a prompt's samples share its keys and values: the prompt is run once, not num_samples times
        cache = shared_prefill(model, prompt_ids, prompt_mask, num_samples) if not synced_gpus else None
        prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0)
        processors, recorder = sampling_processors(config)
        settings = {"do_sample": config.temperature > 0, "max_new_tokens": config.max_new_tokens,
                    "min_new_tokens": config.min_new_tokens, "eos_token_id": eos_token_id,
                    "pad_token_id": pad_token_id, "use_cache": True, "return_dict_in_generate": True}
        if cache is not None:
            settings[cache.name] = cache.value
        output = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, synced_gpus=synced_gpus,
                                logits_processor=processors, **generation_settings(model, settings))
        rollout = _layout(output.sequences, prompt_mask, eos_token_id, pad_token_id, num_samples)
        rollout.sampling = config
        if recorder is not None:
            rollout.engine_logps = recorder.logps(rollout)
        return rollout
    finally:
        model.train(was_training)


class PrefilledCache(NamedTuple):
    """A key-value cache of every prompt column but the last, already repeated for each sample, and the name
    ``generate`` takes it by (``cache``, or ``past_key_values`` before transformers 5.2x renamed it)."""

    name: str
    value: Any


#: Whether the shared prefill gave the model's own next-token logits, by architecture (class and config).
_PREFILL_VERDICTS: dict[str, bool] = {}
PREFILL_TOLERANCE = 1e-4  # largest |shared - plain| of a next-token log-prob, float32
PREFILL_HALF_PRECISION_TOLERANCE = 0.05
LIKELY_LOGP = math.log(1e-6)  # next tokens compared: those at least this likely under the model's own forward


def shared_prefill(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   num_samples: int) -> PrefilledCache | None:
    """The cache of the B prompts' columns but the last, computed once and repeated ``num_samples`` times (the
    samples' rows are ``i * num_samples + j``), for ``generate`` to start from: its first step then runs the last
    prompt column of every sample, and the prompt's keys and values are not computed ``num_samples`` times.

    It proves itself once per architecture (class, config, attention implementation and precision) in the process:
    on the first call, one step from a copy of this cache (the last prompt column, at the positions ``generate``
    gives it) is compared with the model's own forward over the whole prompts, on the next tokens at least 1e-6
    likely; a model whose cache cannot be repeated or whose log-probs differ (beyond 1e-4 nats in float32, 0.05 in
    16-bit) samples without it for the rest of the process, which is logged once. None where nothing is shared: one sample, a
    one-column prompt, or a model that failed the check."""
    if num_samples < 2 or prompt_ids.shape[1] < 2:
        return None
    key = _architecture_key(model)
    verdict = _PREFILL_VERDICTS.get(key)
    if verdict is False:
        return None
    if verdict:  # proven: a failure now (out of memory, say) is the run's, not the path's
        return _prefill(model, prompt_ids, prompt_mask, num_samples)
    try:
        cache = _prefill(model, prompt_ids, prompt_mask, num_samples)
        _PREFILL_VERDICTS[key] = _prefill_agrees(model, prompt_ids, prompt_mask, num_samples, cache)
    except Exception as error:  # noqa: BLE001 - the shared path does not work for this model: sample the plain way
        _PREFILL_VERDICTS[key] = False
        log.info("generation: shared prompt prefill off for %s: %s", type(model).__name__, error)
        return None
    return cache if _PREFILL_VERDICTS[key] else None


def _prefill(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
             num_samples: int) -> PrefilledCache:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    head, mask = prompt_ids[:, :-1], prompt_mask[:, :-1]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # generate's own position ids
    out = model(input_ids=head, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out[name]
    cache.batch_repeat_interleave(num_samples)
    return PrefilledCache(name, cache)


def _prefill_agrees(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, num_samples: int,
                    cache: PrefilledCache) -> bool:
    """The next-token log-softmax after the whole prompt, from a copy of the shared cache and from the model's own
    forward over the whole prompts, agree on every sample's row (the check ``shared_prefill`` runs once)."""
    positions = (prompt_mask.long().cumsum(-1) - 1).masked_fill(prompt_mask == 0, 0)
    plain = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                  logits_to_keep=1).logits[:, -1].float().log_softmax(-1)
    rows = torch.arange(prompt_ids.shape[0], device=prompt_ids.device).repeat_interleave(num_samples)
    mask = prompt_mask[rows]
    step = model(input_ids=prompt_ids[rows, -1:], attention_mask=mask, position_ids=positions[rows, -1:],
                 use_cache=True, logits_to_keep=1, **{cache.name: copy.deepcopy(cache.value)})
    shared = step.logits[:, -1].float().log_softmax(-1)
    likely = plain[rows] > LIKELY_LOGP  # the tokens sampling can draw; the far tail differs by rounding alone
    difference = float((shared - plain[rows]).abs()[likely].max())
    dtype = next(model.parameters()).dtype
    limit = PREFILL_TOLERANCE if dtype in (torch.float32, torch.float64) else PREFILL_HALF_PRECISION_TOLERANCE
    if difference > limit:
        log.info("generation: shared prompt prefill off for %s: its next-token log-probs differ from the model's "
                 "own forward by %.3g (tolerance %g)", type(model).__name__, difference, limit)
    return difference <= limit


def _architecture_key(model: nn.Module) -> str:
    """The model's class, config, attention implementation and precision: what decides its forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    dtype = next(base.parameters()).dtype
    return " ".join([type(base).__name__, str(dtype), str(getattr(config, "_attn_implementation", None)),
                     config.to_json_string(use_diff=False) if config is not None else ""])


def sampling_processors(config: SamplingConfig) -> tuple[list, SampledLogps | None]:
    """The logits processors that make ``config``'s distribution (temperature, then top-k, then top-p, in Hugging
    Face's own order) and, with ``config.logprobs``, the recorder after them; greedy decoding has none."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warping = config.warping
    processors = LogitsProcessorList()
    if warping.temperature is not None:
        processors.append(TemperatureLogitsWarper(warping.temperature))
    if warping.top_k is not None:
        processors.append(TopKLogitsWarper(warping.top_k))
    if warping.top_p is not None:
        processors.append(TopPLogitsWarper(warping.top_p))
    recorder = SampledLogps(config.max_new_tokens) if config.reports_logprobs else None
    if recorder is not None:
        processors.append(recorder)
    return processors, recorder


_NOT_SETTINGS = {"transformers_version"}


def generation_settings(model: nn.Module, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` for ``model.generate``, plus every other field that the model's own generation config sets put
    back to the value of a fresh ``GenerationConfig``. ``generate`` fills what a call leaves unset from that config,
    so a checkpoint's ``repetition_penalty``, ``no_repeat_ngram_size``, ``min_length``, ``top_k``, cut-offs or
    ``num_return_sequences`` would otherwise change what is sampled, and which distribution the samples' log-probs
    are of."""
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    if own is None:
        return settings
    fresh = GenerationConfig()
    # generate's own defaults for what a fresh config leaves unset (num_beams=1, repetition_penalty=1.0, ...)
    neutral = {**fresh.to_dict(), **getattr(fresh, "_get_default_generation_params", dict)()}
    # the warpers are sampling_processors', the lengths max_new_tokens' and min_new_tokens'
    settings = dict(settings, temperature=None, top_k=None, top_p=None, max_length=None, min_length=None)
    for key, value in own.to_dict().items():
        if key in settings or key in _NOT_SETTINGS or key.startswith("_") or key not in neutral:
            continue
        if value is not None and value != neutral[key]:  # None: unset there too
            settings[key] = neutral[key]
    return settings


class SampledLogps:
    """A logits processor, placed last, that records the log-prob of each sampled token under the scores it was
    drawn from (after temperature, top-k, top-p and ``min_new_tokens``): ``scores[token] - logsumexp(scores)``.

    At each step it reads the token the step before drew (the last column of ``input_ids``) from that step's scores,
    which it holds until then (``generate``'s own tensor: no copy), where ``output_scores`` keeps one (rows,
    vocabulary) tensor per new token until the batch ends. What it writes goes into buffers made at the first step,
    so no small tensor outlives a step: left between the large score tensors of successive steps, such tensors keep
    the allocator from reusing their memory (``benchmarks/generation_memory.py``; docs/performance.md)."""

    def __init__(self, max_new_tokens: int) -> None:
        self.max_new_tokens = max_new_tokens
        self.steps = 0
        self._held: torch.Tensor | None = None
        self._drawn: torch.Tensor | None = None  # (N, max_new_tokens) the recorded log-probs
        self._normaliser: torch.Tensor | None = None  # (N,) logsumexp of the held scores
        self._score: torch.Tensor | None = None  # (N, 1) the drawn token's score

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._read(input_ids[:, -1:])
        if self._drawn is None:
            rows = (scores.shape[0],)
            self._drawn = scores.new_zeros(rows + (self.max_new_tokens,))
            self._normaliser, self._score = scores.new_empty(rows), scores.new_empty(rows + (1,))
        torch.logsumexp(scores, -1, out=self._normaliser)
        self._held = scores
        return scores

    def _read(self, drawn: torch.Tensor) -> None:
        if self._held is not None and self.steps < self.max_new_tokens:
            torch.gather(self._held, -1, drawn, out=self._score)
            torch.sub(self._score[:, 0], self._normaliser, out=self._drawn[:, self.steps])
            self.steps += 1
        self._held = None

    def logps(self, rollout: Rollout) -> torch.Tensor:
        """(N, P + L) the recorded log-probs at the response positions of ``rollout``, 0 off the response."""
        width = rollout.prompt_length
        self._read(rollout.input_ids[:, -1:])  # the last token drawn
        logps = torch.zeros(rollout.input_ids.shape, dtype=torch.float32, device=rollout.input_ids.device)
        steps = min(self.steps, rollout.input_ids.shape[1] - width)
        if steps:
            logps[:, width: width + steps] = self._drawn[:, :steps].float()
        return logps.masked_fill(~rollout.completion_mask.bool(), 0.0)


def _layout(output: torch.Tensor, prompt_mask: torch.Tensor, eos: int | list[int], pad: int,
            num_samples: int) -> Rollout:
    width = prompt_mask.shape[1]
    response = output[:, width:]  # (N, L)
    is_eos = torch.isin(response, torch.as_tensor(eos, device=response.device))
    ended = is_eos.any(-1)
    # Everything after the first stop token is padding; the stop token itself belongs to the response.
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    response_mask = (~after_eos).long()
    response = response.masked_fill(after_eos, pad)
    input_ids = torch.cat([output[:, :width], response], dim=1)
    attention_mask = torch.cat([prompt_mask.long(), response_mask], dim=1)
    completion_mask = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.long), response_mask], dim=1)
    prompt_index = torch.arange(output.shape[0], device=output.device) // num_samples
    return Rollout(input_ids, attention_mask, completion_mask, width, ended, prompt_index)

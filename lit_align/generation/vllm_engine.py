"""vLLM as the sampling backend of ``PolicyWithReference.generate``: an in-process engine next to the trainer.

``VLLMBackend`` is called exactly like ``lit_align.generation.rollout.sample`` and returns the same ``Rollout`` (left-padded
prompt, right-padded response cut after the first stop token, ``ended``, ``prompt_index``), so every objective,
monitor and ``predict`` runs unchanged on either backend. The engine is built on the first call, from the
policy's own config with dummy weights (nothing is read from disk or the hub), and ``vllm`` is imported only then.
Before each call the weights the caller samples from are pushed into the engine if they changed since the last
push (``lit_align.generation.weights``); the prefix cache is emptied with them, since keys computed by the old
weights must not be reused. The engine's log-probs never reach a gradient: the trainer re-scores every response.

Sampling maps one to one: temperature (0 is greedy), top_p, top_k (0 disables it, vLLM's -1), min and max new
tokens, the stop tokens (and only those: the engine has no tokenizer, so no other end token of its own) and one
request per sampled row with its own seed drawn from torch's generator, so a seeded run samples the same
responses again. On a CUDA device the engine sleeps between calls (weights offloaded, KV cache freed) so the
training step has the memory; on CPU there is nothing to free.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lit_align.errors import UserError
from lit_align.generation.weights import engine_weights, plain_model, weights_version
from lit_align.generation.rollout import Rollout, SamplingConfig, _layout

#: Keys of ``vllm_options`` that are lit-align's own; every other key goes to ``vllm.LLM``.
OWN_OPTIONS = ("cpu_kv_cache_gib", "sleep", "logprob_gap")


class VLLMBackend:
    """Samples through a colocated ``vllm.LLM``; a drop-in ``PolicyWithReference.generation_backend``.

    Args:
        options: ``vllm.LLM`` keyword arguments (``gpu_memory_utilization``, ``max_model_len``,
            ``enable_prefix_caching``, ...; by default ``enforce_eager``, the policy's dtype, a
            ``max_model_len`` fitting the first call's prompts and responses, and on a GPU
            ``gpu_memory_utilization: 0.3`` so training keeps most of the memory), plus lit-align's own:
            ``cpu_kv_cache_gib`` (KV cache on CPU in whole GiB, vLLM's ``VLLM_CPU_KVCACHE_SPACE``; default 1) and
            ``sleep`` (offload the engine between calls on a GPU; default true) and ``logprob_gap`` (always ask the
            engine for the sampled tokens' log-probs, ``Rollout.engine_logps``, as ``sampling.logprobs`` does, so
            that ``lit_align.callbacks.GenerationGapMonitor`` can log the gap; default false).
        scorer: Unused (the trainer's log-probs of the same samples are the objective's own ``old_logps``); kept so
            that existing callers construct the backend unchanged.
    """

    def __init__(self, options: dict[str, Any] | None = None, scorer: Callable | None = None) -> None:
        self.options = dict(options or {})
        self.scorer = scorer
        self.logprob_gap = bool(self.options.get("logprob_gap", False))
        self.llm = None
        self.max_model_len: int | None = None
        self._pushed: Any = None  # weights_version of what the engine holds
        self.pushes = 0  # how many times weights were pushed (a diagnostic)
        self._model_dir: tempfile.TemporaryDirectory | None = None
        self.sleeps = bool(self.options.get("sleep", True)) and torch.cuda.is_available()

    @torch.no_grad()
    def __call__(self, model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 config: SamplingConfig, eos_token_id: int | list[int], pad_token_id: int, num_samples: int = 1,
                 synced_gpus: bool = False) -> Rollout:
        longest = int(prompt_mask.sum(-1).max())  # the padding is not sent
        needed = longest + config.max_new_tokens
        logprobs = self.logprob_gap or config.reports_logprobs
        if self.llm is None:
            self.llm = self._build(model, needed)
        if needed > self.max_model_len:
            raise UserError(f"generation: vllm: prompts of {longest} tokens plus max_new_tokens "
                            f"{config.max_new_tokens} exceed the engine's max_model_len {self.max_model_len}; "
                            f"set policy.vllm_options.max_model_len to at least {needed}")
        self._wake()
        try:
            self.sync_weights(model)
            prompts = _prompts(prompt_ids, prompt_mask, num_samples)
            stops = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
            params = _sampling_params(config, stops, len(prompts), logprobs=0 if logprobs else None)
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        finally:
            self._sleep()
        responses = [list(output.outputs[0].token_ids) for output in outputs]
        rollout = _rollout(prompt_ids, prompt_mask, responses, stops, pad_token_id, num_samples)
        rollout.sampling = config
        if logprobs:
            rollout.engine_logps = engine_logps(rollout, [output.outputs[0].logprobs for output in outputs])
        return rollout

    def sync_weights(self, model: nn.Module) -> bool:
        """Push ``model``'s weights into the engine if they changed since the last push; whether they did."""
        version = weights_version(model)
        if version == self._pushed:
            return False
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": engine_weights(model)})
        self.llm.reset_prefix_cache()  # cached keys and values were computed by the old weights
        self._pushed = weights_version(model)
        self.pushes += 1
        return True

    def _build(self, model: nn.Module, needed: int):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: the engine shares our weights
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(self.options.get("cpu_kv_cache_gib", 1))))
        import vllm

        hf_model = plain_model(model)
        _require_supported_heads(hf_model.config)
        # The engine reads the architecture from a config directory; the weights come from the policy.
        self._model_dir = tempfile.TemporaryDirectory(prefix="lit-align-vllm-")
        hf_model.config.save_pretrained(self._model_dir.name)
        kwargs = {key: value for key, value in self.options.items() if key not in OWN_OPTIONS}
        limit = getattr(hf_model.config, "max_position_embeddings", None) or needed
        kwargs.setdefault("max_model_len", min(limit, max(needed, 256)))
        kwargs.setdefault("dtype", str(next(hf_model.parameters()).dtype).removeprefix("torch."))
        kwargs.setdefault("enforce_eager", True)
        # log-probs, when asked for, of the distribution sampled from (after temperature, top-k, top-p)
        kwargs.setdefault("logprobs_mode", "processed_logprobs")
        if torch.cuda.is_available():
            kwargs.setdefault("gpu_memory_utilization", 0.3)
            kwargs.setdefault("enable_sleep_mode", self.sleeps)
        self.sleeps = self.sleeps and kwargs.get("enable_sleep_mode", False)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:  # (an engine itself starts a group of one)
            kwargs.setdefault("distributed_executor_backend", "external_launcher")  # one engine per rank
        self.max_model_len = kwargs["max_model_len"]
        return vllm.LLM(model=self._model_dir.name, load_format="dummy", skip_tokenizer_init=True,
                        generation_config="vllm", **kwargs)

    def _sleep(self) -> None:
        if self.sleeps:
            self.llm.sleep(level=1)

    def _wake(self) -> None:
        if self.sleeps:
            self.llm.wake_up()


def _require_supported_heads(config) -> None:
    """vLLM's CPU attention has kernels for some head sizes only; say so before the engine fails mid-generate."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if size not in supported:
        raise UserError(f"generation: vllm: vLLM's CPU attention supports head sizes {supported}, and this model's "
                        f"heads are {size} wide (the embedded tiny model's are 16); use generation: hf, or a model "
                        "with wider heads")


def _prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, num_samples: int) -> list[dict]:
    """One token prompt per sampled row (row ``i * num_samples + j`` is sample j of prompt i), padding removed."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())]
    return [{"prompt_token_ids": row} for row in rows for _ in range(num_samples)]


def _sampling_params(config: SamplingConfig, stops: list[int], count: int, logprobs: int | None = None) -> list:
    """One ``SamplingParams`` per row, each with a seed from torch's generator (reproducible under a seed)."""
    from vllm import SamplingParams

    seeds = torch.randint(0, 2**31 - 1, (count,)).tolist()
    warping = config.warping
    return [SamplingParams(
        n=1,
        temperature=0.0 if warping.greedy else warping.temperature or 1.0,
        top_p=warping.top_p or 1.0,
        top_k=warping.top_k or -1,
        min_tokens=config.min_new_tokens,
        max_tokens=config.max_new_tokens,
        stop_token_ids=stops,
        ignore_eos=False,
        detokenize=False,
        logprobs=logprobs,
        seed=seed,
    ) for seed in seeds]


def engine_logps(rollout: Rollout, sampled: list) -> torch.Tensor:
    """(N, P + L) the engine's log-prob of each sampled token (``sampled[row]``: vLLM's per-step
    ``{token: Logprob}``), at the token's position, 0 off the response."""
    logps = torch.zeros(rollout.input_ids.shape, dtype=torch.float32)
    ids = rollout.input_ids.cpu()
    start = rollout.prompt_length
    for row, steps in enumerate(sampled):
        for step, candidates in enumerate(steps[: ids.shape[1] - start]):
            token = int(ids[row, start + step])
            if token in candidates:
                logps[row, start + step] = candidates[token].logprob
    logps = logps.to(rollout.input_ids.device)
    return logps.masked_fill(~rollout.completion_mask.bool(), 0.0)


def _rollout(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, responses: list[list[int]], stops: list[int],
             pad_token_id: int, num_samples: int) -> Rollout:
    """The engine's responses laid out as Hugging Face ``generate`` returns them, then cut like ``sample``."""
    width = max(len(response) for response in responses)
    padded = torch.full((len(responses), width), pad_token_id, dtype=prompt_ids.dtype)
    for row, response in enumerate(responses):
        padded[row, : len(response)] = torch.as_tensor(response, dtype=prompt_ids.dtype)
    prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0)
    prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0)
    output = torch.cat([prompt_ids, padded.to(prompt_ids.device)], dim=1)
    return _layout(output, prompt_mask, stops, pad_token_id, num_samples)

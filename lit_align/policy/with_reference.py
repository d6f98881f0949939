"""``PolicyWithReference``: the trainable policy and the frozen reference pi_0 it is regularised towards.

The reference is an object that answers for itself (``lit_align.policy.reference``: a frozen copy, the LoRA base, a disk
cache of data log-probs, or none). ``generate`` is the one way to sample from the policy or from pi_0: it knows the
tokenizer's stop and pad tokens, the sampling settings and whether the weights are sharded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from peft import LoraConfig
from torch import nn

from lit_align.models.chunked_head import (
    CompletionScores,
    HeadRequest,
    Layout,
    LogitTransform,
    PostHead,
    chunkable,
    run_with_full_logits,
    run_with_request,
)
from lit_align.models.fast_path import CHUNKED_HEAD, PACKING, FastPathCheck
from lit_align.models.forward import position_ids_from_mask, run_causal_lm  # noqa: F401  (also imported from here)
from lit_align.models.loading import enable_activation_checkpointing, load_causal_lm, load_tokenizer, zero_dropout
from lit_align.policy.reference import Reference, ReferenceMode, build_reference, reference_class
from lit_align.generation.rollout import Rollout, SamplingConfig, sample
from lit_align.runs.seeds import resolve_seed
from lit_align.models.packing import SharedPromptBatch, packing_pays

LoraExport = Literal["merged", "adapter"]


def default_lora_config() -> LoraConfig:
    """The adapters of ``reference="lora"`` when no ``lora`` is given: rank 8, alpha 16, on every linear layer."""
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


class PolicyWithReference(nn.Module):
    """The trainable policy pi_theta and its frozen reference pi_0.

    Args:
        model: Hugging Face hub id, local directory, or ``"tiny"`` for the embedded default.
        reference: How the reference is held: ``copy``, ``lora`` (base with adapters disabled), ``cache``
            (precomputed log-probs on disk) or ``none`` (``lit_align.policy.reference``).
        reference_cache_dir: Where ``reference="cache"`` stores the reference log-probs; by default a per-user
            cache, ``$LIT_ALIGN_CACHE/reference_logps``, else ``$XDG_CACHE_HOME/lit_align/reference_logps``
            (``~/.cache/lit_align/reference_logps``), shared by every run that has the same model and data.
        lora: LoRA adapters: a ``peft.LoraConfig``, so any of its fields can be set, e.g. ``{r: 16, lora_alpha: 32,
            target_modules: all-linear, use_dora: true, use_rslora: true}``; ``task_type`` defaults to
            ``CAUSAL_LM``, fields not given take peft's defaults (``lora_alpha`` 8, ``target_modules`` by
            architecture). ``reference="lora"`` without it gets rank 8, alpha 16 on every linear layer; the other
            modes allow it too.
        lora_export: With LoRA, ``merged`` exports full weights with the adapters folded in; ``adapter`` writes the
            peft adapter alone.
        dtype: Weight dtype to load (``float32``, ``bfloat16``, ``float16`` or ``auto``); mixed precision is the
            Trainer's ``precision``.
        trust_remote_code: Run model code shipped with a hub repository. Off unless you trust its author.
        attn_implementation: Attention kernel, e.g. ``eager``, ``sdpa`` or ``flash_attention_2``; by default
            transformers' choice (SDPA where available).
        revision: Hub branch, tag or commit of ``model``.
        quantization: Load the weights quantized (QLoRA; needs ``lora``, a CUDA device and bitsandbytes): the
            fields of ``transformers.BitsAndBytesConfig``, e.g. ``{load_in_4bit: true, bnb_4bit_quant_type: nf4,
            bnb_4bit_compute_dtype: bfloat16}``.
        model_kwargs: Any other keyword argument of ``from_pretrained``, e.g. ``{low_cpu_mem_usage: true}``.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        disable_dropout: Zero all dropout in policy and reference (recommended for preference training).
        seed: Seed of the random initialisation of the embedded ``tiny`` model; by default the run's
            ``seed_everything`` (``lit_align.runs.seeds``).
        generation: What samples responses: ``hf`` (Hugging Face ``generate``) or ``vllm`` (an in-process vLLM
            engine, ``lit_align.generation.VLLMBackend``, fed the current weights before each generate; needs the
            ``vllm`` extra).
        vllm_options: With ``generation: vllm``, arguments of the engine, e.g. ``{gpu_memory_utilization: 0.3,
            max_model_len: 1024, cpu_kv_cache_gib: 2}`` (see ``VLLMBackend``).
    """

    def __init__(
        self,
        model: str = "tiny",
        reference: ReferenceMode = "copy",
        reference_cache_dir: str | None = None,
        lora: LoraConfig | None = None,
        lora_export: LoraExport = "merged",
        dtype: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        revision: str | None = None,
        quantization: dict[str, Any] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        disable_dropout: bool = True,
        seed: int | None = None,
        generation: Literal["hf", "vllm"] = "hf",
        vllm_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if lora is None and reference_class(reference).needs_adapters:
            lora = default_lora_config()
        if lora is not None:  # a copy: peft writes the model's name and more into the config it is given
            lora = dataclasses.replace(lora, task_type=lora.task_type or "CAUSAL_LM")
        if lora_export not in ("merged", "adapter"):
            raise ValueError(f"lora_export must be merged or adapter, got {lora_export!r}")
        if quantization is not None and lora is None:
            raise ValueError("quantization needs lora (QLoRA): quantized weights cannot be trained themselves")
        self.model_name = model
        self.seed = resolve_seed(seed)  # with the name, enough to load pi_0 again from its source (lit_align.policy.reference_cache)
        self.trust_remote_code = trust_remote_code
        self._stop_token_ids: list[int] | None = None
        self.lora_options = lora
        self.lora_export: LoraExport = lora_export
        self.tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        #: What ``from_pretrained`` is given besides dtype and remote code: enough to load pi_0 again the same way.
        self.load_kwargs = {"attn_implementation": attn_implementation, "revision": revision,
                            "quantization": quantization, "model_kwargs": model_kwargs}
        base = load_causal_lm(model, dtype=dtype, trust_remote_code=trust_remote_code, seed=self.seed, **self.load_kwargs)
        # from_pretrained hands the model over in eval mode and Lightning keeps each module's mode: without this
        # the policy would train in eval mode, where gradient checkpointing (and dropout) silently do nothing
        base.train()
        if disable_dropout:
            zero_dropout(base)
        if gradient_checkpointing:
            enable_activation_checkpointing(base)
        self.reference: Reference = build_reference(reference, base, model, reference_cache_dir)
        self.policy = _wrap_lora(base, lora, quantized=quantization is not None) if lora is not None else base
        #: Which partial forwards (chunked head, prompt packing) this run uses, decided on its first batch.
        self.fast_paths = FastPathCheck()
        if generation not in ("hf", "vllm"):
            raise ValueError(f"generation must be hf or vllm, got {generation!r}")
        if generation == "vllm":  # the engine (and the vllm import) waits for the first generate
            import importlib.util

            from lit_align.errors import UserError
            from lit_align.generation import VLLMBackend

            if importlib.util.find_spec("vllm") is None:  # checked before any work, not at the first sample
                raise UserError("generation: vllm needs vLLM, which is not installed: pip install 'lit-align[vllm]' "
                                "(the CPU build; on a CUDA machine pip install vllm, see docs/scaling.md), or use "
                                "generation: hf")

            self.generation_backend = VLLMBackend(vllm_options, scorer=self.completion_logps)

    # -- forward passes ---------------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """Policy logits (B, T, V). Left- or right-padded input both work (see ``run_causal_lm``)."""
        return run_causal_lm(self.policy, input_ids, attention_mask, **kwargs)

    @torch.no_grad()
    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """Reference logits (B, T, V), without gradient (a live reference only: ``reference.require``)."""
        return self.reference.logits(self, input_ids, attention_mask, **kwargs)

    # -- completion log-probs: the LM head in chunks, the (B, T, V) logits never whole -------------------------

    def completion_logps(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                         temperature: float = 1.0, reference: bool = False,
                         model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs (B, T-1) of the completion tokens, zero off the mask, and the mask (B, T-1).

        Under the policy (with gradient when enabled), pi_0 with ``reference`` (no gradient, a live reference) or
        any ``model`` given (e.g. pi_0 reloaded from its source); (B, T) right- or left-padded rows. The same values
        as ``completion_token_logprobs`` on the full logits, which are never materialised (``lit_align.models.chunked_head``).
        """
        scores = self.completion_scores(input_ids, attention_mask, completion_mask, temperature, reference, model)
        return scores.logps, scores.mask

    def completion_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                          temperature: float = 1.0, reference: bool = False, model: nn.Module | None = None,
                          entropy: bool = False, kl: bool = False, hidden: bool = False) -> CompletionScores:
        """``completion_logps`` and, from the same forward, what else is asked: the mean logit (always), the
        token ``entropy``, the exact token ``kl`` to pi_0 with pi_0's log-probs (one no-grad reference forward
        more; a live reference), the final ``hidden`` states (B, T, H) (value heads)."""
        layout = Layout.of_rows(input_ids, completion_mask)

        def score(paths: frozenset, rows: torch.Tensor | None) -> CompletionScores:
            if rows is not None:  # the fast-path check's plain forward, on a few rows (lit_align.models.fast_path)
                ids, attention, completion = input_ids[rows], attention_mask[rows], completion_mask[rows]
                return self._scores(Layout.of_rows(ids, completion), ids, attention, {}, temperature, reference,
                                    model, entropy, kl, hidden, mask=completion[:, 1:].bool(), chunked=False)
            return self._scores(layout, input_ids, attention_mask, {}, temperature, reference, model, entropy, kl,
                                hidden, mask=completion_mask[:, 1:].bool(), chunked=CHUNKED_HEAD in paths)

        return self.fast_paths.run(self._role(reference, model), self._architecture(model), (CHUNKED_HEAD,), score,
                                   lambda: attention_mask.sum(-1))

    def packed_scores(self, packed: SharedPromptBatch, width: int, temperature: float = 1.0,
                      reference: bool = False, model: nn.Module | None = None, entropy: bool = False,
                      kl: bool = False, hidden: bool = False) -> CompletionScores:
        """``completion_scores`` of the rows packed behind shared prompts (``lit_align.models.packing``), in the
        unpacked rows' layout (``width`` = T-1 of the unpacked batch): only the kept positions that predict a
        completion token meet the head, and ``hidden`` is (R, T, H) with the states of those positions (zero
        elsewhere). Where packing is off for the run (``packs``) or would cost more than the separate rows
        (``packing_pays``: many long completions behind a short prompt), the rows run separately."""
        layout = Layout(packed.source, packed.labels, packed.row, packed.column, packed.num_rows, width,
                        kept=packed.logits_to_keep)
        kwargs = {"position_ids": packed.position_ids, "logits_to_keep": packed.logits_to_keep}
        ids, attention, completion = packed.rows

        def score(paths: frozenset, rows: torch.Tensor | None) -> CompletionScores:
            chunked = CHUNKED_HEAD in paths
            if PACKING in paths:
                return self._scores(layout, packed.input_ids, packed.attention_mask, kwargs, temperature, reference,
                                    model, entropy, kl, hidden, mask=completion[:, 1:].bool(), chunked=chunked)
            some = (ids, attention, completion) if rows is None else (ids[rows], attention[rows], completion[rows])
            return self._scores(Layout.of_rows(some[0], some[2]), *some[:2], {}, temperature, reference, model,
                                entropy, kl, hidden, mask=some[2][:, 1:].bool(), chunked=chunked)

        architecture = self._architecture(model)
        paths = (PACKING, CHUNKED_HEAD) if packing_pays(packed, width, architecture) else (CHUNKED_HEAD,)
        return self.fast_paths.run(self._role(reference, model), architecture, paths, score,
                                   lambda: attention.sum(-1))

    def packs(self, reference: bool = False, model: nn.Module | None = None) -> bool:
        """Whether rows scored under this source are packed behind shared prompts in this run (``fast_paths``)."""
        return self.fast_paths.allows(self._role(reference, model), PACKING)

    @staticmethod
    def _role(reference: bool, model: nn.Module | None) -> str:
        return "given model" if model is not None else "reference" if reference else "policy"

    def _architecture(self, model: nn.Module | None) -> nn.Module:
        """The transformers model whose architecture scores: ``model``, else the policy's (pi_0 shares it)."""
        if model is None:
            return self.base_model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    @contextmanager
    def scoring_model(self, reference: bool = False, model: nn.Module | None = None) -> Iterator[nn.Module]:
        """The module that scores: ``model``, else pi_0 (``reference``, under no_grad) or the policy."""
        if model is not None:
            yield model
        elif reference:
            self.reference.require("scoring under the reference", "samples")
            with torch.no_grad(), self.reference.sampling_model(self) as pi_0:
                yield pi_0
        else:
            yield self.policy

    def _scores(self, layout: Layout, input_ids, attention_mask, kwargs, temperature, reference, model,
                entropy=False, kl=False, hidden=False, mask=None, chunked=True) -> CompletionScores:
        request = HeadRequest(layout.index, layout.labels, temperature, entropy, keep_input=hidden, kept=layout.kept)
        ref_logits = None
        if kl:
            with self.scoring_model(reference=True) as pi_0:
                pi_0_head = pi_0.get_output_embeddings()
                if chunked and self._kl_chunkable(pi_0, pi_0_head):
                    ref_request = HeadRequest(layout.index, layout.labels, temperature, kept=layout.kept)
                    run_with_request(pi_0, ref_request, input_ids, attention_mask, **kwargs)
                    request.reference = (ref_request.selected, PostHead(pi_0_head, LogitTransform.of(pi_0)))
                else:
                    ref_logits = self.reference.logits(self, input_ids, attention_mask, **kwargs)
        with self.scoring_model(reference, model) as network:
            if chunked and chunkable(network) and ref_logits is None:
                columns = run_with_request(network, request, input_ids, attention_mask, **kwargs)
            else:
                columns = run_with_full_logits(network, request, input_ids, attention_mask, ref_logits, **kwargs)
        return layout.scores(columns, entropy, kl, request.head_input, mask)

    def _kl_chunkable(self, pi_0: nn.Module, pi_0_head: nn.Module) -> bool:
        # The policy's forward calls pi_0's head on pi_0's hidden states. A sharded separate copy of pi_0 has
        # its head's weights sharded outside its own forward, and a head with LoRA adapters would score with the
        # policy's adapters on: both take the full-logits path.
        from lit_align.distributed.sharding import is_sharded

        separate_sharded = pi_0 is not self.policy and is_sharded(pi_0)
        return (chunkable(pi_0) and chunkable(self.policy) and not separate_sharded
                and not hasattr(pi_0_head, "lora_A"))

    # -- generation: the one entry point -----------------------------------------------------------------------

    #: Draws the samples; ``lit_align.generation.rollout.sample`` (Hugging Face ``generate``) unless another backend is set.
    generation_backend = staticmethod(sample)

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingConfig,
                 num_samples: int = 1, from_reference: bool = False) -> Rollout:
        """``num_samples`` responses to each left-padded prompt of (B, P) ``prompt_ids``, from the current weights
        or, with ``from_reference``, from pi_0 (a live reference only).

        Responses end at any of ``stop_token_ids``; under sharded weights on several ranks every rank keeps
        generating until all are done (each forward is a collective), so call it on every rank."""
        if from_reference:
            with self.reference.sampling_model(self) as model:
                return self._generate_with(model, prompt_ids, prompt_mask, sampling, num_samples)
        return self._generate_with(self.policy, prompt_ids, prompt_mask, sampling, num_samples)

    def _generate_with(self, model, prompt_ids, prompt_mask, sampling, num_samples) -> Rollout:
        from lit_align.distributed.sharding import is_sharded

        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        synced = distributed and torch.distributed.get_world_size() > 1 and is_sharded(model)
        return self.generation_backend(model, prompt_ids, prompt_mask, sampling, self.stop_token_ids,
                                       self.tokenizer.pad_token_id, num_samples, synced_gpus=synced)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end a sampled response: the tokenizer's EOS, the model's own end tokens
        (``generation_config.eos_token_id``, e.g. Llama-3-Instruct's ``<|eot_id|>``) and the token the chat
        template closes a reply with, which is what the row encoder trains every completion to end on."""
        if self._stop_token_ids is None:
            from lit_align.data.chat import end_of_turn_token

            found: list[int] = []
            configured = getattr(getattr(self.base_model, "generation_config", None), "eos_token_id", None)
            turn = end_of_turn_token(self.tokenizer)
            for ids in (self.tokenizer.eos_token_id, configured,
                        self.tokenizer.convert_tokens_to_ids(turn) if turn else None):
                for token in ids if isinstance(ids, (list, tuple)) else [ids]:
                    if token is not None and token not in found:
                        found.append(int(token))
            self._stop_token_ids = found
        return self._stop_token_ids

    @property
    def base_model(self) -> nn.Module:
        """The underlying transformers model (the LoRA wrapper removed)."""
        return self.policy.get_base_model() if self.lora_options is not None else self.policy


def _wrap_lora(model: nn.Module, config: LoraConfig, quantized: bool = False) -> nn.Module:
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:  # QLoRA: freeze the quantized base, keep its norms in float32 (gradient checkpointing is set)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, config)

"""``PolicyWithReference``: the trainable policy and the frozen reference pi_0 it is regularised towards.

Four ways to have the reference (``reference=``):

- ``"copy"``: a separate frozen copy made at load time. It is a registered submodule, so it moves with the
  policy (``.to``, Lightning's device placement) and is sharded with it; it is never handed to the optimizer
  (``requires_grad=False``) and always in eval mode.
- ``"lora"``: the policy is wrapped in LoRA adapters and the reference is the same base model with the
  adapters disabled: no second copy in memory.
- ``"cache"``: reference log-probs are computed once per data set and stored on disk (``reference_cache.py``);
  no reference weights are held during training.
- ``"none"``: objectives that need no reference (SFT, reward modelling, PMLE with beta = 0).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lit_align.models import load_causal_lm, load_tokenizer, zero_dropout

ReferenceMode = Literal["copy", "lora", "cache", "none"]


@dataclass
class LoraOptions:
    """LoRA adapters through peft.

    Args:
        r: Adapter rank.
        alpha: Scaling numerator (the update is scaled by alpha / r).
        dropout: Dropout on the adapter input (kept; it only touches the adapter path).
        target_modules: Module names to adapt, or ``"all-linear"``.
        export: ``"merged"`` writes full merged weights at export; ``"adapter"`` writes the adapter alone.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    export: Literal["merged", "adapter"] = "merged"


class PolicyWithReference(nn.Module):
    """The trainable policy pi_theta and its frozen reference pi_0.

    Args:
        model: Hugging Face hub id, local directory, or ``"tiny"`` for the embedded default.
        reference: How the reference is held: ``copy``, ``lora`` (base with adapters disabled), ``cache``
            (precomputed log-probs on disk) or ``none``.
        lora: LoRA settings; required by ``reference="lora"`` (defaults are used if omitted) and allowed with
            the other modes.
        dtype: Weight dtype to load (``float32``, ``bfloat16``, ``float16`` or ``auto``); mixed precision is the
            Trainer's ``precision``.
        trust_remote_code: Run model code shipped with a hub repository. Off unless you trust its author.
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        disable_dropout: Zero all dropout in policy and reference (recommended for preference training).
        seed: Seed of the random initialisation of the embedded ``tiny`` model.
    """

    def __init__(
        self,
        model: str = "tiny",
        reference: ReferenceMode = "copy",
        lora: LoraOptions | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        disable_dropout: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if reference not in ("copy", "lora", "cache", "none"):
            raise ValueError(f"reference must be one of copy, lora, cache, none; got {reference!r}")
        if reference == "lora" and lora is None:
            lora = LoraOptions()
        self.model_name = model
        self.seed = seed  # with the name, enough to load pi_0 again from its source (lit_align.reference_cache)
        self.trust_remote_code = trust_remote_code
        self._stop_token_ids: list[int] | None = None
        self.reference_mode: ReferenceMode = reference
        self.lora_options = lora
        self.tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        base = load_causal_lm(model, dtype=dtype, trust_remote_code=trust_remote_code, seed=seed)
        if disable_dropout:
            zero_dropout(base)
        if gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False
        self.reference: nn.Module | None = None
        if reference == "copy":
            self.reference = copy.deepcopy(base)
            self.reference.requires_grad_(False)
            self.reference.eval()
        self.policy = _wrap_lora(base, lora) if lora is not None else base

    # -- forward passes ---------------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """Policy logits (B, T, V). Left- or right-padded input both work (see ``_run``)."""
        return _run(self.policy, input_ids, attention_mask, **kwargs)

    @torch.no_grad()
    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """Reference logits (B, T, V), without gradient."""
        if self.reference_mode == "copy":
            return _run(self.reference, input_ids, attention_mask, **kwargs)
        if self.reference_mode == "lora":
            with self.policy.disable_adapter():
                return _run(self.policy, input_ids, attention_mask, **kwargs)
        raise RuntimeError(f"reference={self.reference_mode!r} holds no reference weights to run")

    @property
    def has_live_reference(self) -> bool:
        return self.reference_mode in ("copy", "lora")

    def reference_context(self):
        """A context in which the policy module computes the reference (LoRA: adapters off)."""
        return self.policy.disable_adapter() if self.reference_mode == "lora" else nullcontext()

    def train(self, mode: bool = True) -> PolicyWithReference:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the frozen reference never enters train mode
        return self

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
    def generation_model(self) -> nn.Module:
        """The module whose ``generate`` samples from the current policy."""
        return self.policy

    @property
    def base_model(self) -> nn.Module:
        """The underlying transformers model (the LoRA wrapper removed)."""
        return self.policy.get_base_model() if self.lora_options is not None else self.policy


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so a left-padded sequence gets the positions it would have alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _run(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
    # Without explicit position ids, HF models number positions from the first column, padding included:
    # left-padded prompts (on-policy samples) would then get different log-probs than the same text unpadded.
    if attention_mask.dim() == 4:  # a packed (B, 1, T, T) mask from lit_align.shared_prompt
        attention_mask = _mask_for_attention(model, attention_mask)
    elif "position_ids" not in kwargs:
        kwargs["position_ids"] = position_ids_from_mask(attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits


def attention_accepts_4d_mask(model: nn.Module) -> bool:
    """Whether the model's attention honours an arbitrary (B, 1, T, T) mask (eager and SDPA do; flash does not)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", "sdpa") in ("eager", "sdpa")


def _mask_for_attention(model: nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    # SDPA takes the boolean mask as it is. Eager attention adds the mask to the scores, so it needs 0 where
    # attention is allowed and a large negative number elsewhere: given True/False it silently adds 1/0.
    if getattr(model.config, "_attn_implementation", "sdpa") == "sdpa":
        return allowed
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _wrap_lora(model: nn.Module, options: LoraOptions) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)

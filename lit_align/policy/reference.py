"""The reference pi_0 as an object that answers for itself.

An objective never asks *how* the reference is held, only what it can do:

- ``live``: it can score any sequence, fresh samples included (on-policy objectives, PMLE's KL term, the KL
  monitor) and sample from pi_0;
- ``scores_data``: it can give the reference log-probs of the data rows (offline objectives such as DPO);
- ``require(owner, need)`` refuses, in one line naming the setting to change, an objective that needs what this
  reference cannot give.

Four ways to hold it, named in configs by ``PolicyWithReference(reference=...)``:

- ``copy`` (``FrozenCopy``): a frozen copy of the model made at load time; a submodule, so it follows the policy's
  device and is sharded with it, never trained and always in eval mode.
- ``lora`` (``LoraBase``): the policy's own base model with its LoRA adapters disabled: no second copy in memory.
- ``cache`` (``CachedLogps``): reference log-probs of every data row computed once from pi_0 and stored on disk
  (``lit_align.policy.reference_cache``); no reference weights are held during training. It cannot score fresh samples.
- ``none`` (``NoReference``): for objectives that need none (SFT, reward modelling, PMLE with beta = 0, GRPO).

The reference is a submodule of the policy at ``policy.reference``; whatever it holds there is left out of
checkpoints and rebuilt from its source (``AlignmentModule.on_save_checkpoint``). Since a source is a name (a model
folder can be rewritten between a run and its resume), every reference that holds or derives from pi_0 (``copy``,
``lora``, ``cache``) takes pi_0's content digest when it is built (``lit_align.runs.identity.source_digest``), every
checkpoint records it (``REFERENCE_DIGEST_KEY``, also in the run manifest), and loading a checkpoint into a policy
whose pi_0 has another digest is refused in one line, whatever the entry point (fit, validate, test, predict).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal, Protocol

import torch
from torch import nn

from lit_align.errors import UserError
from lit_align.runs.identity import short, source_digest


class Host(Protocol):
    """What a reference reads of the module that holds it (``PolicyWithReference``): the trainable policy."""

    policy: nn.Module


ReferenceMode = Literal["copy", "lora", "cache", "none"]
Need = Literal["data", "samples"]
#: Where a checkpoint records the content digest of the pi_0 its policy was trained against.
REFERENCE_DIGEST_KEY = "lit_align_reference_digest"


class ReferenceChangedError(UserError):
    """A checkpoint is being loaded against another pi_0 than the one it was trained against."""


class Reference(nn.Module):
    """What every way of holding pi_0 answers; subclasses say what they can do through ``live``/``scores_data``."""

    #: How configs name it (``reference: copy``); for messages and run summaries, never compared by callers.
    name: ClassVar[str]
    #: Scores any sequence and samples from pi_0.
    live: ClassVar[bool] = False
    #: Gives the reference log-probs of data rows (live references compute them; a cache looks them up).
    scores_data: ClassVar[bool] = False
    #: Is the policy's own base model with its adapters off, so the policy must carry LoRA adapters.
    needs_adapters: ClassVar[bool] = False
    #: Content digest of pi_0 (``lit_align.runs.identity``), taken when the reference is built; None without a pi_0.
    digest: str | None = None
    #: Where pi_0 was read from, for messages.
    source: str | None = None

    def require(self, owner: str, need: Need) -> None:
        """Stop ``owner`` with one line when it needs what this reference cannot give."""
        if need == "samples" and not self.live:
            raise ValueError(f"{owner} scores fresh samples under the reference, which reference={self.name!r} "
                             "cannot: set the policy's reference to copy or lora")
        if need == "data" and not self.scores_data:
            raise ValueError(f"{owner} needs reference log-probs of the data rows, which reference={self.name!r} "
                             "cannot give: set the policy's reference to copy, lora or cache")

    def logits(self, host: Host, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               **kwargs) -> torch.Tensor:
        """Reference logits (B, T, V) of any sequence, without gradient (live references only)."""
        self.require("computing reference logits", "samples")
        raise NotImplementedError

    @contextmanager
    def sampling_model(self, host: Host) -> Iterator[nn.Module]:
        """The module whose ``generate`` samples from pi_0, for the duration of the ``with`` block."""
        self.require("sampling from the reference", "samples")
        raise NotImplementedError
        yield  # pragma: no cover

    def cached_logps(self, split: str, index: torch.Tensor) -> torch.Tensor | None:
        """Stored log-probs of the rows of examples ``index`` (K*B,), or None where they are computed live."""
        return None

    def forward_parameters(self, host: Host) -> int:
        """How many weights one reference forward runs through (0 without one): for FLOP counts."""
        return 0

    @property
    def weights(self) -> nn.Module | None:
        """The model this reference holds of its own (sharded alongside the policy), if any."""
        return None

    # -- lifecycle: the objective calls these at the matching Lightning hooks ----------------------------------

    def prepare(self, objective, datamodule) -> None:
        """Before the first batch of fit, validate or test (the cache computes or loads its values)."""

    def policy_updated(self) -> None:
        """A training step is about to change the policy's weights."""

    def save_state(self, checkpoint: dict) -> None:
        """Add what a resumed run must check to ``checkpoint``: pi_0's content digest."""
        if self.digest is not None:
            checkpoint[REFERENCE_DIGEST_KEY] = self.digest

    def check_state(self, checkpoint: dict, source: str) -> None:
        """Refuse a checkpoint that was trained against another pi_0; weights are being loaded into the policy.

        A checkpoint without a digest (written before digests were recorded, or by a run without pi_0) passes.
        """
        saved = checkpoint.get(REFERENCE_DIGEST_KEY)
        if saved is None or self.digest is None or saved == self.digest:
            return
        raise ReferenceChangedError(
            f"checkpoint {source} was trained against another pi_0 than {self.source!r} holds now (weights "
            f"{short(saved)} -> {short(self.digest)}: the model was rewritten since); restore the model the run "
            "started from, or start a new run from this model (a new --trainer.default_root_dir, no --ckpt_path)")


class FrozenCopy(Reference):
    """A separate frozen copy of the model, made when the policy is loaded."""

    name = "copy"
    live = True
    scores_data = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FrozenCopy:
        return super().train(False)  # the frozen reference never enters train mode

    @torch.no_grad()
    def logits(self, host, input_ids, attention_mask, **kwargs) -> torch.Tensor:
        from lit_align.models.forward import run_causal_lm

        return run_causal_lm(self.model, input_ids, attention_mask, **kwargs)

    @contextmanager
    def sampling_model(self, host) -> Iterator[nn.Module]:
        yield self.model

    def forward_parameters(self, host) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def weights(self) -> nn.Module:
        return self.model


class LoraBase(Reference):
    """The policy's base model with its LoRA adapters disabled."""

    name = "lora"
    live = True
    scores_data = True
    needs_adapters = True

    @torch.no_grad()
    def logits(self, host, input_ids, attention_mask, **kwargs) -> torch.Tensor:
        from lit_align.models.forward import run_causal_lm

        with self.sampling_model(host) as pi_0:
            return run_causal_lm(pi_0, input_ids, attention_mask, **kwargs)

    @contextmanager
    def sampling_model(self, host) -> Iterator[nn.Module]:
        # pi_0 is frozen: in eval mode, or the policy's dropout (when kept) would make its log-probs random
        modes = {m: m.training for m in host.policy.modules()}
        host.policy.eval()
        try:
            with host.policy.disable_adapter():
                yield host.policy
        finally:
            for m, training in modes.items():
                m.train(training)

    def forward_parameters(self, host) -> int:
        return sum(p.numel() for p in host.policy.parameters())


class CachedLogps(Reference):
    """Reference log-probs of the data rows, computed once from pi_0 and stored on disk.

    ``model`` is pi_0 at construction (the policy before any step): its identity is taken now, so that a
    reference rebuilt later from the model's source can be checked against it.
    """

    name = "cache"
    scores_data = True

    def __init__(self, directory: str | None, model_name: str, model: nn.Module) -> None:
        super().__init__()
        from lit_align.policy.reference_cache import ReferenceCache

        self.cache = ReferenceCache(directory, model_name, model)

    def cached_logps(self, split: str, index: torch.Tensor) -> torch.Tensor:
        return self.cache.lookup(split, index)

    def prepare(self, objective, datamodule) -> None:
        self.cache.prepare(objective, datamodule)

    def policy_updated(self) -> None:
        self.cache.policy_moved = True

    def save_state(self, checkpoint: dict) -> None:
        super().save_state(checkpoint)
        self.cache.save_identity(checkpoint)

    def check_state(self, checkpoint: dict, source: str) -> None:
        self.cache.check_identity(checkpoint, source)
        super().check_state(checkpoint, source)


class NoReference(Reference):
    """No reference at all."""

    name = "none"


def reference_class(mode: ReferenceMode) -> type[Reference]:
    """The class a config's ``reference: <mode>`` names."""
    classes = {cls.name: cls for cls in (FrozenCopy, LoraBase, CachedLogps, NoReference)}
    if mode not in classes:
        raise ValueError(f"reference must be one of {', '.join(classes)}; got {mode!r}")
    return classes[mode]


def held_for(need: Need | None) -> ReferenceMode:
    """How pi_0 is held when the configuration does not say: a frozen ``copy`` for an objective that needs one,
    else ``none`` (nothing is loaded)."""
    return "none" if need is None else "copy"


def build_reference(mode: ReferenceMode, model: nn.Module, model_name: str,
                    cache_dir: str | None = None) -> Reference:
    """The reference ``mode`` names, from ``model``: pi_0 as loaded, before any LoRA wrapping."""
    cls = reference_class(mode)
    if cls is FrozenCopy:
        reference = FrozenCopy(model)
    elif cls is CachedLogps:
        reference = CachedLogps(cache_dir, model_name, model)
    else:
        reference = cls()
    if cls is not NoReference:  # once, here: pi_0 as loaded, before any step or LoRA wrapping
        reference.digest, reference.source = source_digest(model_name, model), model_name
    return reference

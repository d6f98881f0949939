"""The base LightningModule every objective subclasses.

It owns the ``PolicyWithReference``, the optimizer and schedule, metric reduction and logging, and keeping the
frozen reference out of checkpoints. A subclass implements ``compute_loss(batch, stage)``, returning the scalar
loss and a dict of per-example (or scalar) diagnostics; the base logs them as ``{stage}/{name}``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from types import FrameType
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lit_align.data.base import DataRequest
from lit_align.models.packing import packing_refusal
from lit_align.policy.frozen import drop_frozen, restore_frozen
from lit_align.objectives.metrics import StageMeans
from lit_align.policy.with_reference import PolicyWithReference
from lit_align.policy.reference import Need, held_for
from lit_align.generation.rollout import SamplingConfig
from lit_align.objectives.schedules import Schedule, warmup_then_decay

Stage = Literal["train", "val", "test"]


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``grads`` together, as a plain float32 scalar on their device.

    Sharded (FSDP2 DTensor) gradients contribute the norm of the whole tensor, all-reduced over its shards; they
    may be mixed with plain tensors, which torch's own clip refuses."""
    sharded = [g for g in grads if hasattr(g, "to_local")]
    plain = [g for g in grads if not hasattr(g, "to_local")]
    device = grads[0].device
    squares = torch.zeros((), dtype=torch.float32, device=device)
    for grad in plain:  # whole on every rank
        squares = squares + torch.linalg.vector_norm(grad.detach(), dtype=torch.float32).to(device) ** 2
    if sharded:
        local = torch.zeros((), dtype=torch.float32, device=device)
        for grad in sharded:  # this rank's shard of each: one all-reduce adds the shards up
            local = local + torch.linalg.vector_norm(grad.to_local().detach(), dtype=torch.float32).to(device) ** 2
        torch.distributed.all_reduce(local, group=sharded[0].device_mesh.get_group())
        squares = squares + local
    return squares.sqrt()


def init_arguments(module: torch.nn.Module, frame: FrameType | None) -> dict[str, Any]:
    """The arguments of the ``__init__`` calls of ``module`` running from ``frame`` outward (a subclass's calls its
    base's), each as its call holds it now, its ``**kwargs`` included; where two calls name the same argument, the
    outer one's value (the subclass's, as the user gave it) wins. Read from the calls themselves, so it is the same
    whether the objective is built in Python or by the command line."""
    calls: list[dict[str, Any]] = []
    while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is module:
        code, values = frame.f_code, frame.f_locals
        named = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        arguments = {name: values[name] for name in named if name != "self" and name in values}
        if code.co_flags & inspect.CO_VARKEYWORDS:
            rest = code.co_varnames[len(named) + bool(code.co_flags & inspect.CO_VARARGS)]
            arguments = {**values.get(rest, {}), **arguments}
        calls.append(arguments)
        frame = frame.f_back
    return {name: value for arguments in calls for name, value in arguments.items()}


class AlignmentModule(L.LightningModule):
    """Shared training logic of every lit-align objective.

    Args:
        policy: The policy and its reference. Defaults to the embedded tiny model with the reference this
            objective needs.
        learning_rate: Peak learning rate of the default AdamW. PAPER TL;DR: 3e-6 (DPO, REBEL, distillation,
            PPO, reverse KL, SFT, reward model; PMLE sets its own 1e-6).
        weight_decay: AdamW weight decay (not applied to biases and norms). Hugging Face Trainer default: 0.
        lr_schedule: ``linear`` or ``cosine`` decay to zero after warm-up, or ``constant``. PAPER TL;DR:
            linear (cosine for SFT, the reward model and the chat runs).
        warmup_ratio: Fraction of the optimizer steps spent warming up linearly from zero. The paper states
            none; 0.1 is the Zephyr and Tulu 2 DPO recipes' value (the Hugging Face Trainer's default is 0).
        max_grad_norm: Clip the gradient norm of every update to this value (1.0, the default of TRL and the
            Hugging Face Trainer); ``None`` turns clipping off. The norm before clipping is logged as
            ``train/grad_norm``. ``trainer.gradient_clip_val``, when set, takes precedence.
        optimizer: Replaces the default AdamW, e.g. ``{class_path: torch.optim.SGD, init_args: {lr: 0.01}}``.
        lr_scheduler: Replaces the default schedule (stepped every optimizer step).
    """

    #: What the objective needs of the reference with any settings (``lit_align.policy.reference.Reference.require``):
    #: ``data`` (log-probs of the data rows), ``samples`` (scoring fresh samples) or None (nothing). An objective
    #: whose need follows from a setting overrides ``reference_need`` instead.
    needs_reference: ClassVar[Need | None] = None
    #: Columns of the user's data this objective reads besides prompt and completions, e.g. ``{"label": bool}``
    #: (``lit_align.data.columns``): the DataModule validates them row by row and puts each in ``batch[name]``.
    data_columns: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self,
        policy: PolicyWithReference | None = None,
        learning_rate: float = 3e-6,
        weight_decay: float = 0.0,
        lr_schedule: Schedule = "linear",
        warmup_ratio: float = 0.1,
        max_grad_norm: float | None = 1.0,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm}")
        self.max_grad_norm = max_grad_norm
        self.save_hyperparameters(ignore=["policy", "optimizer", "lr_scheduler"])
        settings = init_arguments(self, inspect.currentframe())
        #: What this objective needs of pi_0 with its settings: the one decision (``reference_need``).
        self.reference_needed: Need | None = self.reference_need(settings)
        self.policy = policy if policy is not None else PolicyWithReference(reference=held_for(self.reference_needed))
        if self.reference_needed is not None:  # a policy given with another reference: refused in one line
            self.policy.reference.require(self.reference_owner(settings), self.reference_needed)
        self.tokenizer = self.policy.tokenizer
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self._metrics = {stage: StageMeans() for stage in ("train", "val", "test")}

    # -- the reference: what this objective needs of pi_0 is decided here, once, from its settings -------------

    @classmethod
    def reference_need(cls, settings: Mapping[str, Any]) -> Need | None:
        """What the objective needs of pi_0 with ``settings``: the arguments of its classes' ``__init__`` calls
        (``init_arguments``), defaults included.

        ``AlignmentModule.__init__`` asks once, before the policy exists: with no ``policy`` given it loads the
        reference this answer needs (``held_for``: a frozen ``copy``, or ``none``), and a given policy whose
        reference cannot serve it is refused in one line. The class's ``needs_reference`` unless overridden by an
        objective whose need follows from a setting (a KL weight of 0, a reference-free loss).
        """
        return cls.needs_reference

    @classmethod
    def reference_owner(cls, settings: Mapping[str, Any]) -> str:
        """Who needs the reference, as the refusal of an unfit one names it: the class name unless overridden."""
        return cls.__name__

    # -- prompt sharing: whether the architecture allows it, decided here for every objective -------------------

    def prompt_sharing(self, wanted: bool) -> bool:
        """Whether the completions of one prompt are scored packed behind one copy of it (``share_prompt``): as
        ``wanted``, unless the policy's architecture cannot be packed exactly (flash attention, ALiBi, recurrent
        layers: ``lit_align.models.packing.packing_refusal``), which is said in a warning. What the config allows
        is then checked on the run's first batch (``lit_align.models.fast_path``)."""
        if not wanted:
            return False
        refusal = packing_refusal(self.policy.base_model)
        if refusal is not None:
            warnings.warn(f"share_prompt off for {type(self.policy.base_model).__name__}: {refusal}; running the "
                          "completions as separate rows instead")
        return refusal is None

    # -- the data: told what this objective reads (``lit_align.data.base.DataRequest``), in one place -----------

    def data_request(self) -> DataRequest:
        """What this objective asks of its data: rows tokenised by the policy's tokenizer, with ``data_columns``."""
        return DataRequest(self.tokenizer, self.data_columns)

    @L.LightningModule.trainer.setter
    def trainer(self, trainer: L.Trainer | None) -> None:
        # Lightning attaches the DataModule to the Trainer and then the Trainer to this module at the start of
        # fit, validate, test and predict, before any setup hook (the DataModule's runs first): here it is told.
        L.LightningModule.trainer.fset(self, trainer)
        connect = getattr(getattr(trainer, "datamodule", None), "connect", None)
        if callable(connect):
            connect(self.data_request())

    # -- what a subclass provides ------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, torch.Tensor],
                     stage: Stage) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the scalar loss to minimise and per-example diagnostics to log."""
        raise NotImplementedError

    # -- steps -------------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.compute_loss(batch, "train")
        self.record("train", {"loss": loss.detach(), **metrics})
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Log once per optimizer step, averaging over every micro-batch of the accumulation and every rank.
        loop = self.trainer.fit_loop.epoch_loop
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches and not loop.batch_progress.is_last_batch:
            return
        self._log_means("train", on_step=True)
        self.log("train/learning_rate", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True,
                 on_epoch=False)  # TRL's (the Hugging Face Trainer's) name

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, metrics = self.compute_loss(batch, "val")
        self.record("val", {"loss": loss.detach().expand(batch["index"].numel()), **metrics})

    def on_validation_epoch_end(self) -> None:
        self._log_means("val", on_step=False)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, metrics = self.compute_loss(batch, "test")
        self.record("test", {"loss": loss.detach().expand(batch["index"].numel()), **metrics})

    def on_test_epoch_end(self) -> None:
        self._log_means("test", on_step=False)

    # -- generation: ``lit-align predict`` and ``lit-align evaluate`` -------------------------------------------

    #: The objective's own sampling settings (on-policy objectives, PMLE's KL term); None for those that never
    #: sample. ``predict_step`` falls back to them.
    sampling: SamplingConfig | None = None
    _prediction_sampling: SamplingConfig | None = None
    _prediction_num_samples: int = 1

    def configure_prediction(self, sampling: SamplingConfig | None = None, num_samples: int = 1) -> None:
        """How ``predict_step`` samples (the ``PredictionWriter`` callback sets it): ``sampling`` (None: the
        objective's own ``sampling``, else ``SamplingConfig()``) and ``num_samples`` responses per prompt."""
        self._prediction_sampling = sampling
        self._prediction_num_samples = num_samples

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Sample responses to the batch's prompts: ``rollout`` (``lit_align.generation.rollout.Rollout``),
        ``index`` (N,) the data row each sample answers, ``sample`` (N,) its number among that row's samples,
        ``sampling`` used."""
        sampling = self._prediction_sampling or self.sampling or SamplingConfig()
        num_samples = self._prediction_num_samples
        rollout = self.policy.generate(batch["prompt_ids"], batch["prompt_mask"], sampling, num_samples)
        rows = torch.arange(rollout.input_ids.shape[0], device=rollout.input_ids.device)
        return {"rollout": rollout, "index": batch["index"][rollout.prompt_index], "sample": rows % num_samples,
                "sampling": sampling, "batch": batch}

    def record(self, stage: Stage, values: dict[str, torch.Tensor]) -> None:
        """Add per-example (or scalar) ``values`` to the means logged as ``{stage}/{name}``: once per optimizer step
        for ``train`` (over its micro-batches), once per epoch for ``val`` and ``test``, weighted by example count
        over every rank."""
        self._metrics[stage].update(values)

    def _log_means(self, stage: Stage, on_step: bool) -> None:
        means = self._metrics[stage].compute(self.device)  # a collective under several ranks
        self._metrics[stage].reset()
        for name, value in means.items():
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=not on_step, prog_bar=name == "loss",
                     sync_dist=False, rank_zero_only=False)

    # -- optimisation ------------------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer updates: the policy's trainable weights (subclasses add their own heads)."""
        return self.policy.trainable_parameters()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning calls this after unscaling (fp16) and before the step; `max_grad_norm` is the default.
        if gradient_clip_val is not None and gradient_clip_algorithm not in (None, "norm"):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)  # by value: as Lightning
            return
        self.clip_and_log_gradients(optimizer, gradient_clip_val if gradient_clip_val is not None
                                    else self.max_grad_norm)

    def clip_and_log_gradients(self, optimizer, max_norm: float | None = None) -> None:
        """Clip the gradients of ``optimizer``'s parameters to ``max_norm`` (no clipping when None) and record their
        total norm before clipping as ``grad_norm``. On-policy objectives call it before each manual step."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return  # e.g. a step NonFiniteGuard dropped
        norm = total_norm(grads)
        if max_norm is not None:
            scale = float(max_norm / (norm + 1e-6))
            if scale < 1.0:
                for grad in grads:
                    grad.mul_(scale)
        self.record("train", {"grad_norm": norm})

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(params)
        else:
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            groups = [{"params": decay, "weight_decay": self.hparams.weight_decay},
                      {"params": no_decay, "weight_decay": 0.0}]
            # not fused: torch's fused AdamW updates the weights without bumping their version counters, which is
            # how a colocated generation engine (lit_align/generation/weights.py) tells that they changed
            optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.hparams.learning_rate)
        if self.lr_scheduler_factory is not None:
            scheduler = self.lr_scheduler_factory(optimizer)
        else:
            total = self.scheduler_steps()
            warmup = int(self.hparams.warmup_ratio * total)
            scheduler = warmup_then_decay(optimizer, total, warmup, self.hparams.lr_schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def scheduler_steps(self) -> int:
        """How many times the default schedule is stepped in the whole fit (its decay reaches zero there)."""
        return int(self.trainer.estimated_stepping_batches)

    # -- sharding: the strategy decides (lit_align/strategies.py); objectives stay device-agnostic -------------

    def configure_model(self) -> None:
        from lit_align.distributed.strategies import shard_with_strategy

        self.check_data_fits_model()
        shard_with_strategy(self)

    def check_data_fits_model(self) -> None:
        """One line before any forward when the data's token ids cannot be read by the policy (its tokenizer's
        vocabulary, its embedding table: ``lit_align.models.loading.check_tokens_fit``)."""
        from lit_align.models.loading import check_tokens_fit

        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        examples = [ex for split in ("train", "val", "test") for ex in getattr(datamodule, f"{split}_examples", [])]
        data_tokenizer = getattr(datamodule, "_tokenizer", None)
        check_tokens_fit(self.policy.base_model, self.policy.tokenizer, data_tokenizer, examples)

    def full_policy_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Consolidated policy weights for export (None when not sharded). A collective: call on every rank."""
        from lit_align.distributed.sharding import full_policy_state_dict

        return full_policy_state_dict(self.policy)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.policy.reference.policy_updated()

    # -- checkpoints: the frozen reference is rebuilt from its source, never stored ----------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.policy.reference.save_state(checkpoint)
        drop_frozen(checkpoint.get("state_dict"), "policy.reference.")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.policy.reference.check_state(checkpoint, getattr(self._trainer, "ckpt_path", None) or "being loaded")
        restore_frozen(checkpoint.get("state_dict"), self.policy.reference, "policy.reference.")


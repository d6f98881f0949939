"""The base of every on-policy objective: sample, score, then optimise several times on that batch.

One ``training_step`` (one batch of prompts) runs, with manual optimisation:

1. ``make_experience(batch)`` under ``no_grad``: responses from ``sample_responses`` (by default
   ``num_samples`` per prompt from the policy's *current* weights), scores from the frozen reward model,
   per-token log-probs of the sampling policy (``old_logps``) and of the reference (``ref_logps``).
2. ``epochs_per_batch`` passes over that experience, each cut into ``mini_batches`` shuffled splits of whole
   prompts (all samples of a prompt stay together, so pairwise losses see both responses); for each split
   ``experience_loss(mb)`` -> backward -> gradient clipping to ``max_grad_norm`` -> optimizer step.
3. The learning-rate schedule steps once.

With one mini-batch (``mini_batches: 1``) the first update scores exactly the rows and the weights of the
sampling-time pass, so that pass runs with gradient and is kept as the first update's forward
(``HeldForward``): its detached values are ``old_logps`` (and RLHF's values), and one policy forward per batch
is saved (TRL's RLOO/GRPO run both). The ratio of the first update is then exactly 1, as in theory.

Hooks a subclass uses:

- ``experience_loss(mb) -> (scalar loss, {name: per-row or scalar diagnostics})`` (required). ``mb`` is the
  ``Experience`` of the rows of one mini-batch (``exp.rows(index)``); ``self.policy_token_logps(mb)`` gives the
  current policy's per-token log-probs with gradient. With ``importance_correction`` set, the policy-gradient
  terms are multiplied by ``mb.token_weights()`` (or ``mb.sequence_weights()``) and averaged over
  ``mb.loss_mask()``.
- ``experience_from(rollout)`` (extend by calling ``super()`` and ``exp.extend(MyExperience, field=...)``, e.g. to
  add advantages): the working data is a dataclass (``lit_align.objectives.onpolicy.experience``) whose fields a
  subclass declares by subclassing it. It makes the experience of a rollout however it was drawn;
  ``make_experience(batch)`` is ``experience_from(sample_responses(batch))``.
- ``experience_metrics(exp)``: per-row diagnostics of a fresh batch (``objective/*``, ``completions/*``).
- ``sample_responses(batch) -> Rollout``: where responses come from (the current policy by default).

The experience's fields: ``rollout`` (ids and masks (N, T), ``ended``, ``prompt_index``, the sampling settings
whose temperature every log-prob of these rows is taken at), ``scores`` (N,) after the missing-EOS penalty,
``old_logps`` and ``ref_logps`` (N, T-1) aligned like ``lit_align.models.logprobs.completion_token_logprobs``
(zero off the response), ``response_mask`` (N, T-1) bool, and the mismatch correction's ``importance`` weights.

``trainer.max_steps`` counts optimizer updates, as everywhere in Lightning: one batch of prompts makes
``epochs_per_batch * mini_batches`` of them (a batch always completes, so the count is rounded up to whole
batches). The reward model is frozen, in eval mode, never handed to the optimizer, placed on the policy's
device by Lightning and left out of checkpoints, like the reference.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_align.errors import UserError
from lit_align.policy.frozen import drop_frozen, restore_frozen
from lit_align.objectives.base import AlignmentModule, Stage
from lit_align.objectives.onpolicy.reward_stage import RewardStage
from lit_align.rewards.dispatch import Reward, build_reward
from lit_align.rewards.functions import RewardFunction
from lit_align.generation.rollout import Rollout, SamplingConfig, join_rows, map_tensors
from lit_align.models.chunked_head import CompletionScores
from lit_align.models.loading import has_dropout
from lit_align.models.packing import pack_shared_prompt
from lit_align.losses.importance import ImportanceCorrection, importance_weights
from lit_align.objectives.onpolicy.experience import Experience
from lit_align.objectives.onpolicy.held import HeldForward, random_state, set_random_state
from lit_align.objectives.onpolicy.sampling_loop import SamplingLoop, play_episodes
from lit_align.environments.base import Environment
from lit_align.generation.episodes import EpisodeRollout

# A checkpoint is written between training steps, after all updates of a batch: the state to resume from.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
# A reward model given as a module is dropped from the hyperparameters right after they are collected.
warnings.filterwarnings("ignore", message="Attribute 'reward_model' is an instance of `nn.Module`")


class OnPolicyObjective(AlignmentModule):
    """Shared machinery of the objectives that learn from responses sampled during training.

    Batches come from ``PromptDataModule``: left-padded ``prompt_ids``/``prompt_mask``, plus completions when
    the data has them.

    Args:
        reward_model: The reward model: a local Hugging Face directory or hub id of a sequence-classification
            model, a lit-align ``RewardModeling`` checkpoint (``.ckpt``), or any module with
            ``forward(input_ids, attention_mask) -> (B,)`` rewards. Its tokenizer and chat template may differ
            from the policy's: it then reads the data's messages and the decoded responses rendered by its own
            template (``lit_align.rewards.dispatch``); name it as a
            ``lit_align.rewards.model.PretrainedRewardModel`` to set its input length and template use. Or reward
            functions of the decoded text, ``fn(prompts, responses) -> list[float]``, named by import path
            (``my_module.my_reward``), as a list (summed), or as ``lit_align.rewards.functions.RewardFunction``
            entries with weights (``lit_align/rewards/functions.py``). When omitted, ``reward_stage`` trains one on
            the preference pairs of the training data at the start of ``fit``.
        sampling: How responses are sampled (max/min new tokens, temperature > 0, top-p, top-k); every log-prob
            of training is taken at this temperature. PAPER TL;DR: temperature 0.7, 53 new tokens (TRL's GRPO and
            RLOO defaults differ: temperature 1.0, 512 new tokens; its online DPO's 0.9 and 64).
        num_samples: Responses sampled per prompt. PAPER: 2 (REBEL and preference distillation compare two).
        epochs_per_batch: Optimisation passes over each sampled batch. PAPER TL;DR: 4 (REBEL, distillation,
            PPO).
        mini_batches: Optimizer updates per pass (the batch is split into this many groups of prompts). TRL
            default: 1.
        micro_batches: Groups of prompts each update's forward-backward runs in (less memory). Default 1 (TRL's
            gradient_accumulation_steps default); the same update, for one more forward without gradient
            (docs/onpolicy.md).
        missing_eos_penalty: Score given to a response that did not end with EOS within ``max_new_tokens``
            (replaces the reward model's score); ``None`` keeps the reward model's score. TRL default: None
            (RLHF, ReverseKL and REBEL set the PAPER's -1).
        reward_stage: How the reward model is trained when ``reward_model`` is not given.
        importance_correction: Weight every policy-gradient term by the ratio of the trainer's to the generation
            engine's probability of the sampled tokens, truncated or masked (``ImportanceCorrection``: ``mode``,
            ``clip_max``, ``clip_min``; docs/onpolicy.md). Default None: nothing corrected (TRL 1.16 corrects its
            vLLM path by default, ``sequence_mask`` with ``clip_max`` 3).
        max_staleness: How many optimizer steps older than the trained weights a rollout may be: 0 (the default,
            TRL's) samples then trains; n >= 1 samples ahead on a worker thread from a copy of the weights.
        environment: Train on multi-turn episodes of this environment (by ``class_path``, e.g.
            ``lit_align.environments.CalculatorEnvironment``), scored by its rewards; tokens the policy did not
            write are in no loss. Default None: single responses (TRL's).
        share_prompt: Score a prompt's samples behind one copy of it (TRL: one row per sample; docs/onpolicy.md).
    """

    #: Why this objective cannot train on multi-turn episodes (``environment``); None: it can.
    episodes_refusal: str | None = None

    #: The KL shaping and monitors score fresh samples under pi_0; a reference-free objective sets None.
    needs_reference = "samples"
    #: With one mini-batch, keep the sampling-time forward (with its graph) as the first update's (module doc).
    hold_first_forward: bool = True

    def __init__(
        self,
        reward_model: str | nn.Module | list[str | RewardFunction] | None = None,
        sampling: SamplingConfig = SamplingConfig(max_new_tokens=53, temperature=0.7),
        num_samples: int = 2,
        epochs_per_batch: int = 4,
        mini_batches: int = 1,
        micro_batches: int = 1,
        missing_eos_penalty: float | None = None,
        reward_stage: RewardStage = RewardStage(),
        importance_correction: ImportanceCorrection | None = None,
        max_staleness: int = 0,
        environment: Environment | None = None,
        share_prompt: bool = True,
        **kwargs: Any,
    ) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if environment is not None and self.episodes_refusal is not None:
            raise UserError(f"{type(self).__name__} does not train on environment episodes: {self.episodes_refusal}")
        if environment is not None and reward_model is not None:
            raise UserError(f"{type(self).__name__}: the environment's rewards score its episodes; drop reward_model "
                            "(or the environment)")
        if min(num_samples, epochs_per_batch, mini_batches, micro_batches) < 1:
            raise ValueError("num_samples, epochs_per_batch, mini_batches and micro_batches must be at least 1, got "
                             f"{num_samples}, {epochs_per_batch}, {mini_batches}, {micro_batches}")
        if missing_eos_penalty is not None and sampling.min_new_tokens >= sampling.max_new_tokens:
            raise ValueError(
                f"sampling.min_new_tokens={sampling.min_new_tokens} >= max_new_tokens={sampling.max_new_tokens} "
                "leaves no room to sample a stop token, so missing_eos_penalty would replace every reward: set "
                "missing_eos_penalty: null for fixed-length responses (the oracle task), or allow shorter ones")
        super().__init__(**kwargs)
        if isinstance(reward_model, nn.Module) or isinstance(reward_model, (list, tuple)) and not all(
                isinstance(r, str) for r in reward_model):
            self.hparams.pop("reward_model", None)  # weights never go into the hyperparameters
        self.automatic_optimization = False
        self.sampling = sampling
        self.num_samples = num_samples
        self.epochs_per_batch = epochs_per_batch
        self.mini_batches = mini_batches
        self.micro_batches = micro_batches
        self.missing_eos_penalty = missing_eos_penalty
        self._warned_no_stop = False
        self._held = HeldForward()
        self.reward_stage = reward_stage
        self.importance_correction = importance_correction
        if importance_correction is not None and not sampling.logprobs:
            self.sampling = dataclasses.replace(sampling, logprobs=True)  # the engine reports what it sampled from
        #: Mean per-token engine minus trainer log-prob of the last experience (None without engine log-probs).
        self.last_logprob_gap: float | None = None
        self.max_staleness = max_staleness
        self.environment = environment
        if environment is not None:
            self.hparams.pop("environment", None)  # the CLI's config records it; its object stays out of hparams
            self.data_columns = {**self.data_columns, **environment.data_columns}  # the rows it reads
        self.share_prompt = self.prompt_sharing(share_prompt)
        self.sampling_loop = SamplingLoop(self)
        self._sampled: Rollout | None = None  # the rollout training_step hands to make_experience
        self.reward_model: nn.Module | None = None
        self.reward: Reward | None = None
        if reward_model is not None:
            self.attach_reward_model(reward_model)

    # -- the reward model --------------------------------------------------------------------------------------

    def attach_reward_model(self, reward_model: Any) -> None:
        """Score with ``reward_model``: ``lit_align.rewards.dispatch.build_reward`` makes it the one ``Reward``
        (a reward model of the policy's tokenizer or of another, reward functions, or a judge); the module it holds
        is registered frozen and in eval mode (a submodule, so it follows the policy's device)."""
        self.reward = build_reward(reward_model, self.tokenizer, owner=self)
        self.reward_model = self.reward.module

    def setup(self, stage: str) -> None:
        if self.micro_batches > 1 and self.max_staleness > 0 and has_dropout(self.policy.policy):
            raise UserError(f"{type(self).__name__}: micro_batches > 1 with the policy's dropout on replays each "
                            "group's random numbers, which the sampling thread of max_staleness > 0 draws from too; "
                            "set policy.disable_dropout: true (the default), micro_batches: 1 or max_staleness: 0")
        if self.reward_model is None and self.environment is None and stage != "predict":  # sampling needs none
            self.attach_reward_model(self.reward_stage.provide(self, self.trainer, train=stage == "fit"))

    def train(self, mode: bool = True) -> OnPolicyObjective:
        super().train(mode)
        if self.reward_model is not None:
            self.reward_model.eval()  # frozen: its dropout and norms never switch to training behaviour
        return self

    @torch.no_grad()
    def score(self, rollout: Rollout) -> torch.Tensor:
        """Reward of every row (N,) in float32 (``lit_align.rewards.dispatch``); an episode's is its return."""
        if isinstance(rollout, EpisodeRollout):
            return rollout.rewards.float()
        return self.reward(rollout)

    # -- experience --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_responses(self, batch: dict[str, Any]) -> Rollout:
        """``num_samples`` responses (or episodes of the ``environment``) per prompt from the current weights."""
        if self.environment is not None:
            return play_episodes(self, batch, self.sampling_loop.policy())
        return self.generate(batch)

    def generate(self, batch: dict[str, Any], from_reference: bool = False) -> Rollout:
        """``num_samples`` responses to the batch's prompts from the policy (or pi_0), recording how they were
        drawn: the sampling settings, the weight version (optimizer steps so far) and the prompts' messages."""
        policy = self.sampling_loop.policy()  # the generation copy on the rollout worker's thread
        rollout = policy.generate(batch["prompt_ids"], batch["prompt_mask"], self.sampling, self.num_samples,
                                  from_reference=from_reference)
        return dataclasses.replace(rollout, sampling=rollout.sampling or self.sampling, version=self.global_step,
                                   prompt_messages=batch.get("prompt_messages"))

    @torch.no_grad()
    def make_experience(self, batch: dict[str, Any]) -> Experience:
        """Responses to the batch's prompts (``sample_responses``, or the rollout ``training_step`` took from the
        sampling loop) made into an experience (``experience_from``)."""
        rollout, self._sampled = self._sampled, None
        return self.experience_from(rollout if rollout is not None else self.sample_responses(batch))

    @torch.no_grad()
    def experience_from(self, rollout: Rollout) -> Experience:
        """A rollout's scores, per-token sampling-policy and reference log-probs and mismatch correction (see the
        module doc). Every log-prob is taken at ``rollout.sampling.temperature``."""
        scores = self.rollout_scores(rollout)
        ref_logps = None
        if self.policy.reference.live:  # a reference-free objective without one gets no ref_logps
            # pi_0's no-grad forward before the policy's, which may be kept with its graph (HeldForward)
            ref_logps, _ = self.chunked_token_logps(rollout, reference=True)
        exp = self.policy_experience(rollout, scores, ref_logps)
        self.last_logprob_gap = logprob_gap(exp)
        if self.importance_correction is not None:
            exp.importance = self.importance_of(exp)
            exp.correction = self.importance_correction
        return exp

    def rollout_scores(self, rollout: Rollout) -> torch.Tensor:
        """The reward of every row (N,), the missing-EOS penalty applied."""
        scores = self.score(rollout)
        if self.missing_eos_penalty is None:
            return scores
        if not rollout.ended.any() and not self._warned_no_stop:
            self._warned_no_stop = True
            rank_zero_warn(
                f"{type(self).__name__}: none of the {rollout.ended.numel()} responses of a batch stopped within "
                f"sampling.max_new_tokens={rollout.sampling.max_new_tokens}, so missing_eos_penalty="
                f"{self.missing_eos_penalty} replaced every reward and the batch carries nothing of the reward "
                "model: raise max_new_tokens, or set missing_eos_penalty: null")
        return torch.where(rollout.ended, scores, torch.full_like(scores, self.missing_eos_penalty))

    def policy_experience(self, rollout: Rollout, scores: torch.Tensor,
                          ref_logps: torch.Tensor | None) -> Experience:
        """The experience, from one pass of the sampling-time policy over every row: ``old_logps`` (RLHF adds
        its values from the same forward and builds its own experience). Kept as the first update's forward when
        it can be."""
        mask = rollout.trained_mask[:, 1:].bool()
        if self._held.armed:
            with torch.enable_grad():  # make_experience runs under no_grad
                old_logps = self._held.keep(self.token_logps_of(rollout)).detach()
        else:
            old_logps, _ = self.chunked_token_logps(rollout)
        return Experience(rollout=rollout, scores=scores, old_logps=old_logps, response_mask=mask, ref_logps=ref_logps)

    def importance_of(self, exp: Experience):
        """The mismatch correction of every token: the sampling-time log-probs against the engine's."""
        engine = exp.rollout.engine_logps
        if engine is None:
            raise UserError(f"{type(self).__name__}: importance_correction needs the generation engine's log-probs "
                            "of the sampled tokens, and this rollout has none (a custom generation backend or "
                            "sample_responses that does not fill Rollout.engine_logps)")
        return importance_weights(exp.old_logps, engine[:, 1:], exp.response_mask, self.importance_correction)

    def experience_chunks(self, rollout: Rollout) -> list[Rollout]:
        """The rollout in micro-batch sized chunks of whole prompts: no-grad forwards over them keep the activations
        as small as in training."""
        per_prompt = self.num_samples if rollout.input_ids.shape[0] % self.num_samples == 0 else 1
        parts = self.mini_batches * self.micro_batches
        size = per_prompt * math.ceil(rollout.input_ids.shape[0] / per_prompt / parts)
        rows = torch.arange(rollout.input_ids.shape[0], device=rollout.input_ids.device)
        return [rollout.rows(index) for index in rows.split(size)]

    def rollout_token_scores(self, rollout: Rollout, reference: bool = False, entropy: bool = False,
                             hidden: bool = False) -> CompletionScores:
        """The policy's (or, with ``reference``, pi_0's) scores of a rollout's trained tokens at its sampling
        temperature (``PolicyWithReference.completion_scores``): with ``share_prompt``, every prompt's responses
        in one packed row behind one copy of the prompt."""
        temperature = rollout.sampling.temperature
        if self.share_prompt and self.num_samples > 1 and rollout.policy_mask is None \
                and self.policy.packs(reference):
            packed = pack_shared_prompt(rollout.input_ids, rollout.attention_mask, rollout.trained_mask,
                                        rollout.prompt_index)
            return self.policy.packed_scores(packed, rollout.input_ids.shape[1] - 1, temperature, reference=reference,
                                             entropy=entropy, hidden=hidden)
        return self.policy.completion_scores(rollout.input_ids, rollout.attention_mask, rollout.trained_mask,
                                             temperature, reference=reference, entropy=entropy, hidden=hidden)

    @torch.no_grad()
    def chunked_token_logps(self, rollout: Rollout, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs (N, T-1) and the response mask of every row under the policy (or, with
        ``reference``, pi_0), chunk by chunk. Scored at the rollout's sampling temperature: the distribution the
        responses were drawn from (rollout.py)."""
        parts = [self.rollout_token_scores(chunk, reference=reference) for chunk in self.experience_chunks(rollout)]
        return torch.cat([p.logps for p in parts]), torch.cat([p.mask for p in parts])

    def experience_metrics(self, exp: Experience) -> dict[str, torch.Tensor]:
        """Per-row diagnostics of freshly sampled responses (logged as means), and the mismatch correction's."""
        old = exp.old_logps.sum(-1)  # (N,) ln pi_t(a|x) at the sampling temperature
        metrics = {
            "objective/entropy": -old,  # Monte Carlo estimate of H(pi_T(x)): -ln pi_T(a|x) of a sampled a
            "objective/scores": exp.scores,
            "completions/mean_length": exp.response_mask.sum(-1).float(),
            "completions/clipped_ratio": (~exp.ended).float(),
        }
        if exp.ref_logps is not None:
            metrics["objective/kl"] = old - exp.ref_logps.sum(-1)  # estimates KL(pi_T || pi0_T), both tempered
        if self.reward is not None:
            metrics.update(self.reward.metrics())  # reward functions': TRL's rewards/<name>/mean and /std, each
        if isinstance(exp.rollout, EpisodeRollout):
            metrics["episodes/turns"] = exp.rollout.turns.float()  # policy turns per episode
        return metrics

    def policy_token_logps(self, mb: Experience) -> torch.Tensor:
        """Current policy's per-token log-probs (n, T-1) of the rows of ``mb``, with gradient, zero off the mask."""
        held = self._held.take(mb.num_rows)
        if held is not None:
            return held
        return self.token_logps_of(mb.rollout)

    def token_logps_of(self, rollout: Rollout) -> torch.Tensor:
        """The current policy's per-token log-probs (n, T-1) of a rollout's rows at its sampling temperature."""
        return self.rollout_token_scores(rollout).logps

    def experience_loss(self, mb: Experience) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar loss of one mini-batch of experience and its diagnostics."""
        raise NotImplementedError

    # -- optimisation ------------------------------------------------------------------------------------------

    def mini_batch_rows(self, exp: Experience) -> list[torch.Tensor]:
        """A random split of the rows into ``mini_batches`` parts made of whole prompts."""
        prompts = exp.prompt_index
        num_prompts = int(prompts.max()) + 1
        per_prompt = prompts.numel() // num_prompts  # rows are laid out prompt-major
        order = torch.randperm(num_prompts, device=prompts.device)
        rows = (order[:, None] * per_prompt + torch.arange(per_prompt, device=prompts.device)).reshape(-1)
        return [part for part in rows.tensor_split(self.mini_batches) if part.numel()]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        loop = self.trainer.fit_loop.epoch_loop
        last = loop.batch_progress.is_last_batch or batch_idx + 1 >= self.trainer.num_training_batches
        loss = None
        for sampled in self.sampling_loop.step(batch, last_of_epoch=last):  # none while the pipeline fills
            if self.trainer.max_steps not in (None, -1) and self.global_step >= self.trainer.max_steps:
                break
            loss = self.train_on(sampled.batch, sampled.rollout)
        return loss

    def train_on(self, batch: dict[str, Any], rollout: Rollout) -> torch.Tensor:
        """The updates on one batch of prompts and its rollout (``epochs_per_batch`` passes of ``mini_batches``)."""
        optimizer = self.optimizers()
        self._sampled = rollout
        with self._held.arm(self.mini_batches == 1 and self.micro_batches == 1 and self.hold_first_forward):
            exp = self.make_experience(batch)
        self.record("train", {**self.experience_metrics(exp),
                              "generation/staleness": torch.tensor(float(self.global_step - rollout.version))})
        if exp.importance is not None:  # the correction applied to this batch (GenerationGapMonitor: its gap)
            self.log_dict(importance_metrics(exp.importance), on_step=True, on_epoch=False)
        loss = None
        for _ in range(self.epochs_per_batch):
            for rows in self.mini_batch_rows(exp):
                loss, metrics = self.backward_on(exp, rows)
                self.clip_and_log_gradients(optimizer, self.max_grad_norm)
                with self.sampling_loop.weights_update():
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.record("train", {"loss": loss.detach(), **metrics})
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return loss.detach()

    def backward_on(self, exp: Experience, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of the experience's ``rows`` (one mini-batch) and its gradient, accumulated into the parameters'.

        With ``micro_batches`` > 1 the update forward (``update_forward``) runs without gradient on each group of
        prompts, the loss of the whole mini-batch is taken on those outputs made leaves, and each group's forward
        then runs again with gradient and is given its share of the leaves' gradient: the same gradient as one
        pass (the loss sees the whole mini-batch, whatever it normalises by), with one group's activations held
        at a time."""
        if self.micro_batches == 1:
            with self._held.for_rows(rows):
                loss, metrics = self.experience_loss(exp.rows(rows))
            self.manual_backward(loss)
            return loss, metrics
        mb = exp.rows(rows)
        groups = self.micro_batch_rows(mb)
        device = next(self.policy.policy.parameters()).device
        # with dropout, each group's second forward must draw the masks its first drew: its random state
        rewind = has_dropout(self.policy.policy)
        states, outputs = [], []
        with torch.no_grad():
            for group in groups:
                states.append(random_state(device) if rewind else None)
                outputs.append(self.update_forward(mb.rollout.rows(group)))
        after = random_state(device) if rewind else None
        outputs = join_rows(outputs)
        leaves: list[torch.Tensor] = []

        def leaf(tensor: torch.Tensor) -> torch.Tensor:
            if not tensor.is_floating_point():
                return tensor
            leaves.append(tensor.detach().requires_grad_())
            return leaves[-1]

        self._held.keep(map_tensors(leaf, outputs))
        with self._held.for_rows(mb.num_rows):  # every row: the kept output as it is
            loss, metrics = self.experience_loss(mb)
            if self._held.pending:
                raise UserError(f"{type(self).__name__}: micro_batches needs experience_loss to read the policy "
                                "through policy_token_logps (or update_forward); set micro_batches: 1")
        parameters = [p for p in self.parameters() if p.requires_grad]
        *grads, = torch.autograd.grad(loss, leaves + parameters, allow_unused=True)
        if any(grad is not None for grad in grads[len(leaves):]):  # a gradient the groups would not carry
            raise UserError(f"{type(self).__name__}: micro_batches needs experience_loss to reach the weights only "
                            "through policy_token_logps (or update_forward); set micro_batches: 1")
        grads = grads[:len(leaves)]
        for group, state in zip(groups, states):
            if state is not None:
                set_random_state(state)
            shares = iter(grads)
            terms = []

            def pair(tensor: torch.Tensor) -> torch.Tensor:
                if tensor.is_floating_point():
                    grad = next(shares)
                    if grad is not None and tensor.requires_grad:
                        terms.append((tensor * grad[group]).sum())
                return tensor

            map_tensors(pair, self.update_forward(mb.rollout.rows(group)))
            self.manual_backward(torch.stack(terms).sum())
        if after is not None:
            set_random_state(after)
        return loss.detach(), metrics

    def micro_batch_rows(self, mb: Experience) -> list[torch.Tensor]:
        """The positions of a mini-batch's rows in ``micro_batches`` consecutive groups of whole prompts."""
        per_prompt = self.num_samples if mb.num_rows % self.num_samples == 0 else 1
        prompts = torch.arange(mb.num_rows, device=mb.scores.device).view(-1, per_prompt)
        return [group.reshape(-1) for group in prompts.tensor_split(self.micro_batches) if group.numel()]

    def update_forward(self, rollout: Rollout) -> Any:
        """The policy forward an update's loss reads (what ``HeldForward`` keeps and ``policy_token_logps``
        returns): the per-token log-probs; RLHF's adds its values."""
        return self.token_logps_of(rollout)

    def scheduler_steps(self) -> int:
        """The schedule steps once per batch of prompts; ``max_steps`` counts the optimizer updates within them
        (``epochs_per_batch * mini_batches`` a batch). Lightning's ``estimated_stepping_batches`` is
        ``min(batches * epochs, max_steps)``: the batches are that, with ``max_steps`` counted in whole batches."""
        estimated = self.trainer.estimated_stepping_batches
        max_steps = self.trainer.max_steps
        if max_steps not in (None, -1):
            estimated = min(estimated, math.ceil(max_steps / (self.epochs_per_batch * self.mini_batches)))
        if math.isinf(estimated):
            raise ValueError("set trainer.max_steps or trainer.max_epochs so that the learning-rate decay has an end")
        return int(estimated)

    def compute_loss(self, batch: dict[str, torch.Tensor], stage: Stage):
        # Validation and test: the objective on fresh samples of held-out prompts, without an update.
        exp = self.make_experience(batch)
        loss, metrics = self.experience_loss(exp)
        return loss, {**self.experience_metrics(exp), **metrics}

    # -- checkpoints: the frozen reward model is rebuilt from its source, never stored -------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        drop_frozen(checkpoint.get("state_dict"), "reward_model.")
        checkpoint["rollouts"] = self.sampling_loop.state_dict()  # batches not trained on yet: re-queued on resume

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        restore_frozen(checkpoint.get("state_dict"), self.reward_model, "reward_model.")
        self.sampling_loop.load_state_dict(checkpoint.get("rollouts", {}))

    def on_train_end(self) -> None:
        super().on_train_end()
        self.sampling_loop.close()


def logprob_gap(exp: Experience) -> float | None:
    """Mean over the trained tokens of the engine's log-prob minus the sampling-time trainer's, the very numbers
    whose ratio ``importance_correction`` weighs (None when the engine reported none)."""
    engine = exp.rollout.engine_logps
    if engine is None:
        return None
    mask = exp.response_mask
    gap = torch.nan_to_num(engine[:, 1:].float() - exp.old_logps.float()).masked_fill(~mask, 0.0)
    return float(gap.sum() / mask.sum().clamp(min=1))


def importance_metrics(weights) -> dict[str, torch.Tensor]:
    """The logged statistics of a mismatch correction: ``generation/is_ratio/mean`` and ``/max`` of the uncorrected
    ratio (over tokens, or sequences in the sequence modes), ``/clipped_fraction`` and ``/masked_fraction`` of
    those units truncated or dropped."""
    return {
        "generation/is_ratio/mean": weights.ratio_mean,
        "generation/is_ratio/max": weights.ratio_max,
        "generation/is_ratio/clipped_fraction": weights.clipped_fraction,
        "generation/is_ratio/masked_fraction": weights.masked_fraction,
    }

"""On-policy objectives with asynchronous generation (max_staleness) and multi-turn environments: the synchronous
loop unchanged at 0, versions within the bound, resume without loss or replay, environment tokens out of the loss,
the example environment trained from its configs, and the objectives that refuse episodes."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from support.cli import fit_args, run_main
from support.onpolicy import LengthReward, make_data

from lit_align.environments import CalculatorEnvironment, EnvStep, Environment
from lit_align.errors import UserError
from lit_align.generation.rollout import SamplingConfig
from lit_align.objectives import GRPO, REBEL, RLHF, RLOO, OnlineDPO, PreferenceDistillation, ReverseKL
from lit_align.objectives.onpolicy.base import OnPolicyObjective
from lit_align.policy.with_reference import PolicyWithReference


class Chatty(Environment):
    """Answers every assistant message with a user turn until the turn budget ends the episode (so every episode is
    multi-turn and carries environment tokens); the reward of a turn is its length in characters."""

    def start(self, row):
        return [{"role": "user", "content": row["prompt"]}]

    def respond(self, message):
        return EnvStep([{"role": "user", "content": "Say more."}], reward=float(len(message)))


def grpo(**kwargs) -> GRPO:
    kwargs.setdefault("reward_model", None if "environment" in kwargs else LengthReward())
    return GRPO(num_samples=2, learning_rate=1e-2, warmup_ratio=0.0, sampling=SamplingConfig(max_new_tokens=4),
                policy=PolicyWithReference(reference="none"), **kwargs)


class Recorder(L.Callback):
    """What each update trained on: (first prompt index of the batch, sampled version, trained-at version)."""

    def __init__(self) -> None:
        self.trained = []

    def on_train_start(self, trainer, module):
        train_on = module.train_on

        def recorded(batch, rollout):
            self.trained.append((int(batch["index"][0]), rollout.version, module.global_step))
            return train_on(batch, rollout)

        module.train_on = recorded


def fit(module, max_steps: int, callbacks=(), **kwargs) -> L.Trainer:
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks),
                        enable_checkpointing=bool(kwargs.pop("checkpointing", False)), **kwargs)
    trainer.fit(module, datamodule=make_data())
    return trainer


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.policy.policy.state_dict().items()}


class Synchronous(GRPO):
    """The synchronous loop written out: sample in the step, then update (no sampling loop)."""

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        with self._held.arm(True):
            exp = self.make_experience(batch)
        for rows in self.mini_batch_rows(exp):
            with self._held.for_rows(rows):
                loss, _ = self.experience_loss(exp.rows(rows))
            self.manual_backward(loss)
            self.clip_and_log_gradients(optimizer, self.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.lr_schedulers().step()


def test_max_staleness_zero_is_the_synchronous_loop_bit_for_bit():
    results = []
    for cls in (Synchronous, GRPO):
        L.seed_everything(0)
        module = grpo() if cls is GRPO else Synchronous(num_samples=2, learning_rate=1e-2, warmup_ratio=0.0,
                                                        sampling=SamplingConfig(max_new_tokens=4),
                                                        policy=PolicyWithReference(reference="none"),
                                                        reward_model=LengthReward())
        sampled = []
        generate = module.policy.generate
        module.policy.generate = lambda *a, **k: sampled.append(generate(*a, **k)) or sampled[-1]
        fit(module, max_steps=3)
        results.append(([s.input_ids for s in sampled], weights(module)))
    (ids_sync, w_sync), (ids, w) = results
    assert len(ids) == 3 and all(torch.equal(a, b) for a, b in zip(ids_sync, ids))
    assert all(torch.equal(w_sync[k], w[k]) for k in w)


def test_asynchronous_rollouts_carry_their_versions_within_the_bound():
    """One epoch of 8 batches: each trained on once (the last two in the epoch's last step), one version late."""
    recorder = Recorder()
    L.seed_everything(0)
    module = grpo(max_staleness=1)
    fit(module, max_steps=-1, max_epochs=1, callbacks=[recorder])
    indices = [i for i, _, _ in recorder.trained]
    assert len(indices) == 8 and len(set(indices)) == 8 and module.global_step == 8
    staleness = [at - v for _, v, at in recorder.trained]
    assert staleness[0] == 0 and set(staleness) <= {0, 1}  # the first batch waits for its rollout; none older than 1
    assert staleness.count(1) >= 4  # sampled one version ahead while the trainer updated (all 7 unless starved)
    assert module.sampling_loop.source is None  # the worker stopped with the fit


@pytest.mark.extended
def test_asynchronous_resume_neither_loses_nor_replays(run_dir):
    """A run checkpointed after 2 updates and resumed to 5 trains on the batches an uninterrupted run does."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_align.runs.checkpoint_io import AtomicCheckpointIO

    def run(max_steps, ckpt_path=None, checkpoint=None):
        recorder = Recorder()
        L.seed_everything(0)
        module = grpo(max_staleness=1)
        trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0,
                            callbacks=[recorder] + ([checkpoint] if checkpoint else []),
                            enable_checkpointing=checkpoint is not None, default_root_dir=str(run_dir),
                            plugins=[AtomicCheckpointIO()])  # the CLI's: lit-align's settings load
        trainer.fit(module, datamodule=make_data(), ckpt_path=ckpt_path)
        return [i for i, _, _ in recorder.trained]

    whole = run(5)
    saver = ModelCheckpoint(dirpath=run_dir / "ckpt", every_n_train_steps=2, save_top_k=-1)
    first = run(5, checkpoint=saver)
    assert first == whole
    ckpt = torch.load(run_dir / "ckpt" / "epoch=0-step=2.ckpt", weights_only=False)
    assert len(ckpt["rollouts"]["pending"]) >= 1  # a batch sampled ahead, not trained on: kept for the resume
    resumed = run(5, ckpt_path=str(run_dir / "ckpt" / "epoch=0-step=2.ckpt"))
    assert first[:2] + resumed == whole


def test_environment_tokens_are_in_no_loss_of_the_objective():
    """The gradient reaching the logits that predict environment tokens is exactly 0; the experience's log-probs and
    lengths count the policy's tokens only."""
    L.seed_everything(0)
    module = grpo(environment=Chatty(max_turns=3, max_tokens=12), beta=0.0)
    module.policy.fast_paths.allows = lambda role, path: False  # the plain head: logits at every position
    data = make_data()
    data._tokenizer = module.tokenizer
    data.setup("fit")
    batch = data.collator()(data.train_examples[:2])
    exp = module.make_experience(batch)
    rollout = exp.rollout
    assert rollout.turns.tolist() == [3] * 4 and rollout.ended.tolist() == [False] * 4  # the turn budget ends it
    assert exp.scores.unique().numel() > 1  # the returns differ: the advantages, and the loss, are not 0
    env_tokens = (rollout.completion_mask - rollout.policy_mask)[:, 1:].bool()  # (N, T-1)
    assert env_tokens.any() and torch.equal(exp.response_mask, rollout.policy_mask[:, 1:].bool())
    assert (exp.old_logps[env_tokens] == 0).all()
    captured = []
    head = module.policy.base_model.lm_head

    def capture(mod, inp, out):
        out.retain_grad()
        captured.append(out)

    hook = head.register_forward_hook(capture)
    try:
        loss, _ = module.experience_loss(exp)
        loss = loss + 0 * sum(c.sum() for c in captured)  # every captured output in the graph
        loss.backward()
    finally:
        hook.remove()
    (logits,) = [c for c in captured if c.shape[:2] == rollout.input_ids.shape]
    grad = logits.grad[:, :-1].abs().amax(-1)  # (N, T-1): position t predicts token t + 1
    assert (grad[env_tokens] == 0).all() and (grad[exp.response_mask] > 0).any()


@pytest.mark.parametrize("cls", [RLHF, ReverseKL, REBEL, PreferenceDistillation, OnlineDPO])
def test_objectives_without_episodes_refuse_an_environment(cls):
    with pytest.raises(UserError, match=f"{cls.__name__} does not train on environment episodes: .* use GRPO"):
        cls(environment=CalculatorEnvironment(), policy=PolicyWithReference(reference="copy"))


def test_an_environment_and_a_reward_model_are_refused_together():
    with pytest.raises(UserError, match="the environment's rewards score its episodes"):
        grpo(environment=CalculatorEnvironment(), reward_model=LengthReward())
    assert issubclass(GRPO, OnPolicyObjective) and GRPO.episodes_refusal is None and RLOO.episodes_refusal is None


@pytest.mark.extended
@pytest.mark.parametrize("config", ["onpolicy/grpo_calculator.yaml", "onpolicy/rloo_calculator.yaml"])
def test_calculator_environment_trains_from_its_config(run_dir, config):
    assert run_main(fit_args(config, "--model.init_args.max_staleness=1", steps=3)) == 0


def test_the_worker_samples_from_a_generation_copy_refreshed_from_the_trained_weights():
    import threading

    from lit_align.objectives.onpolicy.sampling_loop import GenerationCopy

    policy = PolicyWithReference(reference="none")
    gen = GenerationCopy(policy)
    trained = next(policy.policy.parameters())
    with torch.no_grad():
        trained.add_(1.0)  # an optimizer step
    assert not torch.equal(next(gen.model.parameters()), trained)
    gen.refresh()
    assert torch.equal(next(gen.model.parameters()), trained) and next(gen.model.parameters()) is not trained
    seen = {}

    def worker():
        gen.activate()
        seen["worker"] = gen.current(policy)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["worker"].policy is gen.model and seen["worker"].tokenizer is not policy.tokenizer
    assert gen.current(policy) is policy  # the trainer's thread never sees the copy

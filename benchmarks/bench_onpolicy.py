"""On-policy throughput of lit-align against TRL's RLOOTrainer and GRPOTrainer: same models, prompts, lengths,
sampling, precision and number of updates per batch of prompts.

    pip install -e ".[bench]"
    OMP_NUM_THREADS=1 python benchmarks/bench_onpolicy.py                   # all rows, 2 processes per framework
    OMP_NUM_THREADS=1 python benchmarks/bench_onpolicy.py --repeats 1       # one process per framework and row
    python benchmarks/bench_onpolicy.py --batches 3 --warmup 1 --repeats 1  # smoke run
    python benchmarks/bench_onpolicy.py --pairs distill --breakdown         # per-phase times of one worker each
    python benchmarks/bench_onpolicy.py --pairs rebel --max-staleness 0 1   # lit-align, synchronous vs asynchronous
    python benchmarks/bench_onpolicy.py --pairs rlhf --micro-batches 2      # lit-align's updates in two groups

Rows (lit-align objective vs TRL trainer, optimizer updates per batch of prompts):

- ``rlhf``: ``RLHF(epochs_per_batch=1)`` (PPO with a value head on the policy) vs ``RLOOTrainer(num_iterations=1)``:
  1 update.
- ``rebel``: ``REBEL(epochs_per_batch=1)`` vs ``RLOOTrainer(num_iterations=1)``: 1 update.
- ``distill``: ``PreferenceDistillation(epochs_per_batch=4)`` vs ``GRPOTrainer(num_iterations=4)``: 4 updates on
  one generation. GRPO's default ``beta`` is 0 (no reference model); it runs here at ``beta=0.05``, the KL weight
  distillation shapes its rewards with, so both sides hold and run a live reference.

TRL 1.16 ships no ``PPOTrainer`` (neither in ``trl`` nor ``trl.experimental``), so there is no PPO row.

Both sides: the random-init Llama of ``bench_dpo.build_model`` (hidden 256, 4 layers, the embedded 474-token
tokenizer) as policy and reference, a random-init ``LlamaForSequenceClassification`` (one label) of the same shape
as reward model, a jsonl of ~32-token prompts, 16 prompts per batch with 2 samples each, exactly 32 new tokens
(min = max new tokens; lit-align ``missing_eos_penalty=None``), temperature 1, float32 on CPU, AdamW at a constant
1e-5, gradient clipping at norm 1, logging every 10 steps (lit-align's CSV logger, TRL ``logging_steps=10``,
``report_to=[]``), no progress bar, checkpoint, model summary or validation, gradient checkpointing off (TRL's
on-policy configs turn it on by default), dropout off.

Each measurement is a fresh process (``--worker lit|trl``, frameworks alternating so drift in machine speed hits
both alike) that runs ``--warmup`` batches of prompts untimed and ``--batches - --warmup`` timed; a batch is timed
from the end of the previous batch's last optimizer step to the end of its own, so it covers data, generation,
scoring, the no-grad forwards, every update and logging. Generation time is that of the objective's
``sample_responses`` (lit-align: ``PolicyWithReference.generate``, on the rollout worker thread when asynchronous)
and ``_generate_single_turn`` (TRL: the padded ``model.generate`` call and cutting at EOS). Memory is the process's
peak RSS, its RSS after the imports and the growth from just before training to the peak. ``--breakdown`` also times
each phase of a batch (generation, reward scoring, the no-grad policy and reference log-prob forwards, the rest of
making the experience, the update forwards with their loss, backward, gradient-norm clipping, optimizer step,
everything else) and prints medians to stderr.

``--max-staleness 0 1`` measures lit-align alone, once per value (0: the synchronous loop; 1: the next batch sampled
on a worker thread while the trainer updates, docs/onpolicy.md): the batch time, and separately the generation
seconds and the update seconds (``train_on``: scoring, the no-grad forwards and the optimizer updates) per batch,
with the load average around each process. On a machine where the two can run side by side, the asynchronous batch
approaches ``max(generation, update)`` instead of their sum.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dpo import WORDS, build_model, current_rss_mb

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

PROMPTS_PER_BATCH = 16
SAMPLES_PER_PROMPT = 2
NEW_TOKENS = 32
PROMPT_TOKENS = 32
TEMPERATURE = 1.0
LEARNING_RATE = 1e-5
KL_COEF = 0.05
LOG_EVERY = 10
#: optimizer updates per batch of prompts, by row
UPDATES = {"rlhf": 1, "rebel": 1, "distill": 4}
#: a parameter whose change shows that training moved the policy
WATCHED = "model.layers.0.self_attn.q_proj.weight"
PHASES = ("generate", "reward", "nograd_policy", "nograd_reference", "experience_other", "update_forward_loss",
          "backward", "clip_grad_norm", "optimizer_step", "other")


def build_reward_model(directory: Path, policy_dir: Path) -> None:
    """A random-init one-label sequence classifier of the policy's shape, saved with the same tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    config = AutoConfig.from_pretrained(policy_dir)
    config.update({"num_labels": 1, "pad_token_id": tokenizer.pad_token_id})
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def build_prompts(path: Path, rows: int, tokenizer_dir: Path) -> float:
    """Prompts of about PROMPT_TOKENS tokens; returns their mean length in tokens."""
    import random

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rng = random.Random(0)
    lengths = []
    with open(path, "w") as f:
        for _ in range(rows):
            words = []
            while len(tokenizer(" ".join(words), add_special_tokens=False).input_ids) < PROMPT_TOKENS:
                words.append(rng.choice(WORDS))
            text = " ".join(words)
            lengths.append(len(tokenizer(text, add_special_tokens=False).input_ids))
            f.write(json.dumps({"prompt": text}) + "\n")
    return statistics.mean(lengths)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- timing ------------------------------------------------------------------------------------------------------


class BatchClock:
    """End time of every batch of prompts, its generation seconds and (with a breakdown) its phase seconds."""

    def __init__(self, breakdown: bool) -> None:
        self.breakdown = breakdown
        self.ends: list[float] = []
        self.phases: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.prompt_tokens: list[float] = []
        self._lock = threading.Lock()  # a rollout worker thread adds its generation time too

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.current[phase] = self.current.get(phase, 0.0) + seconds

    def timed(self, phase, fn):
        """``fn`` wrapped so that its time goes to ``phase`` (a name, or a function of the call's arguments)."""

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(phase(*args, **kwargs) if callable(phase) else phase, time.perf_counter() - start)

        return wrapper

    def tick(self) -> None:
        with self._lock:
            self.ends.append(time.perf_counter())
            self.phases.append(self.current)
            self.current = {}

    def summary(self, warmup: int, rss_imports: float, rss_train_start: float, param_change: float) -> dict:
        times = [b - a for a, b in zip(self.ends[warmup - 1 :], self.ends[warmup:])]
        phases = self.phases[warmup:]
        out = {
            "batch_time": statistics.median(times),
            "batches": len(times),
            "generation_share": statistics.median(p.get("generate", 0.0) / t for p, t in zip(phases, times)),
            "generate_s": statistics.median(p.get("generate", 0.0) for p in phases),
            "update_s": statistics.median(p.get("update", 0.0) for p in phases),
            "peak_memory_mb": peak_rss_mb(),
            "rss_after_imports_mb": rss_imports,
            "rss_growth_mb": peak_rss_mb() - rss_train_start,
            "prompt_tokens": statistics.mean(self.prompt_tokens) if self.prompt_tokens else 0.0,
            "param_change": param_change,
        }
        if self.breakdown:
            split = {}
            for phase in PHASES[:-1]:
                split[phase] = statistics.median(p.get(phase, 0.0) for p in phases)
            split["other"] = statistics.median(
                t - sum(p.get(k, 0.0) for k in PHASES[:-1] if not k.startswith("_")) for p, t in zip(phases, times))
            split["of_which_update_forward"] = statistics.median(p.get("_update_forward", 0.0) for p in phases)
            out["breakdown"] = split
        return out


# -- workers: one framework, one row, one process ----------------------------------------------------------------


def run_lit_align(args) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from lit_align.data import PromptDataModule
    from lit_align.objectives import REBEL, RLHF, PreferenceDistillation
    from lit_align.policy.with_reference import PolicyWithReference
    from lit_align.generation.rollout import SamplingConfig
    from lit_align.rewards.dispatch import RetokenizedReward

    rss_imports = current_rss_mb()
    clock = BatchClock(args.breakdown)
    policy = PolicyWithReference(model=args.model, reference="copy", dtype="float32")
    sampling = SamplingConfig(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, temperature=TEMPERATURE)
    common = {"policy": policy, "reward_model": args.reward_model, "sampling": sampling,
              "num_samples": SAMPLES_PER_PROMPT, "missing_eos_penalty": None, "learning_rate": LEARNING_RATE,
              "lr_schedule": "constant", "warmup_ratio": 0.0, "max_grad_norm": 1.0,
              "max_staleness": args.max_staleness[0] if args.max_staleness else 0,
              "micro_batches": args.micro_batches}
    if args.pair == "rlhf":
        module = RLHF(epochs_per_batch=1, kl_coef=KL_COEF, **common)
    elif args.pair == "rebel":
        module = REBEL(epochs_per_batch=1, kl_coef=KL_COEF, **common)
    else:
        module = PreferenceDistillation(epochs_per_batch=UPDATES["distill"], beta=KL_COEF, **common)
    if isinstance(module.reward, RetokenizedReward):
        raise RuntimeError("the reward model should read the policy's ids as they are (same tokenizer)")
    data = PromptDataModule(path=args.data, batch_size=PROMPTS_PER_BATCH, max_length=2 * PROMPT_TOKENS + NEW_TOKENS,
                            max_prompt_length=2 * PROMPT_TOKENS, val_fraction=0.0, seed=0)

    sample_responses = module.sample_responses  # PolicyWithReference.generate, on the rollout worker if any

    def timed_generate(batch):
        clock.prompt_tokens.append(float(batch["prompt_mask"].sum(-1).float().mean()))
        return sample_responses(batch)

    module.sample_responses = clock.timed("generate", timed_generate)
    module.train_on = clock.timed("update", module.train_on)  # scoring, no-grad forwards and the updates
    if args.breakdown:
        def scoring_phase(*a, **kw):
            reference = kw.get("reference", a[4] if len(a) > 4 else False)
            if torch.is_grad_enabled():
                return "_update_forward"  # part of update_forward_loss, not counted twice
            return "nograd_reference" if reference else "nograd_policy"

        def packed_phase(*a, **kw):  # packed_scores(packed, width, temperature, reference, ...)
            return scoring_phase(*a[:1], None, None, None, kw.get("reference", a[3] if len(a) > 3 else False))

        policy.completion_scores = clock.timed(scoring_phase, policy.completion_scores)
        policy.packed_scores = clock.timed(packed_phase, policy.packed_scores)
        module.score = clock.timed("reward", module.score)
        module.make_experience = clock.timed("_make_experience", module.make_experience)
        module.experience_loss = clock.timed("update_forward_loss", module.experience_loss)
        module.manual_backward = clock.timed("backward", module.manual_backward)
        module.clip_and_log_gradients = clock.timed("clip_grad_norm", module.clip_and_log_gradients)

    watched = dict(policy.policy.named_parameters())[WATCHED]
    before = watched.detach().clone()
    rss_train_start = [0.0]

    class Timer(L.Callback):
        def on_train_start(self, trainer, module):
            rss_train_start[0] = current_rss_mb()
            if args.breakdown:
                optimizer = module.optimizers()
                optimizer.step = clock.timed("optimizer_step", optimizer.step)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            clock.tick()

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=args.batches * UPDATES[args.pair],
                        logger=CSVLogger(args.workdir, name=f"lit_{args.pair}"), log_every_n_steps=LOG_EVERY,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Timer()], precision="32-true")
    trainer.fit(module, data)
    # an asynchronous run's first step only submits its batch: one step more than batches trained on
    if len(clock.ends) != args.batches + (module.max_staleness > 0):
        raise RuntimeError(f"lit-align ran {len(clock.ends)} batches, expected {args.batches}")
    finish_breakdown(clock, generation_inside=False)  # the sampling loop draws before make_experience
    change = float((watched.detach() - before).abs().max())
    return clock.summary(args.warmup, rss_imports, rss_train_start[0], change)


def finish_breakdown(clock: BatchClock, generation_inside: bool = True) -> None:
    """Turn the totals of making the experience into its remainder after the parts timed inside it (generation
    among them where the framework generates inside that phase: TRL)."""
    if not clock.breakdown:
        return
    inside = ("generate",) * generation_inside + ("reward", "nograd_policy", "nograd_reference")
    for p in clock.phases:
        inner = sum(p.get(k, 0.0) for k in inside)
        p["experience_other"] = p.pop("_make_experience", 0.0) - inner
        if "_training_step" in p:  # TRL: backward is training_step minus its inputs and the loss
            p["backward"] = p.pop("_training_step") - p.pop("_prepare_inputs", 0.0) - p.get("update_forward_loss", 0)


def run_trl(args) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    rss_imports = current_rss_mb()
    clock = BatchClock(args.breakdown)
    updates = UPDATES[args.pair]
    grpo = args.pair == "distill"
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, dtype=torch.float32)
    reward_tokenizer = AutoTokenizer.from_pretrained(args.reward_model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = load_dataset("json", data_files=args.data, split="train")
    Config, Trainer = (GRPOConfig, GRPOTrainer) if grpo else (RLOOConfig, RLOOTrainer)
    config = Config(
        output_dir=os.path.join(args.workdir, f"trl_{args.pair}"),
        per_device_train_batch_size=PROMPTS_PER_BATCH * SAMPLES_PER_PROMPT,  # completions per update
        gradient_accumulation_steps=1,  # so steps_per_generation = 1: one generation feeds num_iterations updates
        num_generations=SAMPLES_PER_PROMPT, num_iterations=updates, beta=KL_COEF,
        max_completion_length=NEW_TOKENS, generation_kwargs={"min_new_tokens": NEW_TOKENS}, temperature=TEMPERATURE,
        max_steps=args.batches * updates, learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, logging_steps=LOG_EVERY, report_to=[], save_strategy="no", use_cpu=True, bf16=False,
        gradient_checkpointing=False, disable_dropout=True, dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    rss_train_start = [0.0]

    class Timer(TrainerCallback):
        def on_train_begin(self, targs, state, control, **kw):
            rss_train_start[0] = current_rss_mb()
            if args.breakdown:
                optimizer = kw["optimizer"]
                optimizer.step = clock.timed("optimizer_step", optimizer.step)

        def on_step_end(self, targs, state, control, **kw):
            if state.global_step % updates == 0:
                clock.tick()

    trainer = Trainer(model=args.model, reward_funcs=reward_model, args=config, train_dataset=dataset,
                      processing_class=tokenizer, reward_processing_classes=reward_tokenizer, callbacks=[Timer()])
    if trainer.args.steps_per_generation != 1 or (trainer.ref_model is None):
        raise RuntimeError("TRL must generate once per batch of prompts and hold a live reference")

    generate = trainer._generate_single_turn

    def timed_generate(prompt_ids, *a, **kw):
        clock.prompt_tokens.append(statistics.mean(len(p) for p in prompt_ids))
        return generate(prompt_ids, *a, **kw)

    trainer._generate_single_turn = clock.timed("generate", timed_generate)
    if args.breakdown:
        def logps_phase(model, *a, **kw):
            if torch.is_grad_enabled():
                return "_update_forward"
            return "nograd_reference" if model is trainer.ref_model else "nograd_policy"

        trainer._get_per_token_logps_and_entropies = clock.timed(logps_phase,
                                                                 trainer._get_per_token_logps_and_entropies)
        trainer._calculate_rewards = clock.timed("reward", trainer._calculate_rewards)
        trainer._generate_and_score_completions = clock.timed("_make_experience",
                                                              trainer._generate_and_score_completions)
        trainer._prepare_inputs = clock.timed("_prepare_inputs", trainer._prepare_inputs)
        trainer.compute_loss = clock.timed("update_forward_loss", trainer.compute_loss)
        trainer.training_step = clock.timed("_training_step", trainer.training_step)
        trainer._clip_grad_norm = clock.timed("clip_grad_norm", trainer._clip_grad_norm)

    watched = dict(trainer.model.named_parameters())[WATCHED]
    before = watched.detach().clone()
    trainer.train()
    if len(clock.ends) != args.batches:
        raise RuntimeError(f"TRL ran {len(clock.ends)} batches, expected {args.batches}")
    finish_breakdown(clock)
    change = float((watched.detach() - before).abs().max())
    return clock.summary(args.warmup, rss_imports, rss_train_start[0], change)


# -- driver ------------------------------------------------------------------------------------------------------


def measure(framework: str, pair: str, args, breakdown: bool = False, max_staleness: int = 0) -> dict:
    """One measurement in a fresh process, so peak memory is this framework's alone."""
    cmd = [sys.executable, __file__, "--worker", framework, "--pair", pair, "--model", args.model,
           "--reward-model", args.reward_model, "--data", args.data, "--workdir", args.workdir,
           "--batches", str(args.batches), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    cmd += ["--breakdown"] if breakdown else []
    cmd += ["--max-staleness", str(max_staleness)] if max_staleness else []
    cmd += ["--micro-batches", str(args.micro_batches)] if framework == "lit" and args.micro_batches > 1 else []
    env = dict(os.environ, HF_DATASETS_CACHE=tempfile.mkdtemp(dir=args.workdir))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{framework} {pair} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["param_change"] == 0:
        raise RuntimeError(f"{framework} {pair}: the policy did not change")
    return result


def median_of(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if k != "breakdown"]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {
        "batch_time_min": min(r["batch_time"] for r in runs), "batch_time_max": max(r["batch_time"] for r in runs)}


TRL_NAME = {"rlhf": "RLOO", "rebel": "RLOO", "distill": "GRPO x4"}
LIT_NAME = {"rlhf": "RLHF", "rebel": "REBEL", "distill": "PreferenceDistillation x4"}


def print_breakdown(pair: str, lit: dict, trl: dict) -> None:
    print(f"\n## breakdown of one batch: {pair} ({LIT_NAME[pair]} vs TRL {TRL_NAME[pair]}), median seconds\n")
    print("| phase | lit-align s | share | TRL s | share |")
    print("|---|---|---|---|---|")
    for phase in (*PHASES, "of_which_update_forward"):
        a, b = lit["breakdown"][phase], trl["breakdown"][phase]
        print(f"| {phase} | {a:.3f} | {a / lit['batch_time']:.0%} | {b:.3f} | {b / trl['batch_time']:.0%} |")
    print(f"| batch | {lit['batch_time']:.3f} | | {trl['batch_time']:.3f} | |", flush=True)


def compare_staleness(args) -> None:
    """lit-align alone, one row per pair and ``--max-staleness`` value (processes alternating between the values)."""
    print("| row | max_staleness | batch s (min-max) | generation s / batch | update s / batch | load average "
          "before / after |")
    print("|---|---|---|---|---|---|")
    for pair in args.pairs:
        runs: dict[int, list[dict]] = {value: [] for value in args.max_staleness}
        loads: dict[int, list[str]] = {value: [] for value in args.max_staleness}
        for _ in range(args.repeats):
            for value, measured in runs.items():
                before = os.getloadavg()[0]
                measured.append(measure("lit", pair, args, max_staleness=value))
                loads[value].append(f"{before:.1f} / {os.getloadavg()[0]:.1f}")
        for value, measured in runs.items():
            row = median_of(measured)
            print(f"| {pair} | {value} | {row['batch_time']:.3f} ({row['batch_time_min']:.3f}-"
                  f"{row['batch_time_max']:.3f}) | {row['generate_s']:.3f} | {row['update_s']:.3f} | "
                  f"{', '.join(loads[value])} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=list(UPDATES), choices=list(UPDATES), help="rows of the table")
    parser.add_argument("--repeats", type=int, default=2, help="processes per framework and row (medians reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=10, help="batches of prompts per process, warm-up included")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches at the start")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--breakdown", action="store_true",
                        help="per-phase times; in the driver: one extra worker per framework and row, printed")
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--max-staleness", type=int, nargs="+",
                        help="lit-align alone: one row per value of its max_staleness (0 = synchronous), with the "
                             "generation and update seconds of a batch")
    parser.add_argument("--micro-batches", type=int, default=1,
                        help="lit-align's micro_batches (each update's forward and backward in this many groups)")
    parser.add_argument("--worker", choices=["lit", "trl"])
    parser.add_argument("--pair", choices=list(UPDATES))
    parser.add_argument("--model")
    parser.add_argument("--reward-model")
    parser.add_argument("--data")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    if not 1 <= args.warmup < args.batches:
        parser.error("need 1 <= --warmup < --batches")

    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        result = (run_lit_align if args.worker == "lit" else run_trl)(args)
        if args.breakdown:
            print(json.dumps({"breakdown": result["breakdown"], "batch_time": result["batch_time"]}), file=sys.stderr)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        args.model = os.path.join(workdir, "policy")
        args.reward_model = os.path.join(workdir, "reward")
        args.data = os.path.join(workdir, "prompts.jsonl")
        build_model(Path(args.model), args.hidden, args.layers)
        build_reward_model(Path(args.reward_model), Path(args.model))
        prompt_tokens = build_prompts(Path(args.data), max(512, PROMPTS_PER_BATCH * args.batches), Path(args.model))
        if args.max_staleness:
            print(f"# On-policy, synchronous vs asynchronous generation (lit-align; CPU, {args.threads} thread(s); "
                  f"Llama hidden {args.hidden}, {args.layers} layers; {PROMPTS_PER_BATCH} prompts x "
                  f"{SAMPLES_PER_PROMPT} samples x {NEW_TOKENS} new tokens per batch; {args.warmup} warm-up + "
                  f"{args.batches - args.warmup} timed batches; median of {args.repeats} process(es))\n")
            compare_staleness(args)
            return
        print(f"# On-policy: lit-align vs TRL (CPU, {args.threads} thread(s); Llama hidden {args.hidden}, "
              f"{args.layers} layers, vocabulary 474, float32; {PROMPTS_PER_BATCH} prompts of ~{prompt_tokens:.0f} "
              f"tokens x {SAMPLES_PER_PROMPT} samples x {NEW_TOKENS} new tokens per batch; {args.warmup} warm-up + "
              f"{args.batches - args.warmup} timed batches; median of {args.repeats} process(es) each"
              + (f"; lit-align micro_batches {args.micro_batches}" if args.micro_batches > 1 else "") + ")\n")
        print("| row | lit-align | TRL | updates/batch | lit-align batch s (min-max) | TRL batch s (min-max) | lit/TRL "
              "| generation share lit / TRL | lit-align peak MB | TRL peak MB | peak lit/TRL | RSS growth MB lit / TRL "
              "| RSS after imports MB lit / TRL |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        everything = []
        for pair in args.pairs:
            runs = {"lit": [], "trl": []}
            for _ in range(args.repeats):  # alternate, so drift in machine speed hits both alike
                for framework, measured in runs.items():
                    measured.append(measure(framework, pair, args))
            lit, trl = median_of(runs["lit"]), median_of(runs["trl"])
            everything.append({"pair": pair, **runs})
            print(f"| {pair} | {LIT_NAME[pair]} | {TRL_NAME[pair]} | {UPDATES[pair]} | {lit['batch_time']:.3f} "
                  f"({lit['batch_time_min']:.3f}-{lit['batch_time_max']:.3f}) | {trl['batch_time']:.3f} "
                  f"({trl['batch_time_min']:.3f}-{trl['batch_time_max']:.3f}) | "
                  f"{lit['batch_time'] / trl['batch_time']:.2f}x | {lit['generation_share']:.0%} / "
                  f"{trl['generation_share']:.0%} | {lit['peak_memory_mb']:.0f} | {trl['peak_memory_mb']:.0f} | "
                  f"{lit['peak_memory_mb'] / trl['peak_memory_mb']:.2f}x | {lit['rss_growth_mb']:.0f} / "
                  f"{trl['rss_growth_mb']:.0f} | {lit['rss_after_imports_mb']:.0f} / "
                  f"{trl['rss_after_imports_mb']:.0f} |", flush=True)
        if args.breakdown:
            for pair in args.pairs:
                lit, trl = measure("lit", pair, args, breakdown=True), measure("trl", pair, args, breakdown=True)
                everything.append({"pair": pair, "breakdown": {"lit": lit, "trl": trl}})
                print_breakdown(pair, lit, trl)
        if args.json:
            Path(args.json).write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()

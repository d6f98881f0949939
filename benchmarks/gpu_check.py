"""One-GPU check of lit-align in under 8 minutes: DPO speed and MFU at Pythia-1.4B size, the largest batch that fits
at a 151,936-entry vocabulary (lit-align against TRL), FSDP2 on one GPU, and the GPU-marked tests.

Install on a machine that already has a CUDA build of torch (torch is kept: ``torch>=2.4`` is satisfied)::

    pip install -e . pytest          # lightning, transformers, torchmetrics, datasets, jsonargparse, peft, ...
    pip install trl==1.16.0          # optional: part (b) compares against TRL's DPOTrainer (else lit-align alone)

    python benchmarks/gpu_check.py                  # writes gpu_check.json and gpu_check.md to --out
    python benchmarks/gpu_check.py --dry-run        # CPU, tiny sizes, the same code path (about a minute)
    python benchmarks/gpu_check.py --only dpo_mfu   # one part

Parts (each in its own process with its own time limit; one failing does not stop the others):

(a) ``dpo_mfu``: DPO through ``lit_align.objectives.DPO`` and a Lightning ``Trainer`` (``bf16-true``) on a
    GPTNeoX of Pythia-1.4B's shape (random weights built from the config), a live reference copy; tokens/s, MFU
    and peak memory from ``ThroughputMonitor`` over the last of three measuring intervals (the first holds the
    warm-up). The monitor counts every non-padding token of both sequences of a pair; with prompt sharing (DPO's
    default) the prompt runs once, so ``mfu_prompt_once`` restates MFU on the tokens actually run.
(b) ``max_batch``: the largest batch of pairs whose two training steps fit, for lit-align and for TRL (a Llama of
    hidden 256 with 151,936 vocabulary entries, ~256-token sequences, gradient checkpointing in both), found by
    doubling then bisecting in one process per framework (an out-of-memory try is freed and the search goes on,
    as ``transformers``' ``auto_find_batch_size`` does); each try has its own time cap. The two steps are
    ``bench_dpo.py``'s workers, so the work is the same as that benchmark's.
(c) ``fsdp2``: ``lit-align fit --config dpo --config strategy/fsdp2.yaml`` on one device for a few steps.
(d) ``gpu_tests``: ``pytest -m gpu`` over the test files that hold GPU-marked tests.

Without a GPU, ``--dry-run`` runs the same parts at tiny sizes on the CPU (MFU against a nominal 1 TFLOP/s peak).
"""

from __future__ import annotations

import argparse
import csv
import gc
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

PARTS = ("dpo_mfu", "max_batch", "fsdp2", "gpu_tests")
# Pythia-1.4B (EleutherAI/pythia-1.4b's config.json); the dry run keeps the architecture at tiny sizes.
PYTHIA_1_4B = {"vocab_size": 50304, "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16,
               "intermediate_size": 8192, "max_position_embeddings": 2048, "rotary_pct": 0.25,
               "use_parallel_residual": True, "tie_word_embeddings": False}
TINY_NEOX = PYTHIA_1_4B | {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "intermediate_size": 256}
# Sizes of each part: on the GPU, and in the dry run. Time caps in seconds (the whole stays under --budget).
SIZES = {
    False: {"neox": PYTHIA_1_4B, "dpo_batch": 8, "dpo_seq": 1024, "log_every": 15, "dpo_steps": 45,
            "peak_flops": None, "vocab": 151936, "hidden": 256, "layers": 4, "search_seq": 256, "search_start": 8,
            "search_cap": 4096, "try_cap": 60,
            "fsdp2_steps": 5,
            "caps": {"dpo_mfu": 150, "max_batch_lit": 80, "max_batch_trl": 80, "fsdp2": 60, "gpu_tests": 60}},
    True: {"neox": TINY_NEOX, "dpo_batch": 2, "dpo_seq": 64, "log_every": 1, "dpo_steps": 2, "peak_flops": 1e12,
           "vocab": 1024, "hidden": 64, "layers": 1, "search_seq": 32, "search_start": 1, "search_cap": 2,
           "try_cap": 60,
           "fsdp2_steps": 2,
           "caps": {"dpo_mfu": 120, "max_batch_lit": 120, "max_batch_trl": 120, "fsdp2": 120, "gpu_tests": 120}},
}


# -- workers: each runs in its own process and writes its result as JSON ---------------------------------------


def write_json(path: str, result: dict) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def build_neox(directory: Path, config: dict, device: str) -> int:
    """A random-init GPTNeoX of ``config`` in bf16 with the embedded tokenizer, saved to ``directory``; its size."""
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    from lit_align.models.loading import load_tokenizer

    torch.manual_seed(0)
    with torch.device(device):  # initialising 1.4B weights is seconds on the GPU, a minute on the CPU
        model = AutoModelForCausalLM.from_config(GPTNeoXConfig(**config), dtype=torch.bfloat16)
    model.save_pretrained(directory)
    load_tokenizer("tiny").save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def worker_dpo_mfu(args, sizes: dict) -> dict:
    """Part (a): DPO steps through lit-align's objective and Trainer; ThroughputMonitor's last interval."""
    import lightning as L
    import torch

    from bench_dpo import build_data
    from lit_align.callbacks import ThroughputMonitor
    from lit_align.data import PreferenceDataModule
    from lit_align.models.fast_path import PACKING
    from lit_align.objectives import DPO
    from lit_align.policy.with_reference import PolicyWithReference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir, data = Path(args.workdir) / "neox", Path(args.workdir) / "pairs.jsonl"
    n_params = build_neox(model_dir, sizes["neox"], device)
    steps, batch, seq = sizes["dpo_steps"], sizes["dpo_batch"], sizes["dpo_seq"]
    build_data(data, rows=batch * (steps + 1), seq_len=seq)
    policy = PolicyWithReference(model=str(model_dir), reference="copy", dtype="bfloat16")
    module = DPO(beta=0.1, policy=policy, learning_rate=1e-5, lr_schedule="constant", warmup_ratio=0.0)
    datamodule = PreferenceDataModule(path=str(data), batch_size=batch, max_length=seq, max_prompt_length=seq // 2,
                                      val_fraction=0.0, seed=0)
    tokens = token_counter()
    trainer = L.Trainer(accelerator="auto", devices=1, precision="bf16-true", max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, gradient_clip_val=1.0,
                        callbacks=[ThroughputMonitor(sizes["log_every"], peak_flops=sizes["peak_flops"]), tokens])
    trainer.fit(module, datamodule)
    perf = {k.removeprefix("perf/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("perf/")}
    verdicts = policy.fast_paths.verdicts  # what the first batch decided: the chunked head, prompt packing
    packed = module.share_prompt and all(v.kept for (_, path), v in verdicts.items() if path == PACKING)
    result = {"params": n_params, "batch_pairs": batch, "seq_len": seq, "steps": trainer.global_step,
              "share_prompt": packed, "fast_paths": {f"{role}/{path}": v.kept for (role, path), v in verdicts.items()},
              "fast_path_lines": policy.fast_paths.lines, "device": device_name(), **perf}
    if "mfu" in perf:
        result["mfu_prompt_once"] = perf["mfu"] * (tokens.run_fraction() if packed else 1.0)
    if sizes["peak_flops"]:
        result["note"] = f"MFU against a nominal peak of {sizes['peak_flops']:.0e} FLOP/s (dry run)"
    return result


def token_counter():
    """A callback counting the tokens the monitor counts (every non-padding token) and the tokens run once each
    pair's prompt is shared (prompt once, both completions)."""
    import lightning as L

    class TokenCounter(L.Callback):
        def __init__(self) -> None:
            self.counted = self.prompt_once = 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            mask, completion = batch["attention_mask"], batch["completion_mask"]  # (2B, T): chosen and rejected rows
            self.counted += int(mask.sum())
            self.prompt_once += int(mask.sum()) - int((mask - completion).sum()) // 2

        def run_fraction(self) -> float:
            return self.prompt_once / self.counted if self.counted else 1.0

    return TokenCounter()


def worker_max_batch(args, sizes: dict) -> dict:
    """Part (b), one framework: doubling then bisection over the batch size; every try recorded as it ends."""
    import torch

    from bench_dpo import build_data, build_model

    if args.framework == "trl":
        try:
            import trl
        except ImportError:
            return {"status": "skipped", "note": "not installed (pip install trl==1.16.0): lit-align measured alone"}
        version = trl.__version__
    else:
        version = None
    model_dir = Path(args.workdir) / f"llama_{args.framework}"
    build_model(model_dir, sizes["hidden"], sizes["layers"], sizes["vocab"])
    result = {"framework": args.framework, "trl_version": version, "vocab": sizes["vocab"], "hidden": sizes["hidden"],
              "seq_len": sizes["search_seq"], "cap": sizes["search_cap"], "tries": [], "device": device_name()}

    def attempt(batch: int) -> bool:
        outcome = try_batch(args, sizes, model_dir, batch, build_data, torch)
        result["tries"].append(outcome)
        write_json(args.result, result | bracket(result["tries"]) | {"partial": True})  # kept if the part is killed
        return outcome["fits"]

    search(attempt, sizes["search_start"], sizes["search_cap"], deadline=args.deadline)
    result.update(bracket(result["tries"]))
    if result["smallest_fail"] is None and result["largest_fit"] < sizes["search_cap"]:
        result["note"] = f"time ran out: at least {result['largest_fit']} pairs fit"
    return result


def bracket(tries: list[dict]) -> dict:
    """The largest batch that fitted (with its peak memory) and the smallest that did not, of the tries so far."""
    fitted = [t for t in tries if t["fits"]]
    largest = max(fitted, key=lambda t: t["batch"], default={"batch": 0})
    failed = [t["batch"] for t in tries if not t["fits"] and t["batch"] > largest["batch"]]
    return {"largest_fit": largest["batch"], "smallest_fail": min(failed, default=None),
            "peak_memory_mb": largest.get("peak_memory_mb")}


def search(fits, start: int, cap: int, deadline: float, resolution: float = 1.125) -> tuple[int, int | None]:
    """Largest n <= cap with fits(n): doubling from ``start``, then bisection until the bracket is within
    ``resolution`` (or time runs out). Returns (largest that fitted or 0, smallest that did not or None)."""
    good, bad, n = 0, None, start
    last = 0.0  # seconds of the last try that fitted: the next one takes at least as long
    while n <= cap and time.time() + 2 * last < deadline:
        began = time.time()
        if not fits(n):
            bad = n
            break
        good, last = n, time.time() - began
        n = cap if n < cap < 2 * n else 2 * n
    while bad is not None and bad - good > 1 and bad > good * resolution and time.time() + 2 * last < deadline:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good, bad


class TryTimeout(Exception):
    """A try ran past its time cap."""


def try_batch(args, sizes: dict, model_dir: Path, batch: int, build_data, torch) -> dict:
    """Two DPO steps (one warm-up, one timed) at ``batch`` pairs through bench_dpo's worker for the framework."""
    import bench_dpo

    workdir = tempfile.mkdtemp(dir=args.workdir)
    data = Path(workdir) / "pairs.jsonl"
    build_data(data, rows=batch * 3, seq_len=sizes["search_seq"])
    run = bench_dpo.run_lit_align if args.framework == "lit" else bench_dpo.run_trl
    options = argparse.Namespace(model=str(model_dir), reference="live", dtype="bfloat16", workdir=workdir,
                                 no_share_prompt=False, data=str(data), batch_size=batch,
                                 max_length=2 * sizes["search_seq"], warmup=1, steps=1, checkpointing="both")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    outcome = {"batch": batch}

    def on_alarm(signum, frame):
        raise TryTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(sizes["try_cap"])
    try:
        summary = run(options)
        outcome.update(fits=True, step_time=summary["step_time"], peak_memory_mb=summary["peak_memory_mb"])
    except TryTimeout:
        outcome.update(fits=False, error=f"over the {sizes['try_cap']} s cap of one try")
    except Exception as err:  # noqa: BLE001 - out of memory, or anything else: this size does not run
        outcome.update(fits=False, error=f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    outcome["wall_s"] = round(time.perf_counter() - start, 2)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    shutil.rmtree(workdir, ignore_errors=True)
    return outcome


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"


WORKERS = {"dpo_mfu": worker_dpo_mfu, "max_batch": worker_max_batch}


# -- driver: each part in a subprocess with a time limit -------------------------------------------------------


def run_process(cmd: list[str], timeout: float, log: Path, cwd: str, env: dict | None = None) -> tuple[str, float]:
    """Runs ``cmd`` in ``cwd`` with its output in ``log``; its status (ok, fail, timeout) and wall time."""
    start = time.perf_counter()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=max(1.0, timeout), cwd=cwd,
                                  env=env or os.environ.copy())
            status = "ok" if proc.returncode == 0 else "fail"
        except subprocess.TimeoutExpired:
            status = "timeout"
    return status, round(time.perf_counter() - start, 1)


def last_error(log: Path) -> str:
    """The last line of a log that names an error, else its last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"Error|error:|Exception", line)]
    return (errors or lines or [""])[-1][:300]


def run_worker(part: str, args, timeout: float, out: Path, **extra: str) -> dict:
    """A worker part in a fresh process: its JSON result, status and wall time (partial results survive a kill)."""
    name = "_".join([part, *extra.values()])
    result_path = out / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", part, "--result", str(result_path),
           "--workdir", args.workdir, "--deadline", str(time.time() + timeout - 5)]
    cmd += ["--dry-run"] if args.dry_run else []
    for key, value in extra.items():
        cmd += [f"--{key}", value]
    env = dict(os.environ, HF_DATASETS_CACHE=tempfile.mkdtemp(dir=args.workdir))
    status, wall = run_process(cmd, timeout, out / f"{name}.log", args.workdir, env)
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    status = result.pop("status", status) if status == "ok" else status
    if status != "ok" and "note" not in result:
        result["note"] = last_error(out / f"{name}.log")
    return {"status": status, "wall_s": wall, **result}


def part_dpo_mfu(args, caps, out: Path) -> dict:
    return run_worker("dpo_mfu", args, caps("dpo_mfu"), out)


def part_max_batch(args, caps, out: Path) -> dict:
    lit = run_worker("max_batch", args, caps("max_batch_lit"), out, framework="lit")
    trl = run_worker("max_batch", args, caps("max_batch_trl"), out, framework="trl")
    status = next((s for s in (lit["status"], trl["status"]) if s not in ("ok", "skipped")), lit["status"])
    result = {"status": status, "wall_s": round(lit["wall_s"] + trl["wall_s"], 1), "lit": lit, "trl": trl}
    notes = [f"{name}: {part['note']}" for name, part in (("lit-align", lit), ("TRL", trl)) if part.get("note")]
    if notes:
        result["note"] = "; ".join(notes)
    return result


def part_fsdp2(args, caps, out: Path) -> dict:
    """``lit-align fit`` with the fsdp2 overlay on one device; the logged losses."""
    root = Path(args.workdir) / "fsdp2"
    sizes = SIZES[args.dry_run]
    cmd = [sys.executable, "-m", "lit_align.cli", "fit", "--config", "dpo", "--config", "strategy/fsdp2.yaml",
           "--trainer.devices=1", f"--trainer.max_steps={sizes['fsdp2_steps']}", "--trainer.log_every_n_steps=1",
           "--trainer.limit_val_batches=0", "--trainer.val_check_interval=null", "--trainer.enable_progress_bar=false",
           f"--trainer.default_root_dir={root}"]
    if args.dry_run:  # one CPU process (gloo) in float32, as the overlay's header shows
        cmd += ["--trainer.accelerator=cpu", "--trainer.strategy.init_args.mixed_precision=null"]
    status, wall = run_process(cmd, caps("fsdp2"), out / "fsdp2.log", args.workdir)
    losses = []
    for path in glob.glob(str(root / "logs" / "version_*" / "metrics.csv")):
        with open(path) as f:
            losses += [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    result = {"status": status, "wall_s": wall, "losses": losses}
    if status == "ok" and not (losses and all(math.isfinite(v) for v in losses)):
        result.update(status="fail", note="no finite train/loss logged")
    elif status != "ok":
        result["note"] = last_error(out / "fsdp2.log")
    return result


def part_gpu_tests(args, caps, out: Path) -> dict:
    """``pytest -m gpu`` over the test files that hold GPU-marked tests; pytest's counts."""
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())
    if not files:
        return {"status": "skipped", "wall_s": 0.0, "note": "no GPU-marked tests found"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *files]
    status, wall = run_process(cmd, caps("gpu_tests"), out / "gpu_tests.log", args.workdir)
    text = (out / "gpu_tests.log").read_text(errors="replace")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", text)}
    if status == "ok" and not counts.get("passed"):
        status = "skipped"  # no CUDA device: every GPU test skipped
    result = {"status": status, "wall_s": wall, "files": [os.path.relpath(f, ROOT) for f in files], **counts}
    if status != "ok":
        result["note"] = last_error(out / "gpu_tests.log")
    return result


RUNNERS = {"dpo_mfu": part_dpo_mfu, "max_batch": part_max_batch, "fsdp2": part_fsdp2, "gpu_tests": part_gpu_tests}


def summary_line(part: str, result: dict) -> str:
    """The figures of one part, in words."""
    if part == "dpo_mfu" and "tokens_per_sec" in result:
        mfu = (f", MFU {100 * result['mfu']:.3g} % (prompt counted once: {100 * result['mfu_prompt_once']:.3g} %; "
               "target >= 45 %)"
               if "mfu" in result else ", MFU unknown (device not in PEAK_FLOPS)")
        return (f"{result['params'] / 1e6:,.1f}M params, {result['batch_pairs']} pairs x {result['seq_len']} tokens: "
                f"{result['tokens_per_sec']:.0f} tokens/s{mfu}, step {result['step_time']:.3f} s, "
                f"peak {result['peak_memory_gb']:.1f} GiB")
    if part == "max_batch":
        def one(name, r):
            if r.get("status") == "skipped" or "largest_fit" not in r:
                return f"{name}: {r.get('status')}"
            more = (f" (fails at {r['smallest_fail']})" if r.get("smallest_fail") else
                    f" (cap {r['cap']} reached)" if r["largest_fit"] >= r["cap"] else " (time ran out)")
            peak = f", peak {r['peak_memory_mb']:.0f} MiB" if r.get("peak_memory_mb") else ""
            return f"{name} {r['largest_fit']} pairs{more}{peak}"
        lit = result.get("lit", {})
        return (f"vocab {lit.get('vocab')}, ~{lit.get('seq_len')} tokens/seq: {one('lit-align', lit)}; "
                f"{one('TRL', result.get('trl', {}))}")
    if part == "fsdp2" and result.get("losses"):
        return f"{len(result['losses'])} steps, loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}"
    if part == "gpu_tests":
        return ", ".join(f"{n} {w}" for w, n in result.items() if w in ("passed", "failed", "skipped", "error",
                                                                      "errors", "deselected"))
    return ""


def report(results: dict, args, wall: float) -> str:
    lines = [f"# GPU check ({'dry run, CPU' if args.dry_run else 'GPU'}; {wall:.0f} s in all)", "",
             "| part | status | wall s | result | note |", "|---|---|---|---|---|"]
    for part, result in results.items():
        note = str(result.get("note", "")).replace("|", "/")
        lines.append(f"| {part} | {result['status']} | {result['wall_s']} | {summary_line(part, result)} | {note} |")
    return "\n".join(lines) + "\n"


def run_part(part: str, args, caps, out: Path, start: float) -> dict:
    print(f"[{time.time() - start:5.0f} s] {part} ...", flush=True)
    try:
        result = RUNNERS[part](args, caps, out)
    except Exception as err:  # noqa: BLE001 - the driver's own failure in one part stops only that part
        result = {"status": "fail", "wall_s": 0.0, "note": f"{type(err).__name__}: {err}"}
    print(f"[{time.time() - start:5.0f} s] {part}: {result['status']}", flush=True)
    return result


def drive(args) -> int:
    """Every part (one after another unless ``--jobs`` says more), then the summary."""
    from concurrent.futures import ThreadPoolExecutor

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + args.budget
    caps_table = SIZES[args.dry_run]["caps"]
    parts = args.only or PARTS
    jobs = args.jobs or 1

    def caps_for(index: int):
        later = len(parts) - index - 1 if jobs == 1 else 0

        def caps(name: str) -> float:  # this part's cap, leaving the later parts 20 s each at least
            return max(5.0, min(caps_table[name], deadline - time.time() - 20 * later))

        return caps

    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(jobs) as pool:
        args.workdir = workdir
        os.environ.setdefault("LIT_ALIGN_CACHE", os.path.join(workdir, "cache"))  # nothing left in ~/.cache
        futures = [pool.submit(run_part, part, args, caps_for(i), out, start) for i, part in enumerate(parts)]
        results = {part: future.result() for part, future in zip(parts, futures)}
    wall = time.time() - start
    text = report(results, args, wall)
    (out / "gpu_check.md").write_text(text)
    write_json(str(out / "gpu_check.json"), {"dry_run": args.dry_run, "wall_s": round(wall, 1), "parts": results})
    print("\n" + text, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out",
                        help="folder for gpu_check.json, gpu_check.md and each part's log (default: $OUT if set, "
                        "else ./gpu_check_out)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 2 steps: the same code path")
    parser.add_argument("--only", nargs="*", choices=PARTS, help="run only these parts")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all parts together")
    parser.add_argument("--jobs", type=int, help="parts at once (default 1: each part has the machine to itself)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--framework", choices=["lit", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        write_json(args.result, WORKERS[args.worker](args, SIZES[args.dry_run]))
        return 0
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --dry-run for the CPU check")
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())

"""Where lit-align's DPO step goes, on ``bench_dpo.py``'s model and data (one process, CPU).

    python benchmarks/profile_dpo.py                      # every view
    python benchmarks/profile_dpo.py --view ops           # operator self-times over --steps steps
    python benchmarks/profile_dpo.py --checkpointing      # the same with gradient checkpointing on

Views of the same run (``DPO`` + ``PreferenceDataModule`` + a Lightning ``Trainer``, batch 8, maximum
length 256, float32, 2 threads, as ``bench_dpo.py --rows live:8:128`` runs it):

- ``ops``: the ``torch.profiler`` operator table (self CPU time) over ``--steps`` steps after ``--warmup``.
- ``saved``: the tensors one training step's policy forward saves for its backward (each storage once), by shape:
  the activations a step holds at its peak.
- ``attention``: torch's attention kernel alone, forward and backward, at this batch's packed shape (8 rows of
  208 positions, 4 heads of 64) with an explicit float mask and with ``is_causal``, and at the unpacked shape the
  packing replaces (16 rows of 130 positions); medians of ``--steps`` repetitions after 3.
- ``rss``: the process's resident memory and its peak at the start of training and around the first steps'
  backward passes.

Each view runs in a fresh process, so that one's memory is not the next one's.
"""

from __future__ import annotations

import argparse
import collections
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dpo import build_data, build_model, current_rss_mb  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(args):
    import torch

    from lit_align.data import PreferenceDataModule
    from lit_align.objectives import DPO
    from lit_align.policy.with_reference import PolicyWithReference

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    build_model(work / "model", args.hidden, args.layers)
    build_data(work / "pairs.jsonl", 400, 128)
    policy = PolicyWithReference(model=str(work / "model"), reference="copy", dtype="float32",
                                 gradient_checkpointing=args.checkpointing)
    module = DPO(beta=0.1, policy=policy, learning_rate=1e-5, lr_schedule="constant", warmup_ratio=0.0)
    data = PreferenceDataModule(path=str(work / "pairs.jsonl"), batch_size=8, max_length=256,
                                max_prompt_length=128, val_fraction=0.0, seed=0)
    return module, data


def trainer(steps: int, callbacks: list):
    import lightning as L

    return L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     callbacks=callbacks, gradient_clip_val=1.0)


def view_ops(args) -> None:
    import lightning as L
    from torch.profiler import ProfilerActivity, profile

    module, data = setup(args)
    prof = profile(activities=[ProfilerActivity.CPU])

    class Window(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx + 1 == args.warmup:
                prof.start()
            elif batch_idx + 1 == args.warmup + args.steps:
                prof.stop()

    trainer(args.warmup + args.steps, [Window()]).fit(module, data)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"# operators by self CPU time over {args.steps} steps ({total / 1e6 / args.steps:.3f} s a step with the "
          "profiler on)")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"{event.self_cpu_time_total / total:7.1%}  {event.count:6d} calls  {event.key}")


def view_saved(args) -> None:
    import torch

    module, data = setup(args)
    data.connect(module.data_request())
    data.setup("fit")
    module.configure_model()
    batch = next(iter(data.train_dataloader()))
    storages: dict[int, int] = {}
    by_shape: collections.Counter = collections.Counter()
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in storages and key not in parameters:
            storages[key] = tensor.untyped_storage().nbytes()
            by_shape[(tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))] += storages[key]
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module.training_step(batch, 0)
    print(f"# tensors saved for the backward by one step (parameters excluded): {sum(storages.values()) / 2**20:.1f} "
          "MiB")
    for (shape, dtype), size in by_shape.most_common(args.top):
        print(f"{size / 2**20:8.1f} MiB  {dtype} {shape}")


def view_attention(args) -> None:
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    heads, dim = 4, 64

    def timed(rows: int, length: int, causal: bool) -> float:
        q, k, v = (torch.randn(rows, heads, length, dim, requires_grad=True) for _ in range(3))
        mask = None if causal else torch.zeros(rows, 1, length, length).masked_fill(
            ~torch.ones(length, length, dtype=torch.bool).tril(), float("-inf"))
        times = []
        for i in range(3 + args.steps):
            start = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal).sum().backward()
            if i >= 3:
                times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    print(f"# attention forward + backward, ms (median of {args.steps})")
    for rows, length, causal, what in [(8, 208, False, "packed rows, explicit mask"),
                                       (8, 208, True, "packed rows, is_causal"),
                                       (16, 130, False, "unpacked rows, explicit mask")]:
        print(f"{timed(rows, length, causal):7.2f}  {rows} x {length}  {what}")


def view_rss(args) -> None:
    import lightning as L

    print(f"# RSS MiB: after imports {current_rss_mb():.0f}")
    module, data = setup(args)
    print(f"model and data built {current_rss_mb():.0f}")

    class Watch(L.Callback):
        def on_train_start(self, trainer, pl_module):
            print(f"training starts {current_rss_mb():.0f} (peak {peak_rss_mb():.0f})")

        def on_before_backward(self, trainer, pl_module, loss):
            if trainer.global_step < 4:
                print(f"step {trainer.global_step}: before backward {current_rss_mb():.0f} (peak {peak_rss_mb():.0f})")

        def on_after_backward(self, trainer, pl_module):
            if trainer.global_step < 4:
                print(f"step {trainer.global_step}: after backward {current_rss_mb():.0f} (peak {peak_rss_mb():.0f})")

    trainer(args.warmup + args.steps, [Watch()]).fit(module, data)
    print(f"end {current_rss_mb():.0f} (peak {peak_rss_mb():.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--view", choices=["ops", "saved", "attention", "rss"], nargs="+",
                        default=["ops", "saved", "attention", "rss"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--top", type=int, default=12, help="rows of each table")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    args = parser.parse_args()
    if len(args.view) > 1:  # each view in a fresh process, so that one's memory is not the next one's
        import subprocess

        for name in args.view:
            rest = [a for a in sys.argv[1:] if a not in args.view and a != "--view"]
            subprocess.run([sys.executable, __file__, "--view", name, *rest], check=True)
        return
    {"ops": view_ops, "saved": view_saved, "attention": view_attention, "rss": view_rss}[args.view[0]](args)


if __name__ == "__main__":
    main()

"""Forward + backward time of the chunked LM head (``head_scores``) against the number of chunks.

    python benchmarks/bench_head_chunks.py                       # vocabulary 131,072, hidden 64, 1,024 positions
    python benchmarks/bench_head_chunks.py --chunks 1 8 32 128 --repeats 3

One thread; each chunk count is forced through the head's bounds (``CHUNK_ELEMENTS`` = ``MIN_CHUNK_ELEMENTS`` =
positions per chunk x vocabulary); the median of ``--repeats`` timings after one warm-up, with the range.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import lit_align.models.chunked_head as chunked_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=131_072)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False)
    print(f"load before: {os.getloadavg()[0]:.1f}\n")
    print("| chunks | positions per chunk | logits per chunk MiB | forward + backward ms, median (min-max) |")
    print("|---|---|---|---|")
    for chunks in args.chunks:
        rows = -(-args.positions // chunks)
        chunked_head.CHUNK_ELEMENTS = chunked_head.MIN_CHUNK_ELEMENTS = rows * args.vocab
        times = []
        for _ in range(args.repeats + 1):
            hidden = torch.randn(args.positions, args.hidden, requires_grad=True)
            labels = torch.randint(0, args.vocab, (args.positions,))
            start = time.perf_counter()
            chunked_head.head_scores(head, hidden, labels)[:, 0].sum().backward()
            times.append(time.perf_counter() - start)
            head.weight.grad = None
        times = [t * 1e3 for t in times[1:]]
        print(f"| {chunks} | {rows} | {rows * args.vocab * 4 / 2**20:.0f} | {statistics.median(times):.0f} "
              f"({min(times):.0f}-{max(times):.0f}) |", flush=True)
    print(f"\nload after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

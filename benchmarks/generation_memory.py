"""Peak memory and time of the Hugging Face sampling backend (``lit_align.generation.rollout.sample``).

    python benchmarks/generation_memory.py                          # 131,072-entry vocabulary, log-probs on
    python benchmarks/generation_memory.py --vocab 474 --no-logprobs --rows 16 --prompt 34 --new 32

Each measurement is a fresh process: a random-init Llama (hidden 64, 2 layers unless told otherwise) at
``--vocab`` entries, ``--rows`` prompts of ``--prompt`` tokens, ``--samples`` samples each, exactly ``--new`` new
tokens (min = max new tokens), temperature 1, float32 on CPU. Reported, with the prompt's prefill shared across
its samples (``rollout.shared_prefill``) and without, over ``--processes`` processes: the peak resident memory the
``sample`` calls add over the process's peak before them (the model and inputs built), and a call's wall time
(median of ``--repeats`` calls after one warm-up call).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lit_align.generation import rollout

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                                         intermediate_size=2 * args.hidden,
                                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32),
                                         num_key_value_heads=max(1, args.hidden // 32))).eval()
    ids = torch.randint(3, min(args.vocab, 1000), (args.rows, args.prompt))
    mask = torch.ones_like(ids)
    config = rollout.SamplingConfig(max_new_tokens=args.new, min_new_tokens=args.new, logprobs=args.logprobs)
    verdicts = getattr(rollout, "_PREFILL_VERDICTS", None)  # absent in versions without the shared prefill
    if verdicts is not None and not args.shared:
        verdicts[rollout._architecture_key(model)] = False  # the unshared path
    before = peak_mib()
    times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        out = rollout.sample(model, ids, mask, config, eos_token_id=2, pad_token_id=0, num_samples=args.samples)
        times.append(time.perf_counter() - start)
    assert out.input_ids.shape == (args.rows * args.samples, args.prompt + args.new)
    return {"peak_added_mib": peak_mib() - before, "call_s": statistics.median(times[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=8, help="prompts")
    parser.add_argument("--samples", type=int, default=2, help="samples per prompt")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="new tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    parser.add_argument("--processes", type=int, default=3, help="processes per setting (memory: min-max)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-logprobs", dest="logprobs", action="store_false", help="no sampled-token log-probs")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--shared", type=int, default=1)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(f"# sample(): Llama hidden {args.hidden}, {args.layers} layers, vocabulary {args.vocab}; {args.rows} prompts "
          f"of {args.prompt} tokens x {args.samples} samples x {args.new} new tokens; log-probs "
          f"{'on' if args.logprobs else 'off'}; {args.threads} thread(s); median of {args.repeats} calls\n")
    print("| prefill | peak added MiB, min-max over processes | call s, median |\n|---|---|---|")
    for shared in (1, 0):
        cmd = [sys.executable, __file__, "--worker", "--shared", str(shared)] + [
            a for a in sys.argv[1:] if a != "--worker"]
        results = []
        for _ in range(args.processes):
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        memory = [r["peak_added_mib"] for r in results]
        print(f"| {'shared' if shared else 'per sample'} | {min(memory):.0f}-{max(memory):.0f} | "
              f"{statistics.median(r['call_s'] for r in results):.3f} |")


if __name__ == "__main__":
    main()

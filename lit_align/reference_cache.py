"""Reference log-probs computed once, stored on disk, and looked up by example index during training.

The file name is a hash of everything the values depend on: the model (name, config, and for a local directory
its weight files' sizes and times), the weight dtype, and every tokenised example (which covers the data, the
tokenizer, the chat template and the length settings). Change any of them and the cache is recomputed; change
none and the next run reuses it. Values are computed before the first optimizer step, when the policy still is
pi_0 (under LoRA, with its adapters disabled); every rank computes a shard and the shards are all-gathered, so
it works unchanged under DDP and FSDP2.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lit_align.models import is_embedded

_VERSION = "1"


class ReferenceCache:
    """Per-split tensors ``(max_index + 1, K)`` of reference log-probs, K completions per example."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.values: dict[str, torch.Tensor] = {}
        self.paths: dict[str, Path] = {}

    def ready(self, split: str) -> bool:
        return split in self.values

    def lookup(self, split: str, index: torch.Tensor) -> torch.Tensor:
        """Reference log-probs laid out like the batch rows: completion block by block, (K*B,)."""
        if split not in self.values:
            raise RuntimeError(f"no cached reference log-probs for the {split} split")
        values = self.values[split].to(index.device)[index]  # (B, K)
        if torch.isnan(values).any():
            raise RuntimeError("a batch holds examples the reference cache was not computed for")
        return values.T.reshape(-1)

    def prepare(self, module, datamodule) -> None:
        for split, examples in (("train", datamodule.train_examples), ("val", datamodule.val_examples)):
            if examples and split not in self.values:
                self.values[split] = self._load_or_compute(module, datamodule, split, examples)

    def key(self, module, examples, settings: dict | None = None) -> str:
        policy = module.policy
        digest = hashlib.sha256(_VERSION.encode())
        digest.update(json.dumps(_model_identity(policy), sort_keys=True).encode())
        # the length settings count even when they truncate nothing in this data: the key says how it was made
        digest.update(json.dumps(settings or {}, sort_keys=True, default=str).encode())
        for ex in examples:
            digest.update(json.dumps([ex.index, ex.prompt_ids, ex.completion_ids]).encode())
        return digest.hexdigest()[:32]

    def _load_or_compute(self, module, datamodule, split: str, examples) -> torch.Tensor:
        path = self.directory / f"{self.key(module, examples, _data_settings(datamodule))}.safetensors"
        self.paths[split] = path
        if path.exists():
            return load_file(str(path))["logps"]
        if module.global_step > 0:
            raise RuntimeError(
                f"the reference cache {path} is missing and training has already moved the policy away from the "
                "reference, so it cannot be recomputed; restore the file or start the run again"
            )
        values = _compute(module, datamodule, examples)
        if module.trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file({"logps": values.contiguous()}, str(tmp))
            os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache behind
        return values


def _data_settings(datamodule) -> dict:
    hparams = getattr(datamodule, "hparams", {})
    tokenizer = datamodule.tokenizer
    return {
        "max_length": hparams.get("max_length"),
        "max_prompt_length": hparams.get("max_prompt_length"),
        "tokenizer": [type(tokenizer).__name__, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                      getattr(tokenizer, "chat_template", None)],
    }


def _model_identity(policy) -> dict:
    config = policy.base_model.config.to_dict()
    config.pop("_name_or_path", None)
    identity = {"model": policy.model_name, "config": config,
                "dtype": str(next(policy.base_model.parameters()).dtype)}
    local = Path(policy.model_name)
    if not is_embedded(policy.model_name) and local.is_dir():
        identity["files"] = sorted(
            (f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in local.iterdir() if f.is_file()
        )
    return identity


@torch.no_grad()
def _compute(module, datamodule, examples) -> torch.Tensor:
    from lit_align.logprobs import completion_token_logprobs

    trainer = module.trainer
    world, rank = trainer.world_size, trainer.global_rank
    per_rank = -(-len(examples) // world)
    shard = examples[rank * per_rank : (rank + 1) * per_rank]
    shard = shard + [examples[0]] * (per_rank - len(shard))  # equal work on every rank keeps collectives in step
    collate = datamodule.collator()
    batch_size = datamodule.hparams.eval_batch_size or datamodule.hparams.batch_size
    num_completions = len(examples[0].completion_ids)
    rows = []
    was_training = module.training
    module.eval()
    with module.policy.reference_context():
        for start in range(0, len(shard), batch_size):
            batch = collate(shard[start : start + batch_size])
            batch = {k: v.to(module.device) for k, v in batch.items()}
            if getattr(module, "share_prompt", False):  # the objective's own packed forward (shared_prompt.py)
                sequence_logps = module.sequence_logps(batch)[0]
            else:
                logits = module.policy(batch["input_ids"], batch["attention_mask"])
                token_logps, _ = completion_token_logprobs(logits, batch["input_ids"], batch["completion_mask"])
                sequence_logps = token_logps.sum(-1)
            logps = sequence_logps.view(num_completions, -1).T  # (B, K)
            rows.append(torch.cat([batch["index"][:, None].float(), logps], dim=1))
    module.train(was_training)
    local = torch.cat(rows)  # (per_rank, 1 + K)
    gathered = module.all_gather(local).reshape(-1, 1 + num_completions) if world > 1 else local
    index = gathered[:, 0].long()
    table = torch.full((int(index.max()) + 1, num_completions), float("nan"))
    table[index.cpu()] = gathered[:, 1:].float().cpu()
    return table

"""Reference log-probs computed once from pi_0, stored on disk with a checksum, and looked up by example index.

The file name is a key over everything the values depend on: the model (name, config, weight dtype, hub revision,
the content digest of a local directory's weight files or of the embedded model's seeded weights), the
tokenizer, the content of the encoded examples (``lit_align.runs.fingerprints.examples_digest``, which covers the data
file, chat template and truncation) and the length settings. Change any of them and the cache is recomputed;
change none and the next run reuses it.

The values always come from pi_0. The live policy is used only while it provably still is pi_0: no checkpoint
has been loaded into it and no training step has run (a fresh fit, where every rank computes a shard and the
shards are all-gathered, so it works unchanged under DDP and FSDP2; under LoRA with the adapters disabled).
Otherwise (a resumed fit, ``validate`` from a checkpoint) pi_0 is loaded again from its source and checked to be
the model the run started from; if it is not, the run stops with one line instead of caching a wrong reference.

Every file stores the SHA-256 of its values in the safetensors metadata. A file that cannot be read or does not
match its checksum is recomputed from pi_0, with a warning naming it.

Files live in a per-user cache like Hugging Face's: ``$LIT_ALIGN_CACHE/reference_logps``, else
``$XDG_CACHE_HOME/lit_align/reference_logps``, else ``~/.cache/lit_align/reference_logps``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from safetensors import safe_open
from safetensors.torch import save

from lit_align.errors import UserError
from lit_align.runs.atomic import atomic_write_bytes
from lit_align.runs.fingerprints import examples_digest
from lit_align.runs.identity import source_digest
from lit_align.models.loading import is_embedded, load_causal_lm, zero_dropout

_VERSION = "2"  # files of version 1 carry no checksum; their keys never match again
#: Where a checkpoint records the identity of the pi_0 its policy was trained against.
CHECKPOINT_KEY = "lit_align_reference_identity"


class ReferenceCacheError(UserError):
    """The reference cache can neither be read nor recomputed from pi_0."""


def default_cache_dir() -> Path:
    """``$LIT_ALIGN_CACHE/reference_logps``, else ``$XDG_CACHE_HOME/lit_align/reference_logps`` (``~/.cache``)."""
    root = os.environ.get("LIT_ALIGN_CACHE")
    if root:
        return Path(root).expanduser() / "reference_logps"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "lit_align" / "reference_logps"


class ReferenceCache:
    """Per-split tensors ``(max_index + 1, K)`` of reference log-probs, K completions per example.

    ``model`` (named ``model_name``) is pi_0 as loaded: its identity is taken then, so that a reference rebuilt
    later from the model's source can be checked against it.
    """

    def __init__(self, directory: str | None = None, model_name: str | None = None,
                 model: torch.nn.Module | None = None) -> None:
        self.directory = Path(directory) if directory else default_cache_dir()
        self.values: dict[str, torch.Tensor] = {}
        self.paths: dict[str, Path] = {}
        self.identity = model_identity(model_name, model) if model is not None else None
        #: Set once a checkpoint is loaded into the policy or a training step runs: it may no longer be pi_0.
        self.policy_moved = False

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
        if self.identity is None:
            self.identity = model_identity(module.policy.model_name, module.policy.base_model)
        for split, examples in (("train", datamodule.train_examples), ("val", datamodule.val_examples)):
            if examples and split not in self.values:
                self.values[split] = self._load_or_compute(module, datamodule, split, examples)

    def key(self, module, examples, settings: dict | None = None) -> str:
        identity = self.identity or model_identity(module.policy.model_name, module.policy.base_model)
        digest = hashlib.sha256(_VERSION.encode())
        digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
        # the length settings count even when they truncate nothing in this data: the key says how it was made
        digest.update(json.dumps(settings or {}, sort_keys=True, default=str).encode())
        digest.update(examples_digest(examples).encode())
        return digest.hexdigest()[:32]

    def _load_or_compute(self, module, datamodule, split: str, examples) -> torch.Tensor:
        key = self.key(module, examples, {**_data_settings(datamodule), "precision": str(module.trainer.precision)})
        path = self.directory / f"{key}.safetensors"
        self.paths[split] = path
        num_completions = len(examples[0].completion_ids)
        if path.exists():
            try:
                values = _read(path, key, num_completions, max(ex.index for ex in examples))
                rank_zero_info(f"reference cache: reusing {key} ({path})")
                return values
            except _Invalid as err:
                rank_zero_warn(f"reference cache: {path} {err}; recomputing it from the reference model")
        model = None if self._live_policy_is_reference(module) else self._load_reference(module, path)
        rank_zero_info(f"reference cache: computing reference log-probs of {len(examples)} pairs ({split}) -> {path}"
                       + ("" if model is None else f" (reference {module.policy.model_name!r} reloaded from its "
                                                   "source: the policy has moved away from it)"))
        values = _compute(module, datamodule, examples, model, split)
        del model
        if module.trainer.is_global_zero:
            values = values.contiguous()
            data = save({"logps": values}, metadata={"sha256": _values_digest(values), "key": key, "split": split,
                                                     "format": _VERSION})
            atomic_write_bytes(path, data)  # a crash never leaves a half-written cache behind
        return values

    def save_identity(self, checkpoint: dict) -> None:
        """Record in a checkpoint which pi_0 its policy was trained against."""
        checkpoint[CHECKPOINT_KEY] = _portable(self.identity)

    def check_identity(self, checkpoint: dict, source) -> None:
        """Refuse to resume a policy trained against another pi_0 than the one the model now loads: its cached or
        recomputed reference log-probs would belong to a different reference."""
        self.policy_moved = True
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None or self.identity is None or saved == _portable(self.identity):
            return
        now = _portable(self.identity)
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ReferenceCacheError(
            f"checkpoint {source} was trained against another reference than {self.identity['model']!r} gives now "
            f"({', '.join(changed)} differ), so reference log-probs computed now would not be its pi_0's; resume "
            "with the model settings it started from, or start a new run")

    def _live_policy_is_reference(self, module) -> bool:
        """Whether the live weights are still pi_0: nothing loaded into them, no step taken since construction."""
        return not self.policy_moved and module.global_step == 0

    def _load_reference(self, module, path: Path) -> torch.nn.Module:
        """pi_0 loaded again from its source, refused unless it is the model this run started from."""
        policy = module.policy
        base = policy.base_model
        dtype = str(next(base.parameters()).dtype).removeprefix("torch.")
        model = load_causal_lm(policy.model_name, dtype=dtype, trust_remote_code=policy.trust_remote_code,
                               seed=policy.seed, **policy.load_kwargs)  # the revision and options it was loaded with
        found = model_identity(policy.model_name, model)
        if found != self.identity:
            changed = sorted(k for k in set(found) | set(self.identity) if found.get(k) != self.identity.get(k))
            raise ReferenceCacheError(
                f"the reference cache {path} is missing or invalid and the policy has moved away from pi_0, so it "
                f"must be recomputed from {policy.model_name!r}, but that source now gives another model than "
                f"this run's reference ({', '.join(changed)} differ); restore the cache file, or start the run "
                "from step 0, or use reference: copy")
        zero_dropout(model)
        return model.requires_grad_(False).eval().to(module.device)


def _portable(identity: dict | None) -> dict | None:
    """The identity as plain JSON types, without file times (a copied model directory is the same model)."""
    if identity is None:
        return None
    identity = json.loads(json.dumps(identity, default=str))
    if "files" in identity:
        identity["files"] = [[name, size] for name, size, _ in identity["files"]]
    return identity


class _Invalid(Exception):
    """Why a cache file cannot be used."""


def _read(path: Path, key: str, num_completions: int, max_index: int) -> torch.Tensor:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            values = f.get_tensor("logps").clone()  # a copy: the file may be replaced while the run goes on
    except Exception as err:  # a truncated or foreign file: safetensors raises its own error types or OSError
        raise _Invalid(f"cannot be read ({type(err).__name__}: {err})") from err
    if "sha256" not in metadata:
        raise _Invalid("has no checksum (written by an older lit-align)")
    if metadata["sha256"] != _values_digest(values):
        raise _Invalid("does not match the checksum stored with it (its values were changed)")
    if metadata.get("key") != key or values.dim() != 2 or values.shape[1] != num_completions \
            or values.shape[0] <= max_index:
        raise _Invalid(f"holds another table (key {metadata.get('key')}, shape {tuple(values.shape)})")
    return values


def _values_digest(values: torch.Tensor) -> str:
    return hashlib.sha256(values.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


def _data_settings(datamodule) -> dict:
    hparams = getattr(datamodule, "hparams", {})
    tokenizer = datamodule.tokenizer
    return {
        "max_length": hparams.get("max_length"),
        "max_prompt_length": hparams.get("max_prompt_length"),
        "tokenizer": [type(tokenizer).__name__, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                      getattr(tokenizer, "chat_template", None)],
    }


def model_identity(name: str, model: torch.nn.Module) -> dict:
    """What pi_0 is: name, config, dtype, hub revision, and the content digest of its weights for a local folder
    or the embedded model (``lit_align.runs.identity.source_digest``, memoised per process)."""
    config = model.config.to_dict()
    for runtime_only in ("_name_or_path", "use_cache"):  # use_cache is switched off by gradient checkpointing
        config.pop(runtime_only, None)
    identity = {"model": name, "config": config, "dtype": str(next(model.parameters()).dtype),
                "revision": getattr(model.config, "_commit_hash", None)}
    # by content: the embedded model's seeded weights, a local folder's weight bytes (a folder rewritten with
    # files of the same names and sizes is another model), a hub model's commit (lit_align.runs.identity)
    if is_embedded(name) or Path(name).exists():
        identity["weights"] = source_digest(name, model)
    return identity


@torch.no_grad()
def _compute(module, datamodule, examples, model, split) -> torch.Tensor:
    """Reference log-probs of ``examples`` from ``model``, or from the live policy when None (the objective's own
    row forward, ``OfflineObjective.row_logps``, either way)."""
    trainer = module.trainer
    world, rank = trainer.world_size, trainer.global_rank
    per_rank = -(-len(examples) // world)
    shard = examples[rank * per_rank : (rank + 1) * per_rank]
    shard = shard + [examples[0]] * (per_rank - len(shard))  # equal work on every rank keeps collectives in step
    collate = datamodule.collator()
    batch_size = datamodule.hparams.eval_batch_size or datamodule.hparams.batch_size
    num_completions = len(examples[0].completion_ids)
    network = module.policy.policy if model is None else model
    starts = range(0, len(shard), batch_size)
    report_every = max(1, len(starts) // 10)
    rows = []
    was_training = module.training
    module.eval()
    for number, start in enumerate(starts, 1):
        batch = collate(shard[start : start + batch_size])
        batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        # the precision context of the training step (autocast under bf16-mixed, bfloat16 default under
        # bf16-true), so the cached values are those the live reference would give in the step
        with trainer.precision_plugin.forward_context():
            logps = module.row_logps(batch, network).policy.view(num_completions, -1).T  # (B, K)
        rows.append(torch.cat([batch["index"][:, None].float(), logps.float()], dim=1))
        if number % report_every == 0 or number == len(starts):
            done = min(len(examples), min(start + batch_size, per_rank) * world)
            rank_zero_info(f"reference cache: {done}/{len(examples)} pairs ({split})")
    module.train(was_training)
    local = torch.cat(rows)  # (per_rank, 1 + K)
    gathered = module.all_gather(local).reshape(-1, 1 + num_completions) if world > 1 else local
    index = gathered[:, 0].long()
    table = torch.full((int(index.max()) + 1, num_completions), float("nan"))
    table[index.cpu()] = gathered[:, 1:].float().cpu()
    return table

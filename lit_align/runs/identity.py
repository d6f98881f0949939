"""What a model is, by its content rather than its name: one digest per model source, computed once per process.

A run reuses models by name in several places (pi_0 rebuilt from the model folder on resume, the reward stage's
backbone, the reference cache's key). A name says nothing once the folder behind it is rewritten, so each of
these records and compares ``source_digest`` instead:

- a local folder: the bytes of its own weight files (``*.safetensors``, ``*.bin``, ...) and their names, streamed in
  8 MiB blocks; the digest is kept for the process, keyed by the files' names, sizes and modification times, so a
  second use costs one ``stat`` per file;
- the embedded ``tiny`` model: the bytes of its seeded random weights (``tensors_digest``);
- a hub id: the commit the weights were downloaded from (git hashes name content), or the name alone when the
  model carries no commit.

The digest is xxh3-128 when the ``xxhash`` package is installed (about ten times faster), SHA-256 otherwise; the
algorithm is part of the returned string, so digests made with different algorithms never compare equal by chance.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

try:  # optional: a digest about ten times faster than SHA-256
    import xxhash
except ImportError:  # pragma: no cover - depends on the environment
    xxhash = None

#: File name endings of weight files; the rest of a model folder (configs, tokenizer) is compared elsewhere.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
_BLOCK = 8 << 20
_known: dict[tuple, str] = {}


def _hasher():
    return (xxhash.xxh3_128(), "xxh3") if xxhash is not None else (hashlib.sha256(), "sha256")


def folder_digest(folder: str | Path) -> str:
    """Digest of the weight files of a model folder (names and bytes), memoised on their names, sizes and times."""
    folder = Path(folder)
    # the folder's own files, as from_pretrained reads them (a run folder's checkpoints/ below it are not the model)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
                   and not p.name.startswith("."))
    stats = tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(folder.resolve()), stats)
    if key not in _known:
        digest, algorithm = _hasher()
        for path in files:
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            with open(path, "rb") as handle:
                while block := handle.read(_BLOCK):
                    digest.update(block)
        _known[key] = f"{algorithm}:{digest.hexdigest()}"
    return _known[key]


def tensors_digest(model: torch.nn.Module) -> str:
    """Digest of a model's base weights (LoRA adapters left out), the same for the model wrapped by peft or not;
    each tensor is copied to the CPU on its own, never the whole model at once."""
    digest, algorithm = _hasher()
    state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return f"{algorithm}:{digest.hexdigest()}"


def source_digest(name: str, model: torch.nn.Module | None = None) -> str:
    """The content identity of the model ``name`` names (``model``: that model as loaded, needed for the embedded
    one and for a hub id's commit); see the module docstring."""
    from lit_align.models.loading import is_embedded

    if is_embedded(name):
        if model is None:
            raise ValueError(f"the identity of the embedded model {name!r} needs its weights")
        return tensors_digest(model)
    local = Path(name).expanduser()
    if local.is_dir():
        return folder_digest(local)
    if local.is_file():
        return folder_digest(local.parent)
    revision = getattr(getattr(model, "config", None), "_commit_hash", None)
    return f"hub:{name}@{revision}" if revision else f"name:{name}"


def short(digest: str | None) -> str:
    """The first hex digits of a digest, for messages."""
    return "none" if digest is None else digest.rsplit(":", 1)[-1][:12]

"""Content digests of what a run trains on, shared by the run manifest, the reference cache and the reward stage.

A digest covers the token ids of every example actually used (after formats, column mappings, chat templates
and truncation) and the values of the columns the objective reads (a label, a score), so it changes whenever the
data file's content, the tokenizer, the template or a length setting changes what the model sees, and does not
change when a file is merely moved or touched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import numpy as np


def examples_digest(examples: Iterable) -> str:
    """Hex SHA-256 of the examples' indices, prompt ids, completion ids and column values, in order.

    Examples without column values hash exactly as they did before columns existed, so digests recorded by
    earlier runs (manifests, reference caches) still match.
    """
    digest = hashlib.sha256()
    for ex in examples:
        parts = [ex.prompt_ids, *ex.completion_ids]
        # row index, number of parts and each part's length first, so that no two layouts share a byte stream
        header = [ex.index, len(parts), *(len(p) for p in parts)]
        digest.update(np.asarray(header, dtype=np.int64).tobytes())
        for part in parts:
            digest.update(np.asarray(part, dtype=np.int64).tobytes())
        values = getattr(ex, "values", None)
        if values:
            # -1 never occurs among indices, lengths and token ids, so it marks where values start; JSON keeps
            # true apart from 1, and a float's exact value
            blob = json.dumps(values, sort_keys=True).encode()
            digest.update(np.asarray([-1, len(blob)], dtype=np.int64).tobytes())
            digest.update(blob)
    return digest.hexdigest()


def datamodule_digest(datamodule) -> dict[str, object]:
    """``{"train": digest, "train_rows": n, "val": digest, "val_rows": n}`` of a data module's encoded examples
    (``train_examples`` / ``val_examples``; a split it does not have is left out)."""
    out: dict[str, object] = {}
    for split in ("train", "val"):
        examples = getattr(datamodule, f"{split}_examples", None)
        if examples:
            out[split] = examples_digest(examples)
            out[f"{split}_rows"] = len(examples)
    return out

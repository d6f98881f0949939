"""Keeping credentials (judge API keys, hub tokens) out of the files a run writes.

Credentials come from the environment, by name (``LLMJudge(api_key_env="OPENAI_API_KEY")``), never as config
values. As a second line of defence, the config saved next to the logs has every value of such an environment
variable masked, should one have been typed into the configuration anyway.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Environment variables whose values are treated as secrets.
SECRET_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)
MASK = "***"
_MIN_LENGTH = 8  # shorter values ("1", "true") would mask innocent text


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of the environment variables whose names look like credentials, longest first."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= _MIN_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact_file(path: str | os.PathLike) -> bool:
    """Mask every secret value found in the text file ``path``; returns whether anything was masked."""
    path = Path(path)
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    masked = text
    for value in secret_values():
        masked = masked.replace(value, MASK)
    if masked == text:
        return False
    path.write_text(masked, encoding="utf-8")
    return True


def redact(value):
    """A copy of ``value`` (strings, and dicts/lists/tuples of them) with every secret value masked."""
    if isinstance(value, str):
        for secret in secret_values():
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return type(value)({k: redact(v) for k, v in value.items()}) if type(value) is dict else _redact_in(value)
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _redact_in(mapping):
    for key in list(mapping):
        mapping[key] = redact(mapping[key])
    return mapping


def redact_hyperparameters(*objects) -> None:
    """Mask secrets in what Lightning writes of a module's hyperparameters (logger ``hparams.yaml``, checkpoint);
    the objects' own attributes, which the run actually uses, are left alone."""
    for obj in objects:
        for attr in ("_hparams", "_hparams_initial"):
            mapping = getattr(obj, attr, None)
            if isinstance(mapping, dict):
                _redact_in(mapping)

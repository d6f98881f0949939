"""Keeping credentials (judge API keys, hub tokens) out of the files a run writes and the messages it prints.

Credentials come from the environment, by name (``LLMJudge(api_key_env="OPENAI_API_KEY")``), never as config
values. As a second line of defence, every value of an environment variable with a credential-like name is masked
wherever text leaves the run: the saved ``config.yaml``, the loggers' hyperparameters (``hparams.yaml``), the
checkpoint's ``hyper_parameters`` and ``--print_config``. A credential given as a config value anyway (a hub
``token`` in ``model_kwargs``, any field named like ``token``, ``api_key``, ``secret``, ``password``) is masked
the same way, by its field: in mappings by key, in YAML or ``key=value`` text by the key before it, and its value
is remembered (``remember_field_secrets``, called on the parsed config) so that it is masked wherever it shows up
later in the text the run writes, like an environment variable's. Masking works on copies of that text only: the objects
the run uses keep their values, so a data path that happens to contain such a value still loads.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

from lit_align.errors import UserError

#: Environment variables whose values are treated as secrets.
SECRET_NAME = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)
MASK = "***"
_MIN_LENGTH = 8  # shorter values ("1", "true") would mask innocent text
#: URL query parameters that carry credentials (``?key=...``, ``&access_token=...``).
_SECRET_PARAM = re.compile(r"(key|token|secret|password|passwd|pwd|auth|sig|signature|credential)", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Prefixes of well-known key formats (OpenAI, Anthropic, Hugging Face, GitHub, GitLab, Slack, AWS, Google).
_KEY_PREFIX = re.compile(r"^(sk-|sk_|hf_|ghp_|gho_|ghs_|github_pat_|glpat-|xox[abpr]-|AKIA|AIza)")
#: Config fields that hold credentials. Deliberately not every name containing "token" (``pad_token``,
#: ``max_new_tokens``) or "key" (``monitor_key``); ``*_env`` fields hold a variable's NAME and are not secret.
SECRET_FIELD = re.compile(
    r"^(token|key|secret|password|passwd|api_?key|use_auth_token"
    r"|(hf|access|auth|api|bearer|refresh|session|id|secret|private|github|wandb)_token"
    r"|.*_(api_?key|secret|password|passwd)|(private|secret|access|client|secret_access)_key)$",
    re.IGNORECASE)
_FIELD_TEXT = re.compile(
    r"""(?P<head>(?:^|[\s{,(.-])["']?(?P<name>[A-Za-z_][A-Za-z0-9_]*)["']?[ \t]*[:=][ \t]*)"""
    r"""(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s,}'")]+)""",
    re.MULTILINE)
_NOT_SECRET = {"null", "none", "true", "false", "~", '""', "''", MASK}
#: Credential values found in config fields this process (``remember_field_secrets``).
_field_secrets: set[str] = set()


def is_secret_field(name) -> bool:
    """Whether a config field of this name holds a credential (``token``, ``hf_token``, ``api_key``, ...)."""
    return isinstance(name, str) and bool(SECRET_FIELD.match(name.rsplit(".", 1)[-1]))


def remember_field_secrets(config) -> None:
    """Remember the credential values given in ``config``'s fields (nested mappings and lists included), so that
    ``redact`` masks them wherever they appear in text."""
    items = config.items() if hasattr(config, "items") else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        if isinstance(value, str) and is_secret_field(str(key)) and value.strip().lower() not in _NOT_SECRET:
            _field_secrets.add(value)
        elif isinstance(value, (list, tuple)) or hasattr(value, "items"):
            remember_field_secrets(list(value) if isinstance(value, tuple) else value)


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of the environment variables whose names look like credentials, longest first."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= _MIN_LENGTH}
    values |= {v for v in _field_secrets if len(v) >= 4}
    return sorted(values, key=len, reverse=True)


def redact(value, extra: tuple[str, ...] = ()):
    """A copy of ``value`` (strings, and mappings/lists/tuples of them) with every secret value (and each of
    ``extra``) masked; ``value`` itself is never changed."""
    secrets = sorted({*secret_values(), *(s for s in extra if s)}, key=len, reverse=True)
    return _redact(value, secrets)


def _redact(value, secrets: list[str]):
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        value = _FIELD_TEXT.sub(_mask_field_text, value) if ":" in value or "=" in value else value
        return _URL.sub(lambda found: mask_url(found.group(0)), value) if "://" in value else value
    if isinstance(value, dict):
        items = {k: MASK if _secret_item(k, v) else _redact(v, secrets) for k, v in value.items()}
        try:
            return type(value)(items)
        except TypeError:  # a mapping type that cannot be built from a dict
            return items
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_redact(v, secrets) for v in value)
    return value


def _secret_item(key, value) -> bool:
    return isinstance(value, str) and is_secret_field(str(key)) and value.strip().lower() not in _NOT_SECRET


def _mask_field_text(found: re.Match) -> str:
    """``token: hf_abc`` -> ``token: ***`` in YAML, JSON-ish or ``key=value`` text."""
    value = found.group("value")
    if not is_secret_field(found.group("name")) or value.strip("'\"").lower() in _NOT_SECRET:
        return found.group(0)
    return found.group("head") + MASK


def redact_file(path: str | os.PathLike) -> bool:
    """Mask every secret value found in the text file ``path``; returns whether anything was masked."""
    path = Path(path)
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    masked = redact(text)
    if masked == text:
        return False
    path.write_text(masked, encoding="utf-8")
    return True


def mask_url(url: str) -> str:
    """``url`` fit to print: a password in it (``user:pass@host``) and credential-like query parameters
    (``?key=...``, ``token=``, ``api_key=``, ``sig=``) become ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return MASK
    pairs = [pair.partition("=") for pair in parts.query.split("&") if pair]
    if "@" not in parts.netloc and not any(sep and _SECRET_PARAM.search(name) for name, sep, _ in pairs):
        return url  # nothing to hide: unchanged, not re-normalised
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = "&".join(
        f"{name}={MASK}" if sep and _SECRET_PARAM.search(name) else f"{name}{sep}{val}" for name, sep, val in pairs
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def looks_like_key(name: str) -> bool:
    """Whether ``name``, given where the NAME of an environment variable belongs, is more likely a key itself."""
    if not _ENV_NAME.match(name) or (_KEY_PREFIX.match(name) and len(name) >= 16):
        return True
    # Long, mixed-case or lower-case-with-digits runs without separators are random tokens, not variable names.
    letters = re.sub(r"[^A-Za-z]", "", name)
    has_digits = any(c.isdigit() for c in name)
    return len(name) >= 20 and "_" not in name and has_digits and not letters.isupper()


def key_as_name_message(setting: str) -> str:
    """The refusal of a key given where the name of its environment variable belongs; it never shows the key."""
    return (f"{setting} must be the NAME of the environment variable that holds the key, not the key itself (the "
            "value given looks like a key and is not shown): `export OPENAI_API_KEY=<key>` and set "
            f"--{setting}=OPENAI_API_KEY")


def refuse_keys_as_names(config) -> None:
    """Refuse a parsed config (a jsonargparse ``Namespace``) in which an ``*api_key_env`` setting holds a key.

    Checked before the classes are built, so that neither the parser's error (which prints the arguments) nor a
    saved config ever shows the key; the value is blanked in ``config`` first.
    """
    remember_field_secrets(config)
    for key, value in list(config.items()):
        if key.rsplit(".", 1)[-1].endswith("api_key_env") and isinstance(value, str) and looks_like_key(value):
            config[key] = MASK
            setting = ".".join(part for part in key.split(".") if part != "init_args")
            raise UserError(key_as_name_message(setting))


class MaskingStream:
    """A text stream that masks secret values in what is written through it (``--print_config``)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text))
        return len(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def mask_logged_hyperparameters(logger) -> None:
    """Make ``logger.log_hyperparams`` write a masked copy (``hparams.yaml`` and the like); the modules' own
    hyperparameters, which the run reads, are left alone."""
    log_hyperparams = logger.log_hyperparams
    if getattr(log_hyperparams, "_masks_secrets", False):
        return

    def masked(params, *args, **kwargs):
        if isinstance(params, dict):
            params = redact(dict(params))
        elif hasattr(params, "__dict__"):  # an argparse / jsonargparse Namespace
            params = redact(dict(vars(params)))
        return log_hyperparams(params, *args, **kwargs)

    masked._masks_secrets = True
    logger.log_hyperparams = masked

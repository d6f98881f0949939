"""The run manifest: what a checkpoint was trained on and with, so that a resume can prove it continues that run.

Every checkpoint lit-align writes carries, under ``MANIFEST_KEY``, the objective's class, a content digest of the
encoded training (and validation) rows, the per-device batch size, gradient accumulation, world size, length
settings, the effective seeds (``lit_align.runs.seeds``: the data order's among them), the content digest of pi_0
(``lit_align.runs.identity``; a changed pi_0 is refused when the checkpoint is loaded, ``lit_align.policy.reference``),
``max_steps`` / ``max_epochs`` and the versions of lit-align, torch, transformers and lightning.

What the rows are is their content digest: token ids after rendering and truncation, and the values of the
columns the objective reads. The data order is the seed and the batching. Together they cover what changes which
rows a run sees in which order, and nothing else: a moved or touched file, or a chat template's date (pinned when
rendering, ``lit_align.data.chat``), changes neither.

Resuming (``fit`` with ``ckpt_path``) compares the checkpoint's manifest with the run being started:

- refused, with one line naming every difference: another objective, other training rows, a reward model read
  from a folder whose weights changed, another data order seed, batch size, accumulation or world size (the saved
  data position counts batches, so rows would be replayed or skipped), other length settings;
- warned about: other library versions, other validation rows, other seeds (model initialisation: the weights
  come from the checkpoint), other objective hyperparameters (the parsed
  configuration wins over the checkpoint's; the warning shows what changed);
- noted: a new ``max_steps`` / ``max_epochs`` (extending a run is what resuming is for);
- a checkpoint without a manifest (written before manifests existed) is resumed with a warning.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_align._moved import MOVED
from lit_align.errors import UserError
from lit_align.runs.checkpoint_io import load_checkpoint_file, shown_path
from lit_align.runs.fingerprints import datamodule_digest
from lit_align.runs.identity import short, source_digest
from lit_align.runs.seeds import effective_seeds

#: The checkpoint key holding the manifest.
MANIFEST_KEY = "lit_align_manifest"
#: How to resume anyway; named in every refusal.
OVERRIDE_HINT = "pass --checkpoint.resume_changes allow to resume anyway"

_LENGTH_SETTINGS = ("max_length", "max_prompt_length")
#: The libraries whose versions a manifest records (another version warns, never refuses).
VERSIONED = ("lit_align", "torch", "transformers", "lightning")


class ResumeMismatchError(UserError):
    """The checkpoint being resumed belongs to a different run; the message names each difference."""


def build_manifest(trainer, pl_module, data_digest: Mapping[str, object] | None = None) -> dict[str, Any]:
    """The manifest of the run ``trainer`` is fitting (``data_digest``: a precomputed ``datamodule_digest``)."""
    datamodule = getattr(trainer, "datamodule", None)
    settings = _hparams(datamodule)
    if data_digest is None:
        data_digest = datamodule_digest(datamodule) if datamodule is not None else {}
    cls = type(pl_module)
    reference = getattr(getattr(pl_module, "policy", None), "reference", None)
    reward_source = getattr(getattr(pl_module, "reward_model", None), "source", None)
    return {
        "objective": class_path(cls),
        "data": dict(data_digest),
        "seeds": effective_seeds(pl_module, datamodule),
        "reference": getattr(reference, "digest", None),
        # a reward model read from a folder, by its weights (a rewritten folder scores differently)
        "reward_model": source_digest(reward_source) if _is_local(reward_source) else None,
        "batch_size": settings.get("batch_size"),
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "world_size": trainer.world_size,
        "lengths": {name: settings[name] for name in _LENGTH_SETTINGS if name in settings},
        "max_steps": trainer.max_steps,
        "max_epochs": trainer.max_epochs,
        "versions": {name: _version(name) for name in VERSIONED},
    }


class ManifestComparison:
    """The differences between a checkpoint's manifest (``saved``) and the current run's (``current``).

    ``refusals`` are differences a resume must not silently cross, ``warnings`` ones worth telling, ``notes`` the
    expected ones (a longer run). Each is a list of short phrases such as ``"batch size 16 -> 8"``.
    """

    def __init__(self, saved: Mapping[str, Any], current: Mapping[str, Any],
                 saved_hparams: Mapping[str, Any] | None = None,
                 current_hparams: Mapping[str, Any] | None = None) -> None:
        self.refusals: list[str] = []
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self._compare(saved, current)
        if saved_hparams is not None and current_hparams is not None:
            self.warnings += _hparam_changes(saved_hparams, current_hparams)

    def _compare(self, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
        def changed(key: str, label: str, into: list[str]) -> None:
            old, new = saved.get(key), current.get(key)
            if key in saved and old != new:
                into.append(f"{label} {old} -> {new}")

        if "objective" in saved and current_class_path(saved["objective"]) != current.get("objective"):
            self.refusals.append(f"objective {saved['objective']} -> {current.get('objective')}")
        self._compare_data(saved.get("data") or {}, current.get("data") or {})
        self._compare_seeds(saved.get("seeds"), current.get("seeds") or {})
        old_reward, new_reward = saved.get("reward_model"), current.get("reward_model")
        if old_reward and new_reward and old_reward != new_reward:
            self.refusals.append(f"reward model weights {short(old_reward)} -> {short(new_reward)}")
        changed("batch_size", "batch size", self.refusals)
        changed("accumulate_grad_batches", "accumulate_grad_batches", self.refusals)
        changed("world_size", "world size", self.refusals)
        old_lengths, new_lengths = saved.get("lengths") or {}, current.get("lengths") or {}
        for name in sorted(set(old_lengths) | set(new_lengths)):
            if old_lengths.get(name) != new_lengths.get(name):
                self.refusals.append(f"{name} {old_lengths.get(name)} -> {new_lengths.get(name)}")
        changed("max_steps", "max_steps", self.notes)
        changed("max_epochs", "max_epochs", self.notes)
        old_versions, new_versions = saved.get("versions") or {}, current.get("versions") or {}
        for name in sorted(old_versions):
            if old_versions[name] != new_versions.get(name):
                self.warnings.append(f"{name} {old_versions[name]} -> {new_versions.get(name)}")

    def _compare_seeds(self, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> None:
        # the data order's seed decides which rows the saved position has already trained on; the others only warn
        for name in sorted(old or {}):
            if name in new and old[name] != new[name]:
                into = self.refusals if name == "data_order" else self.warnings
                label = "data.seed (the data order)" if name == "data_order" else f"{name} seed"
                into.append(f"{label} {old[name]} -> {new[name]}")

    def _compare_data(self, old: Mapping[str, object], new: Mapping[str, object]) -> None:
        for split, into in (("train", self.refusals), ("val", self.warnings)):
            if split not in old and split not in new:
                continue
            if old.get(split) != new.get(split):
                rows = f"{old.get(f'{split}_rows', 0)} -> {new.get(f'{split}_rows', 0)} rows"
                into.append(f"data {split} content changed ({rows})")


def check_resume(checkpoint: Mapping[str, Any], current: Mapping[str, Any], where: str, allow_changes: bool,
                 current_hparams: Mapping[str, Any] | None = None) -> ManifestComparison | None:
    """Compare the manifest in ``checkpoint`` (read from ``where``) with ``current``.

    Raises ``ResumeMismatchError`` on a refused difference unless ``allow_changes``; returns the comparison
    (``None`` when the checkpoint has no manifest), whose warnings and notes the caller reports.
    """
    saved = checkpoint.get(MANIFEST_KEY)
    if not isinstance(saved, Mapping):
        return None
    saved_hparams = checkpoint.get("hyper_parameters")
    comparison = ManifestComparison(saved, current, saved_hparams if isinstance(saved_hparams, Mapping) else None,
                                    current_hparams)
    if comparison.refusals and not allow_changes:
        raise ResumeMismatchError(f"cannot resume {where}: {', '.join(comparison.refusals)}; {OVERRIDE_HINT}")
    return comparison


def check_resumed(checkpoint: Mapping[str, Any], current: Mapping[str, Any], path: str, allow_changes: bool,
                  current_hparams: Mapping[str, Any] | None = None) -> None:
    """Check the checkpoint a fit resumes from (read from ``path``) against the run starting now (``current``):
    raise ``ResumeMismatchError`` on a refused difference unless ``allow_changes``, else say what differs."""
    where = shown_path(path)
    comparison = check_resume(checkpoint, current, where, allow_changes, current_hparams)
    if comparison is None:
        rank_zero_warn(f"{where} has no run manifest (written before lit-align recorded one): resuming "
                       "without checking that it comes from this run's objective, data and batching")
        return
    if comparison.refusals:
        rank_zero_warn(f"resuming {where} although it comes from a different run "
                       f"(checkpoint.resume_changes=allow): {', '.join(comparison.refusals)}")
    if comparison.warnings:
        rank_zero_warn(f"resuming {where}: {', '.join(comparison.warnings)}")
    if comparison.notes:
        rank_zero_info(f"resuming {where}: {', '.join(comparison.notes)}")


def check_objective(checkpoint: Mapping[str, Any], pl_module, path: str) -> None:
    """Refuse, in one line, a checkpoint (read from ``path``) that ``validate``/``test``/``predict``/``evaluate``
    would load into another objective than the one that wrote it (its weights would not fit, or would mean
    something else). A class path of an earlier version names the class it moved to."""
    saved = checkpoint.get(MANIFEST_KEY)
    objective = saved.get("objective") if isinstance(saved, Mapping) else None
    current = class_path(type(pl_module))
    if objective is not None and current_class_path(objective) != current:
        raise ResumeMismatchError(f"{shown_path(path)} was written by {objective}, not {current}: load it with the "
                                  "config that trained it (or the objective it names)")


def objective_mismatch(path: str, pl_module) -> UserError | None:
    """Why the checkpoint file at ``path`` cannot be loaded into ``pl_module`` (unreadable, refused, or written by
    another objective), as the one-line error to show; None when nothing in it says so."""
    try:
        check_objective(load_checkpoint_file(path), pl_module, path)
    except UserError as refusal:
        return refusal
    return None


def class_path(cls: type) -> str:
    """``module.QualifiedName`` of a class, as a manifest records it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def current_class_path(path: str) -> str:
    """A class path recorded by any lit-align version, with the module it has now (``lit_align._moved``)."""
    module, _, name = path.rpartition(".")
    return f"{MOVED.get(module, module)}.{name}"


def _hparam_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    # Top-level arguments of the objective; nested ones (the policy's settings) are compared as a whole.
    changes = []
    for name in sorted(set(old) | set(new)):
        if name.startswith("_") or name not in old or name not in new:
            continue
        if _plain(old[name]) != _plain(new[name]):
            changes.append(f"model.{name} {_short(old[name])} -> {_short(new[name])}")
    return changes


def _plain(value: Any) -> Any:
    """Containers as plain dicts and lists, so an ``AttributeDict`` equals the ``dict`` it was saved as."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return {"__type__": type(value).__name__, **_plain(vars(value))}
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(_plain(value)) if not isinstance(value, (int, float, str, bool, type(None))) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_local(source: Any) -> bool:
    return isinstance(source, str) and bool(source) and Path(source).expanduser().exists()


def _hparams(datamodule) -> dict[str, Any]:
    hparams = getattr(datamodule, "hparams", None) if datamodule is not None else None
    return dict(hparams) if isinstance(hparams, Mapping) else {}


def _version(distribution: str) -> str | None:
    if distribution == "lit_align":
        import lit_align

        return lit_align.__version__
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None

"""The shared DataModule: sources, formats, validation and test splits, seeded resumable loading, dynamic padding."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, DistributedSampler

from lit_align.data.collate import CompletionCollator
from lit_align.data.columns import Column, check_columns_present, merge_columns, normalise_columns
from lit_align.data.formats import Example, Format, RowEncoder
from lit_align.data.loader import ResumableDataLoader, ResumableSampler
from lit_align.data.presets import find_preset, layout_hint, load_source
from lit_align.data.sources import DataError, describe, holds_one_split
from lit_align.models.loading import load_tokenizer
from lit_align.runs.seeds import resolve_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataRequest:
    """What an objective asks of its data, handed to the DataModule by ``TextDataModule.connect``.

    Attributes:
        tokenizer: The tokenizer rows are tokenised with (its chat template renders conversations): the policy's.
            A DataModule whose own ``tokenizer`` setting names one uses that instead.
        columns: Columns of the user's data the objective reads besides prompt and completions, e.g.
            ``{"label": bool}`` (``lit_align.data.columns``), each put in ``batch[name]``.
    """

    tokenizer: Any = None
    columns: Mapping[str, Column | type] = field(default_factory=dict)


class TextDataModule(L.LightningDataModule):
    """Rows from a hub data set or local file, tokenised for the objective's policy.

    Args:
        path: Hub data set id, local file (json, jsonl, parquet, csv) or directory, ``tiny`` for the embedded
            default, or a preset's short name (``tldr-preference``, ``hh-rlhf``, ``ultrafeedback``, ...: see
            ``lit_align.data.presets``).
        split: Training split.
        name: The hub data set's configuration name.
        val_path: Validation data from another file, directory or data set; a single file is read whole (and
            ``val_split`` is not consulted). Without it, ``val_split`` is a split of ``path``.
        val_split: Validation split name, resolved like ``split``; a single-file ``path`` has no other split, so
            naming one without ``val_path`` is an error. ``None`` with ``val_fraction`` 0 means no validation.
        val_fraction: Fraction of the training rows held out for validation (seeded); only without ``val_split``
            and ``val_path``.
        test_path: Rows for ``lit-align test``, like ``val_path``. ``test`` never falls back to the validation
            rows: without ``test_path`` or ``test_split`` it stops and says to set one.
        test_split: Split of ``path`` (or of ``test_path``) for ``lit-align test``, resolved like ``val_split``;
            presets map ``test`` to the data set's own name.
        format: ``standard``, ``conversational``, ``implicit``, or ``auto`` to detect it.
        columns: Renames from this data's columns to ``prompt``/``chosen``/``rejected`` and to the columns the
            objective reads (e.g. ``{thumbs_up: label}``).
        max_length: Longest prompt + completion in tokens.
        max_prompt_length: Longest prompt in tokens (longer ones keep their end).
        prompt_delimiter: Where the last response starts in ``implicit`` transcripts.
        invalid_rows: ``error`` stops at a bad row naming file, row and field; ``skip`` drops and counts it.
        batch_size: Examples per batch on each device.
        eval_batch_size: Examples per validation batch (defaults to ``batch_size``).
        num_workers: Data loader worker processes.
        seed: Seed of the shuffling and of the validation hold-out; by default the run's ``seed_everything``
            (``lit_align.runs.seeds``).
        limit_rows: Use only the first N training rows (quick experiments).
        tokenizer: Tokenizer to use; by default the objective's (``connect``).
        pad_to_multiple_of: Round padded lengths up (e.g. 8 for tensor cores).
        preset: Read ``path`` (e.g. a local copy) in the layout of this preset; by default the preset ``path``
            names, if any; ``none`` turns presets off.

    The DataModule is told what the objective reads, never reaches for it: ``connect`` hands it a ``DataRequest``
    (the objective's tokenizer and columns) before ``setup``. An ``AlignmentModule`` does so when a Trainer attaches
    it (``fit``, ``validate``, ``test``, ``predict``, the CLI and ``lit-align evaluate`` alike); without a Trainer,
    call ``datamodule.connect(objective.data_request())`` yourself. Used untold, it refuses in one line unless
    its own ``tokenizer`` is set, and then reads no objective's columns.

    Columns besides prompt and completions (a label, a score, a weight: ``lit_align.data.columns``) are read when
    the objective asks for them (the request's ``columns``); ``require_columns`` adds more. Each reaches the batch
    as ``batch[name]``, one value per example; a row missing one, or holding a bad value, is an invalid row
    (``invalid_rows``).
    """

    #: Which columns hold completions; ``None`` lets the data decide (pairs, one completion or prompts only).
    completion_fields: ClassVar[tuple[str, ...] | None] = ("chosen", "rejected")

    def __init__(
        self,
        path: str = "tiny",
        split: str = "train",
        name: str | None = None,
        val_path: str | None = None,
        val_split: str | None = None,
        val_fraction: float = 0.0,
        test_path: str | None = None,
        test_split: str | None = None,
        format: Format = "auto",
        columns: dict[str, str] | None = None,
        max_length: int = 256,
        max_prompt_length: int = 128,
        prompt_delimiter: str = "\n\nAssistant:",
        invalid_rows: Literal["error", "skip"] = "error",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int | None = None,
        limit_rows: int | None = None,
        tokenizer: str | None = None,
        pad_to_multiple_of: int | None = None,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if val_fraction > 0 and (val_split is not None or val_path is not None):
            named = f"val_split={val_split!r}" if val_split is not None else f"val_path={val_path!r}"
            raise DataError(f"val_fraction={val_fraction} and {named} both choose the validation rows: keep one "
                            "(set val_split: null to hold out a fraction of the training rows)")
        self.save_hyperparameters()
        #: The effective seed of the data order and hold-out: ``seed``, else the run's ``seed_everything``.
        self.seed = resolve_seed(seed)
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self.test_examples: list[Example] = []
        self._tokenizer = None  # resolved from the ``tokenizer`` setting or the request, once
        self._request: DataRequest | None = None  # what the objective reads (``connect``)
        self._train_loader: ResumableDataLoader | None = None
        self._pending_loader_state: dict | None = None  # a resumed run's data position, until the loader exists
        self._required_columns: dict[str, Column] = {}
        self._encoded_for: tuple[Any, dict[str, Column]] | None = None  # tokenizer and columns of the examples

    # -- set-up ------------------------------------------------------------------------------------------------

    def connect(self, request: DataRequest) -> None:
        """Be told what the objective reads: its tokenizer and its columns.

        ``AlignmentModule`` calls it when a Trainer attaches the two, before this DataModule's ``setup``; call it
        yourself to use the DataModule without a Trainer: ``datamodule.connect(objective.data_request())``.
        Examples encoded for another request are encoded again at the next ``setup``.
        """
        self._request = DataRequest(request.tokenizer, normalise_columns(request.columns))
        if self.hparams.get("tokenizer") is None:
            self._tokenizer = request.tokenizer

    @property
    def tokenizer(self):
        """The ``tokenizer`` setting's, else the objective's (``connect``); refuses in one line when neither."""
        if self._tokenizer is None:
            if self.hparams.get("tokenizer") is not None:
                self._tokenizer = load_tokenizer(self.hparams.tokenizer)
            else:
                raise DataError(
                    f"{type(self).__name__} was not told what the objective reads: call "
                    "datamodule.connect(objective.data_request()) before setup (a Trainer does it for an "
                    "AlignmentModule), or set the data module's tokenizer"
                )
        return self._tokenizer

    def require_columns(self, columns: Mapping[str, Column | type]) -> None:
        """Read these columns of every row too, e.g. ``{"label": bool}``, into ``batch[name]``.

        For columns the objective does not declare, or data read with no objective; adds to the columns of the
        request (``connect``). Examples encoded before are encoded again at the next ``setup``.
        """
        self._required_columns = merge_columns(self._required_columns, columns)

    def declared_columns(self) -> dict[str, Column]:
        """The columns read into each example: those of ``require_columns`` and of the objective's request."""
        return merge_columns(self._required_columns, self._request.columns if self._request is not None else {})

    def encoder(
        self, completion_fields: tuple[str, ...], data_columns: Mapping[str, Column] | None = None
    ) -> RowEncoder:
        """The row encoder of this data; ``data_columns``: the columns it reads (default ``declared_columns()``)."""
        h = self.hparams
        layout = find_preset(h.path, h.preset)
        fmt = layout.format if h.format == "auto" and layout is not None else h.format
        return RowEncoder(
            self.tokenizer, completion_fields, fmt, h.columns, h.max_length, h.max_prompt_length,
            h.prompt_delimiter, h.invalid_rows, self.declared_columns() if data_columns is None else data_columns,
        )

    def _forget_examples_encoded_otherwise(self) -> None:
        """Drop encoded examples of another tokenizer or other columns than those of now (another objective, or
        ``require_columns`` after a ``setup``), so that ``setup`` encodes them again."""
        tokenizer, columns = self.tokenizer, self.declared_columns()
        encoded = self._encoded_for
        if encoded is None or encoded[0] is not tokenizer or encoded[1] != columns:
            self.train_examples, self.val_examples, self.test_examples = [], [], []
            self._encoded_for = (tokenizer, columns)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        self._forget_examples_encoded_otherwise()
        if stage == "test":  # test needs its own rows only
            if not self.test_examples:
                test = self._role_rows("test", h.test_path, h.test_split)
                if test is None:
                    raise DataError("lit-align test needs rows of its own: set data.test_path (a file, directory or "
                                    "data set) or data.test_split (a split of data.path); validation rows are not "
                                    "reused as test rows")
                rows, source = test
                self.test_examples = self._encode(rows, self._completion_fields(rows, source), source)
                rank_zero_info(f"data: testing on {source} ({len(self.test_examples)} rows)")
            return
        if self.train_examples:
            return
        train_rows = load_source(h.path, h.split, h.name, h.preset)
        train_source = self._describe(h.path, h.split, "split")
        if h.limit_rows is not None:
            train_rows = train_rows.select(range(min(h.limit_rows, len(train_rows))))
        val = self._role_rows("val", h.val_path, h.val_split)
        if val is None and h.val_fraction > 0:
            parts = train_rows.train_test_split(test_size=h.val_fraction, seed=self.seed, shuffle=True)
            train_rows = parts["train"]
            val = parts["test"], f"{train_source} (held out: val_fraction={h.val_fraction}, seed={self.seed})"
        fields = self._completion_fields(train_rows, train_source)
        self.train_examples = self._encode(train_rows, fields, train_source)
        said = f"data: training on {train_source} ({len(self.train_examples)} rows)"
        if val is not None:
            self.val_examples = self._encode(val[0], fields, val[1])
            said += f", validating on {val[1]} ({len(self.val_examples)} rows)"
        rank_zero_info(said + ("" if val is not None else ", no validation rows"))

    def _role_rows(self, role: str, path: str | None, split: str | None):
        """``(rows, source)`` for validation or test (``role``), or ``None`` when neither is set.

        From a ``<role>_path`` one-split source the whole source; from the training ``path`` only a named split of
        a source that has several: a single file asked for another split refuses instead of reading itself again.
        """
        h = self.hparams
        if path is None and split is None:
            return None
        if path is None and holds_one_split(h.path):
            kind = "a saved Dataset folder" if Path(h.path).is_dir() else "a single file"
            raise DataError(
                f"{h.path} is {kind} with one split, so {role}_split={split!r} cannot be read from it: give "
                f"the {'validation' if role == 'val' else 'test'} rows as {role}_path"
                + (", or hold some out with val_fraction (and set val_split: null)" if role == "val" else "")
            )
        source_path = path or h.path
        rows = load_source(source_path, split if not holds_one_split(source_path) else None, h.name, h.preset)
        return rows, self._describe(source_path, split, f"{role}_split")

    @staticmethod
    def _describe(path: str, split: str | None, setting: str) -> str:
        """How the log line names the rows; says so where a single file made the split name moot."""
        source = describe(path, split)
        if holds_one_split(path) and split is not None and (setting != "split" or split != "train"):
            source += f" (read whole; {setting}={split!r} is not consulted)"
        return source

    def _completion_fields(self, rows, source: str) -> tuple[str, ...]:
        """The completion columns, after refusing a column mapping onto a column the data already has."""
        columns = rows.column_names
        mapping = self.hparams.columns or {}
        sources_of: dict[str, list[str]] = {}
        for column in columns:
            sources_of.setdefault(mapping.get(column, column), []).append(column)
        for target, found in sources_of.items():
            if len(found) < 2:
                continue
            mapped = [c for c in found if c != target]
            if target in found:  # the data has the target column itself, unmapped
                raise DataError(
                    f"{source}: columns maps {mapped[0]!r} to {target!r}, but the data already has a {target!r} "
                    f"column: drop one of them from the data, or map {target!r} to another name as well"
                )
            raise DataError(f"{source}: columns maps {' and '.join(map(repr, mapped))} all to {target!r}: map one")
        return self._with_layout_hint(lambda: self.resolve_completion_fields(columns), columns)

    def resolve_completion_fields(self, columns: list[str]) -> tuple[str, ...]:
        if self.completion_fields is not None:
            return self.completion_fields
        mapped = {(self.hparams.columns or {}).get(c, c) for c in columns}
        if {"chosen", "rejected"} <= mapped:
            return ("chosen", "rejected")
        return ("completion",) if "completion" in mapped else ()

    def _with_layout_hint(self, step, columns: list[str]):
        """Run ``step``; a data error on rows in a preset's layout, read without it, says which preset to set."""
        try:
            return step()
        except DataError as err:
            # a column the objective reads (e.g. ``label`` of unpaired data) is no sign of a preset's layout
            read = self.declared_columns()
            renames = self.hparams.columns or {}
            columns = [c for c in columns if renames.get(c, c) not in read]
            hint = layout_hint(columns) if find_preset(self.hparams.path, self.hparams.preset) is None else None
            if hint is None or self.hparams.preset == "none":
                raise
            raise DataError(f"{err}; {hint}") from err

    def _encode(self, rows, fields: tuple[str, ...], source: str) -> list[Example]:
        encoder = self.encoder(fields)
        for line in check_columns_present(encoder.data_columns, rows, source, self.hparams.columns):
            rank_zero_info(line)
        examples, stats = self._with_layout_hint(lambda: encoder.encode_all(rows, source), rows.column_names)
        log.info(stats.summary(source))
        if stats.kept < stats.rows or stats.truncated_prompts or stats.truncated_completions:
            print(stats.summary(source))  # a dropped or truncated row is never silent
        return examples

    def examples(self, split: Literal["train", "val", "test"]) -> list[Example]:
        """The encoded rows of ``split`` (empty before ``setup`` and for a split the data does not have)."""
        return {"train": self.train_examples, "val": self.val_examples, "test": self.test_examples}[split]

    # -- loaders -----------------------------------------------------------------------------------------------

    def collator(self):
        return CompletionCollator(self.tokenizer.pad_token_id, self.hparams.pad_to_multiple_of)

    def train_dataloader(self) -> DataLoader:
        if not self.train_examples:
            raise DataError("the training data set is empty")
        trainer = self.trainer
        sampler = ResumableSampler(
            self.train_examples,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            shuffle=True,
            seed=self.seed,
        )
        consumed = (lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed) if trainer else None
        self._train_loader = ResumableDataLoader(
            self.train_examples, sampler, consumed_batches=consumed, batch_size=self.hparams.batch_size,
            collate_fn=self.collator(), num_workers=self.hparams.num_workers,
        )
        if self._pending_loader_state is not None:
            self._train_loader.load_state_dict(self._pending_loader_state)
            self._pending_loader_state = None
        return self._train_loader

    # -- resume: the position in the training data travels in the checkpoint (see loader.py for why here) ------

    def state_dict(self) -> dict:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: dict) -> None:
        loader_state = state.get("train_loader")
        if loader_state is not None and self._train_loader is not None:
            self._train_loader.load_state_dict(loader_state)  # iteration is lazy: not started yet
        else:
            self._pending_loader_state = loader_state

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_examples:
            return []
        return DataLoader(
            self.val_examples, batch_size=self.hparams.eval_batch_size or self.hparams.batch_size,
            collate_fn=self.collator(), num_workers=self.hparams.num_workers,
        )

    def test_dataloader(self) -> DataLoader:
        if not self.test_examples:
            if "test_path" in inspect.signature(type(self).__init__).parameters:
                raise DataError("no test rows: set data.test_path or data.test_split (test never reuses the "
                                "validation rows)")
            raise DataError(f"{type(self).__name__} has no test rows; lit-align validate reports on its validation "
                            "rows")
        return DataLoader(
            self.test_examples, batch_size=self.hparams.eval_batch_size or self.hparams.batch_size,
            collate_fn=self.collator(), num_workers=self.hparams.num_workers,
        )

    def predict_dataloader(self) -> DataLoader | list:
        examples = self.val_examples or self.train_examples  # documented: the training prompts when no validation
        rank_zero_info(f"data: predicting on the {'validation' if self.val_examples else 'training'} rows "
                       f"({len(examples)} rows)")
        trainer = self.trainer
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            # Every rank gets the same number of prompts (the last ones repeat those at the start), so every rank
            # runs the same number of batches: under FSDP2 each generation step is a collective. Lightning's own
            # predict sampler gives ranks unequal shares instead; the writers drop the repeats by data row.
            sampler = DistributedSampler(examples, trainer.world_size, trainer.global_rank, shuffle=False)
        return DataLoader(
            examples, batch_size=self.hparams.eval_batch_size or self.hparams.batch_size, sampler=sampler,
            collate_fn=self.collator(), num_workers=self.hparams.num_workers,
        )

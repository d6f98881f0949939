"""The shared DataModule: sources, formats, validation split, seeded resumable loading, dynamic padding."""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler

from lit_align.data.collate import CompletionCollator
from lit_align.data.formats import Example, Format, RowEncoder
from lit_align.data.loader import ResumableDataLoader, ResumableSampler
from lit_align.data.presets import find_preset, load_source
from lit_align.data.sources import DataError, describe
from lit_align.models import load_tokenizer

log = logging.getLogger(__name__)


class TextDataModule(L.LightningDataModule):
    """Rows from a hub data set or local file, tokenised for the objective's policy.

    Args:
        path: Hub data set id, local file (json, jsonl, parquet, csv) or directory, ``tiny`` for the embedded
            default, or a preset's short name (``tldr-preference``, ``hh-rlhf``, ``ultrafeedback``, ...: see
            ``lit_align.data.presets``).
        split: Training split.
        name: The hub data set's configuration name.
        val_path: Validation data from another file or data set (defaults to ``path``).
        val_split: Validation split name; ``None`` with ``val_fraction`` 0 means no validation.
        val_fraction: Fraction of the training rows held out for validation (seeded) when no split is named.
        format: ``standard``, ``conversational``, ``implicit``, or ``auto`` to detect it.
        columns: Renames from this data's columns to ``prompt``/``chosen``/``rejected``.
        max_length: Longest prompt + completion in tokens.
        max_prompt_length: Longest prompt in tokens (longer ones keep their end).
        prompt_delimiter: Where the last response starts in ``implicit`` transcripts.
        invalid_rows: ``error`` stops at a bad row naming file, row and field; ``skip`` drops and counts it.
        batch_size: Examples per batch on each device.
        eval_batch_size: Examples per validation batch (defaults to ``batch_size``).
        num_workers: Data loader worker processes.
        seed: Seed of the shuffling and of the validation hold-out.
        limit_rows: Use only the first N training rows (quick experiments).
        tokenizer: Tokenizer to use; by default the one of the model being trained.
        pad_to_multiple_of: Round padded lengths up (e.g. 8 for tensor cores).
        preset: Read ``path`` (e.g. a local copy) in the layout of this preset; by default the preset ``path``
            names, if any; ``none`` turns presets off.
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
        format: Format = "auto",
        columns: dict[str, str] | None = None,
        max_length: int = 256,
        max_prompt_length: int = 128,
        prompt_delimiter: str = "\n\nAssistant:",
        invalid_rows: Literal["error", "skip"] = "error",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
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
        self.save_hyperparameters()
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self._tokenizer = None
        self._train_loader: ResumableDataLoader | None = None
        self._pending_loader_state: dict | None = None  # a resumed run's data position, until the loader exists

    # -- set-up ------------------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            if self.hparams.tokenizer is not None:
                self._tokenizer = load_tokenizer(self.hparams.tokenizer)
            elif module is not None and getattr(module, "tokenizer", None) is not None:
                self._tokenizer = module.tokenizer
            else:
                raise RuntimeError("no tokenizer: attach the data module to a Trainer or set `tokenizer`")
        return self._tokenizer

    def encoder(self, completion_fields: tuple[str, ...]) -> RowEncoder:
        h = self.hparams
        layout = find_preset(h.path, h.preset)
        fmt = layout.format if h.format == "auto" and layout is not None else h.format
        return RowEncoder(
            self.tokenizer, completion_fields, fmt, h.columns, h.max_length, h.max_prompt_length,
            h.prompt_delimiter, h.invalid_rows,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_examples:
            return
        h = self.hparams
        train_rows = load_source(h.path, h.split, h.name, h.preset)
        if h.limit_rows is not None:
            train_rows = train_rows.select(range(min(h.limit_rows, len(train_rows))))
        val_rows, val_source = None, None
        if h.val_split is not None or h.val_path is not None:
            val_path = h.val_path or h.path
            val_rows = load_source(val_path, h.val_split or "train", h.name, h.preset)
            val_source = describe(val_path, h.val_split)
        elif h.val_fraction > 0:
            parts = train_rows.train_test_split(test_size=h.val_fraction, seed=h.seed, shuffle=True)
            train_rows, val_rows, val_source = parts["train"], parts["test"], describe(h.path, h.split) + " (held out)"
        fields = self.resolve_completion_fields(train_rows.column_names)
        self.train_examples = self._encode(train_rows, fields, describe(h.path, h.split))
        if val_rows is not None:
            self.val_examples = self._encode(val_rows, fields, val_source)

    def resolve_completion_fields(self, columns: list[str]) -> tuple[str, ...]:
        if self.completion_fields is not None:
            return self.completion_fields
        mapped = {(self.hparams.columns or {}).get(c, c) for c in columns}
        if {"chosen", "rejected"} <= mapped:
            return ("chosen", "rejected")
        return ("completion",) if "completion" in mapped else ()

    def _encode(self, rows, fields: tuple[str, ...], source: str) -> list[Example]:
        examples, stats = self.encoder(fields).encode_all(rows, source)
        log.info(stats.summary(source))
        if stats.kept < stats.rows or stats.truncated_prompts or stats.truncated_completions:
            print(stats.summary(source))  # a dropped or truncated row is never silent
        return examples

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
            seed=self.hparams.seed,
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

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        examples = self.val_examples or self.train_examples
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

"""A data loader that remembers where it is, so a resumed run neither replays nor skips data.

Lightning stores the ``state_dict`` of any training data loader that has one in the checkpoint, but hands it back
only when the loader is created after the loops are restored, which is not the case once ``configure_optimizers``
has asked for ``estimated_stepping_batches``. ``TextDataModule.state_dict`` therefore carries the position too, and
the DataModule is restored before any loader exists. The sampler is a ``DistributedSampler`` (seeded shuffling,
one shard per rank), so Lightning leaves it in place instead of wrapping it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A seeded, sharded order of the data set that can start part-way into an epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0  # samples of epoch `skip_epoch` already consumed on this rank
        self.skip_epoch = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self.epoch == self.skip_epoch:
            # A checkpoint taken on an epoch's last batch resumes in the next epoch, which must start from the
            # beginning: the skip only ever applies to the epoch it was recorded in.
            indices = indices[self.skip :]
        self.skip = 0  # only the first epoch after a resume starts part-way
        return iter(indices)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position within the epoch is saved in checkpoints and restored on resume.

    ``consumed_batches`` reports how many batches of this epoch the training loop has finished. Counting the
    batches this loader yielded would over-count: Lightning fetches one batch ahead of the one it trains on.
    """

    def __init__(
        self, dataset: Dataset, sampler: ResumableSampler, consumed_batches: Callable[[], int] | None = None, **kwargs
    ) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.consumed_batches = consumed_batches
        self._batches_yielded = 0
        self._epoch = 0

    def __iter__(self):
        self._epoch = self.sampler.epoch
        skipping = self.sampler.epoch == self.sampler.skip_epoch
        self._batches_yielded = self.sampler.skip // self.batch_size if skipping else 0
        for batch in super().__iter__():
            self._batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        consumed = self.consumed_batches() if self.consumed_batches is not None else self._batches_yielded
        return {"epoch": self._epoch, "batches_yielded": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip_epoch = state["epoch"]
        self.sampler.skip = state["batches_yielded"] * self.batch_size

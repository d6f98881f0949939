"""Rollout sources: inline is the synchronous loop; a worker samples ahead within max_staleness; resume loses and
replays no batch."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lit_align.generation.async_rollouts import InlineRollouts, ThreadedRollouts, rollout_source
from lit_align.generation.rollout import Rollout


def fake_rollout(batch: int) -> Rollout:
    """A one-row rollout whose token is the batch number, plus a random draw (to follow the RNG)."""
    ids = torch.tensor([[batch, int(torch.randint(0, 1000, ()))]])
    ones = torch.ones_like(ids)
    return Rollout(ids, ones, ones, 1, torch.tensor([True]), torch.tensor([0]))


def train(source, batches, steps_per_batch: int = 1, stop_after: int | None = None, trained=None, work=0.0):
    """The trainer's loop: submit each batch, train on what ``next`` returns; drain at the end. Returns
    ``[(batch, sampled version, trained-at version)]``."""
    trained = [] if trained is None else trained

    def update(sampled):
        trained.append((sampled.batch, sampled.rollout.version, source.version))
        for _ in range(steps_per_batch):
            time.sleep(work)
            with source.weights_update():
                pass

    for batch in batches:
        source.submit(batch)
        sampled = source.next()
        if sampled is not None:
            update(sampled)
        if stop_after is not None and len(trained) == stop_after:
            return trained
    while (sampled := source.next(drain=True)) is not None:
        update(sampled)
    return trained


def test_staleness_zero_is_inline_and_draws_like_the_synchronous_loop():
    threads = threading.active_count()
    source = rollout_source(fake_rollout, max_staleness=0)
    assert isinstance(source, InlineRollouts) and threading.active_count() == threads  # no thread at all
    torch.manual_seed(0)
    trained = []
    for batch in range(4):  # the synchronous loop: sample, train, in one thread
        source.submit(batch)
        sampled = source.next()
        trained.append((sampled.batch, sampled.rollout.input_ids.tolist(), sampled.rollout.version))
        torch.rand(3)  # the update's own draws
        with source.weights_update():
            pass
    torch.manual_seed(0)
    expected = []
    for batch in range(4):
        expected.append((batch, fake_rollout(batch).input_ids.tolist(), batch))
        torch.rand(3)
    assert trained == expected


@pytest.mark.parametrize("max_staleness,steps", [(1, 1), (2, 1), (1, 3), (4, 2)])
def test_worker_records_versions_within_the_bound(max_staleness, steps):
    source = ThreadedRollouts(fake_rollout, max_staleness, steps_per_batch=steps)
    try:
        trained = train(source, range(8), steps_per_batch=steps, work=0.01)  # time for the worker to run ahead
    finally:
        source.close()
    assert [b for b, _, _ in trained] == list(range(8))  # every batch once, in data order
    assert all(0 <= at - sampled <= max_staleness for _, sampled, at in trained)
    # it did sample ahead: some rollout older than the weights it trains
    assert any(at > sampled for _, sampled, at in trained)


def test_worker_waits_instead_of_exceeding_the_bound():
    """With a slow trainer and a fast worker, the worker runs ahead only as far as the bound allows."""
    source = ThreadedRollouts(fake_rollout, max_staleness=1, steps_per_batch=1)
    try:
        for batch in range(5):
            source.submit(batch)
        time.sleep(0.2)  # the worker may sample batch 0 and batch 1 (trained at version 1); not batch 2
        assert source.pending() == [0, 1, 2, 3, 4]
        assert source._started == 2 and len(source._ready) == 2
    finally:
        source.close()


def test_worker_errors_reach_the_trainer():
    def broken(batch):
        raise ValueError("no engine")

    source = ThreadedRollouts(broken, max_staleness=1)
    try:
        source.submit(0)
        source.submit(1)
        with pytest.raises(RuntimeError, match="worker failed"):
            source.next()
    finally:
        source.close()


@pytest.mark.parametrize("max_staleness", [0, 1, 2])
def test_resume_neither_loses_nor_replays(max_staleness):
    """Stop after 3 trained batches: the checkpoint holds the pending batches; the resumed run submits them first,
    then the batches the data loader has not delivered yet."""
    data = list(range(10))
    first = rollout_source(fake_rollout, max_staleness)
    delivered = []

    def deliver(batches):
        for b in batches:
            delivered.append(b)
            yield b

    before = train(first, deliver(data), stop_after=3)
    pending, version = first.pending(), first.version  # what on_save_checkpoint stores
    first.close()
    assert pending == delivered[len(before):]
    resumed = rollout_source(fake_rollout, max_staleness, version=version)
    try:
        for batch in pending:
            resumed.submit(batch)
        after = train(resumed, data[len(delivered):])
    finally:
        resumed.close()
    assert [b for b, _, _ in before + after] == data
    assert all(0 <= at - sampled <= max_staleness for _, sampled, at in before + after)

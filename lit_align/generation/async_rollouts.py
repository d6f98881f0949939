"""Where rollouts come from: inline (the synchronous loop) or a generation worker ahead of the trainer.

The trainer ``submit``s each batch of prompts in data order and asks ``next`` for the oldest rollout it has not
trained on yet; every optimizer step runs inside ``weights_update()``, which counts the weight versions (a version
is one optimizer step). Each ``Rollout`` records the ``version`` of the weights that sampled it.

- ``InlineRollouts`` (``max_staleness: 0``) samples in ``next``, from the weights of that moment: exactly the
  synchronous loop (no thread, no lock, the same random draws in the same order).
- ``ThreadedRollouts`` (``max_staleness >= 1``) samples on a worker thread while the trainer updates. A rollout
  sampled by weights of version ``v`` is trained on at a version ``<= v + max_staleness``: the worker waits before
  it starts a batch that would be trained on later than that, and ``next`` checks it again. ``next`` keeps
  ``lag`` batches in flight (it answers None while filling them), so batch k is trained on at step k + lag;
  ``next(drain=True)`` empties them at the end of an epoch.

Thread safety. The worker holds ``weights_lock`` (the lock ``weights_update`` takes around the optimizer step)
while it reads the trainer's weights: around the whole ``generate`` when it samples from the trained module itself
(``refresh=None``), or only around ``refresh`` when it samples from a generation copy that ``refresh`` updates
(the copy costs one more set of the policy's weights in memory, no gradients or optimizer state). Without a copy
the sampling overlaps only the trainer's no-grad forwards, loss and backward; with one, the optimizer step too.

A separate inference server fits the same ``RolloutSource`` protocol: ``submit`` sends prompts, ``weights_update``
pushes weights after the step, ``next`` receives samples stamped with the version the server held.

Resume: ``pending()`` lists the batches submitted and not yet trained on (generated or not, in order). A
checkpoint stores them and the resumed run submits them again before any new batch, so that no batch is lost
(the data loader resumes after the last batch it delivered) and none is trained on twice (their rollouts, if any,
were never trained on: they are drawn again from the resumed weights).
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from lit_align.generation.rollout import Rollout

Batch = Any
Generate = Callable[[Batch], Rollout]


@dataclass
class Sampled:
    """A batch of prompts and its rollout (``rollout.version``: the weights that sampled it)."""

    batch: Batch
    rollout: Rollout


class RolloutSource(Protocol):
    """What the trainer asks for rollouts (module doc)."""

    max_staleness: int
    version: int

    def submit(self, batch: Batch) -> None:
        """Queue a batch of prompts, in data order."""

    def next(self, drain: bool = False) -> Sampled | None:
        """The oldest batch not trained on yet with its rollout; None while the pipeline fills (unless ``drain``,
        or when nothing is queued)."""

    def weights_update(self) -> Any:
        """A context manager around one optimizer step; the version counts one more on leaving it."""

    def pending(self) -> list[Batch]:
        """The batches submitted and not yet returned by ``next``, in order."""

    def close(self) -> None:
        """Stop sampling; rollouts not returned yet are dropped (their batches stay in ``pending``)."""


class InlineRollouts:
    """The synchronous loop: ``next`` samples the oldest queued batch from the weights of the moment.

    Args:
        generate: samples one batch of prompts from the current weights.
        version: the weight version to start from (a resumed run's optimizer steps).
    """

    max_staleness = 0
    lag = 0

    def __init__(self, generate: Generate, version: int = 0) -> None:
        self.generate = generate
        self.version = version
        self._queue: deque[Batch] = deque()

    def submit(self, batch: Batch) -> None:
        self._queue.append(batch)

    def next(self, drain: bool = False) -> Sampled | None:
        if not self._queue:
            return None
        batch = self._queue.popleft()
        rollout = self.generate(batch)
        rollout.version = self.version
        return Sampled(batch, rollout)

    @contextmanager
    def weights_update(self) -> Iterator[None]:
        yield
        self.version += 1

    def pending(self) -> list[Batch]:
        return list(self._queue)

    def close(self) -> None:
        pass


class ThreadedRollouts:
    """A generation worker thread that samples up to ``max_staleness`` weight versions ahead of the trainer.

    Args:
        generate: samples one batch of prompts (from the trained module, or from the copy ``refresh`` updates).
        max_staleness: how many versions older than the trainer's a rollout may be when trained on (>= 1).
        steps_per_batch: optimizer steps the trainer takes on each batch (how fast the version moves).
        refresh: copies the trainer's weights into the generation copy (None: ``generate`` reads the trained
            module itself, under the weights lock).
        version: the weight version to start from.
    """

    def __init__(self, generate: Generate, max_staleness: int, steps_per_batch: int = 1,
                 refresh: Callable[[], None] | None = None, version: int = 0) -> None:
        if max_staleness < 1 or steps_per_batch < 1:
            raise ValueError(f"need max_staleness >= 1 and steps_per_batch >= 1, got {max_staleness}, "
                             f"{steps_per_batch}")
        self.generate = generate
        self.refresh = refresh
        self.max_staleness = max_staleness
        self.steps_per_batch = steps_per_batch
        #: batches kept in flight: with a bound below one batch's steps, one batch that starts late in the update
        self.lag = max(1, max_staleness // steps_per_batch)
        self.version = version
        self.weights_lock = threading.Lock()
        self._cond = threading.Condition()
        self._jobs: deque[Batch] = deque()
        self._ready: deque[Sampled] = deque()
        self._running: Batch | None = None
        self._started = self._consumed = 0
        self._last_consumed_version = version - steps_per_batch  # job 0 is trained on at the start version
        self._error: BaseException | None = None
        self._stop = self._waiting = False
        self._thread = threading.Thread(target=self._work, name="lit-align-rollouts", daemon=True)
        self._thread.start()

    # -- the trainer's side ------------------------------------------------------------------------------------

    def submit(self, batch: Batch) -> None:
        with self._cond:
            self._jobs.append(batch)
            self._cond.notify_all()

    def next(self, drain: bool = False) -> Sampled | None:
        with self._cond:
            outstanding = len(self._ready) + (self._running is not None) + len(self._jobs)
            if outstanding == 0 or (outstanding <= self.lag and not drain):
                return None
            self._waiting = True  # the oldest job, if not started yet, is trained on now: it may start
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._ready or self._error is not None)
            self._waiting = False
            if self._error is not None:
                raise RuntimeError("the rollout worker failed") from self._error
            sampled = self._ready.popleft()
            staleness = self.version - sampled.rollout.version
            if not 0 <= staleness <= self.max_staleness:  # the worker's wait makes this impossible
                raise RuntimeError(f"a rollout of weight version {sampled.rollout.version} reached the trainer at "
                                   f"version {self.version}: beyond max_staleness={self.max_staleness}")
            self._consumed += 1
            self._last_consumed_version = self.version
            self._cond.notify_all()
            return sampled

    @contextmanager
    def weights_update(self) -> Iterator[None]:
        with self.weights_lock:
            yield
            with self._cond:
                self.version += 1
                self._cond.notify_all()

    def pending(self) -> list[Batch]:
        with self._cond:
            running = [] if self._running is None else [self._running]
            return [s.batch for s in self._ready] + running + list(self._jobs)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()

    # -- the worker's side -------------------------------------------------------------------------------------

    def _may_start(self) -> bool:
        """Whether the next job, sampled now, is trained on within ``max_staleness`` versions: job j is trained on
        ``steps_per_batch`` versions after job j-1 was taken by ``next``."""
        ahead = self._started - self._consumed + 1
        if ahead == 1 and self._waiting:
            return True
        trained_at = self._last_consumed_version + ahead * self.steps_per_batch
        return trained_at - self.version <= self.max_staleness

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or (self._jobs and self._may_start()))
                if self._stop:
                    return
                batch = self._jobs.popleft()
                self._running = batch
                self._started += 1
            try:
                rollout = self._sample(batch)
            except BaseException as err:  # handed to the trainer by next()
                with self._cond:
                    self._error = err
                    self._cond.notify_all()
                return
            with self._cond:
                self._running = None
                if self._stop:  # dropped: the batch stays pending
                    self._jobs.appendleft(batch)
                else:
                    self._ready.append(Sampled(batch, rollout))
                self._cond.notify_all()

    def _sample(self, batch: Batch) -> Rollout:
        with self.weights_lock:
            version = self.version
            if self.refresh is None:
                rollout = self.generate(batch)
            else:
                self.refresh()
        if self.refresh is not None:
            rollout = self.generate(batch)
        rollout.version = version
        return rollout


def rollout_source(generate: Generate, max_staleness: int = 0, steps_per_batch: int = 1,
                   refresh: Callable[[], None] | None = None, version: int = 0) -> InlineRollouts | ThreadedRollouts:
    """The source for ``max_staleness``: inline at 0 (no thread), else a worker thread."""
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
    if max_staleness == 0:
        return InlineRollouts(generate, version)
    return ThreadedRollouts(generate, max_staleness, steps_per_batch, refresh, version)

"""Batching columnar splits through grain: seeded, epoch-wise, resumable.

The training stream is a `grain.MapDataset` whose element t is the batch of
step t: a pure function of (seed, t).  Its position is therefore just the
step number stored in the train state, so a resumed run sees exactly the
batches an uninterrupted one would, with no iterator state to checkpoint
beyond the step.

Why batches and not examples as grain elements: grain's per-example index
shuffle runs in Python once per example, slower than the train step consumes
examples.  Here grain orders the steps, runs the batch assembly
on a prefetch thread (overlapping the jitted step), and the batch itself is
one vectorised gather per column from a cached per-epoch permutation
(`numpy.random.default_rng([seed, epoch])`; each epoch's remainder dropped).
"""
from __future__ import annotations

import functools
import sys
import threading
from typing import Iterator, Mapping

import grain
import numpy as np

Arrays = Mapping[str, np.ndarray]

# Upper bound on steps of one stream (grain map datasets are finite).
_MAX_STEPS = sys.maxsize // 2


def num_rows(arrays: Arrays) -> int:
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"columns have different lengths: {lengths}")
  return next(iter(lengths.values()))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the n training rows in `epoch` (the documented rule)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


class StepBatches:
  """step -> the batch of that step (thread-safe; grain map function)."""

  def __init__(self, arrays: Arrays, batch_size: int, seed: int):
    n = num_rows(arrays)
    if batch_size < 1 or n // batch_size == 0:
      raise ValueError(f"batch_size {batch_size} must be between 1 and the "
                       f"{n} training rows; lower train.batch_size")
    self.arrays = dict(arrays)
    self.batch_size = batch_size
    self.seed = seed
    self.per_epoch = n // batch_size
    self._lock = threading.Lock()
    self._order = functools.lru_cache(maxsize=2)(
        lambda epoch: epoch_order(n, seed, epoch))

  def indices(self, step: int) -> np.ndarray:
    epoch, i = divmod(int(step), self.per_epoch)
    with self._lock:
      order = self._order(epoch)
    return order[i * self.batch_size:(i + 1) * self.batch_size]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    idx = self.indices(step)
    return {k: v[idx] for k, v in self.arrays.items()}


def train_dataset(arrays: Arrays, batch_size: int, seed: int,
                  start_step: int = 0) -> grain.MapDataset:
  """Element i is the batch of step `start_step + i`."""
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  return grain.MapDataset.range(start_step, _MAX_STEPS).map(
      StepBatches(arrays, batch_size, seed))


def train_batches(arrays: Arrays, batch_size: int, seed: int,
                  start_step: int = 0, prefetch: int = 2
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled batches from step `start_step` on, assembled ahead of
  use on a grain prefetch thread (`prefetch` batches; 0 = synchronous)."""
  ds = train_dataset(arrays, batch_size, seed, start_step)
  if prefetch <= 0:
    return (ds[i] for i in range(_MAX_STEPS - start_step))
  options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))


def eval_batches(arrays: Arrays, batch_size: int
                 ) -> Iterator[dict[str, np.ndarray]]:
  """The split in order, in batches of `batch_size` (the last one smaller)."""
  n = num_rows(arrays)
  for start in range(0, n, batch_size):
    yield {k: v[start:start + batch_size] for k, v in arrays.items()}

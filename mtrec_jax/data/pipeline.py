"""Batching in-memory datasets: seeded, epoch-wise shuffling, resumable.

The position of the training iterator is just the step number: the batch for
step t is a pure function of (seed, t), so a resumed run sees exactly the
batches an uninterrupted one would.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

Arrays = Mapping[str, np.ndarray]


def num_rows(arrays: Arrays) -> int:
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"columns have different lengths: {lengths}")
  return next(iter(lengths.values()))


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(arrays: Arrays, batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled batches (dropping each epoch's remainder), from step
  `start_step` on."""
  n = num_rows(arrays)
  per_epoch = n // batch_size
  if per_epoch == 0:
    raise ValueError(f"batch_size {batch_size} is larger than the {n} "
                     f"training rows; lower train.batch_size")
  step = start_step
  epoch, order = None, None
  while True:
    e, i = divmod(step, per_epoch)
    if e != epoch:
      epoch, order = e, _epoch_order(n, seed, e)
    idx = order[i * batch_size:(i + 1) * batch_size]
    yield {k: v[idx] for k, v in arrays.items()}
    step += 1


def eval_batches(arrays: Arrays, batch_size: int
                 ) -> Iterator[dict[str, np.ndarray]]:
  """The split in order, in batches of `batch_size` (the last one smaller)."""
  n = num_rows(arrays)
  for start in range(0, n, batch_size):
    yield {k: v[start:start + batch_size] for k, v in arrays.items()}

"""Batching: deterministic by seed, resumable by step, every row once per epoch."""
import itertools

import numpy as np
import pytest

from mtrec_jax.data.pipeline import eval_batches, train_batches


def _arrays(n=10):
  return {"x": np.arange(n), "y": np.arange(n) * 10}


def test_each_epoch_is_a_permutation_and_seeded():
  batches = list(itertools.islice(train_batches(_arrays(), 3, seed=1), 6))
  epoch0 = np.concatenate([b["x"] for b in batches[:3]])
  assert len(set(epoch0)) == 9  # 10 // 3 batches, remainder dropped
  np.testing.assert_array_equal(batches[0]["y"], batches[0]["x"] * 10)
  again = list(itertools.islice(train_batches(_arrays(), 3, seed=1), 6))
  other = list(itertools.islice(train_batches(_arrays(), 3, seed=2), 6))
  assert all((a["x"] == b["x"]).all() for a, b in zip(batches, again))
  assert any((a["x"] != b["x"]).any() for a, b in zip(batches, other))


def test_resume_from_step_gives_the_same_batches():
  full = list(itertools.islice(train_batches(_arrays(), 3, seed=7), 8))
  resumed = list(itertools.islice(train_batches(_arrays(), 3, seed=7, start_step=5), 3))
  for a, b in zip(full[5:], resumed):
    np.testing.assert_array_equal(a["x"], b["x"])


def test_eval_batches_cover_in_order_and_errors():
  xs = np.concatenate([b["x"] for b in eval_batches(_arrays(), 4)])
  np.testing.assert_array_equal(xs, np.arange(10))
  with pytest.raises(ValueError, match="batch_size"):
    next(train_batches(_arrays(), 11, seed=0))

"""Cloze masks, CL4SRec augmentations and NT-Xent against plain references."""
from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from mtrec_jax.tasks import sequence_ssl as ssl

# Two batch shapes for everything ([240, L] for exact per-row checks,
# [BIG, L] for frequencies), so each jitted function compiles at most twice.
L = 12
BIG = 3000


def left_padded(lengths, length=L, vocab=50, seed=0):
  """int32 [B, length]: row b holds lengths[b] random ids in [1, vocab) at
  its end, zeros before."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((len(lengths), length), np.int32)
  for row, n in enumerate(lengths):
    if n:
      ids[row, length - n:] = rng.integers(1, vocab, n)
  return ids


def mixed_batch(rows=240, seed=0):
  """Every length 0..L, repeated."""
  return left_padded([i % (L + 1) for i in range(rows)], seed=seed)


def items_of(row):
  return [int(x) for x in row if x != 0]


def assert_left_padded(out, n):
  """Exactly n real items, all after the padding."""
  assert np.all(out[:len(out) - n] == 0), out
  assert np.all(out[len(out) - n:] != 0), out


# ----------------------------------------------------------------------------
# cloze_mask


def test_cloze_never_masks_padding_and_masks_every_nonempty_row():
  ids = mixed_batch()
  for mask_prob in (0.0, 0.2, 1.0):
    mask = np.asarray(ssl.cloze_mask(jax.random.key(1), ids, mask_prob))
    assert mask.shape == ids.shape and mask.dtype == bool
    assert not mask[ids == 0].any()
    nonempty = (ids != 0).any(axis=1)
    assert mask[nonempty].any(axis=1).all()
    assert not mask[~nonempty].any()
  # mask_prob = 0 leaves only the fallback: exactly the most recent item.
  mask = np.asarray(ssl.cloze_mask(jax.random.key(1), ids, 0.0))
  np.testing.assert_array_equal(mask.sum(axis=1), (ids != 0).any(axis=1))
  assert mask[(ids != 0).any(axis=1), L - 1].all()


@pytest.mark.parametrize("mask_prob", [0.2, 0.5])
def test_cloze_rate_matches_bernoulli_plus_fallback(mask_prob):
  """Total count against its exact mean and variance.

  A row of n items gets X = Bin(n, p) + [Bin(n, p) = 0] masks, so with
  q = 1 - p: E[X] = np + q^n and Var[X] = npq + q^n (1 - q^n) - 2np q^n.
  The total is a sum of thousands of independent bounded terms, close to
  normal, so a correct implementation lands within 5 standard deviations of
  the mean except with probability about 6e-7 (and the key is fixed).
  """
  lengths = np.random.default_rng(3).integers(0, L + 1, BIG)
  ids = left_padded(lengths, seed=3)
  mask = np.asarray(ssl.cloze_mask(jax.random.key(7), ids, mask_prob))
  p, q, n = mask_prob, 1 - mask_prob, lengths[lengths > 0].astype(float)
  mean = np.sum(n * p + q ** n)
  var = np.sum(n * p * q + q ** n * (1 - q ** n) - 2 * n * p * q ** n)
  assert abs(mask.sum() - mean) < 5 * math.sqrt(var), (mask.sum(), mean)
  if mask_prob == 0.2:
    # The fallback adds sum(q^n) masks; at p = 0.2 that is many standard
    # deviations, so a missing or doubled fallback would fail the check.
    assert np.sum(q ** n) > 10 * math.sqrt(var)


def test_cloze_is_deterministic_per_key_and_jittable():
  ids = mixed_batch()
  a = ssl.cloze_mask(jax.random.key(0), ids, 0.2)
  b = ssl.cloze_mask(jax.random.key(0), ids, 0.2)
  c = ssl.cloze_mask(jax.random.key(1), ids, 0.2)
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).any()
  jitted = jax.jit(ssl.cloze_mask)(jax.random.key(0), ids, 0.2)
  np.testing.assert_array_equal(a, jitted)


def test_cloze_rejects_bad_input():
  with pytest.raises(ValueError, match="mask_prob"):
    ssl.cloze_mask(jax.random.key(0), mixed_batch(), 1.5)
  with pytest.raises(ValueError, match=r"\[B, L\]"):
    ssl.cloze_mask(jax.random.key(0), np.zeros(5, np.int32), 0.2)
  with pytest.raises(ValueError, match="integers"):
    ssl.cloze_mask(jax.random.key(0), np.zeros((2, 5), np.float32), 0.2)


# ----------------------------------------------------------------------------
# crop / mask_items / reorder


def crop_len(eta, n):
  return max(1, math.floor(eta * n)) if n else 0


@pytest.mark.parametrize("eta", [0.0, 0.3, 0.6, 0.7, 1.0])
def test_crop_keeps_a_contiguous_run_of_the_stated_length(eta):
  ids = mixed_batch()
  out = np.asarray(ssl.crop(jax.random.key(2), ids, eta))
  assert out.shape == ids.shape and out.dtype == ids.dtype
  for row_in, row_out in zip(ids, out):
    items, kept = items_of(row_in), items_of(row_out)
    n, c = len(items), crop_len(eta, len(items))
    assert len(kept) == c, (eta, n)
    assert_left_padded(row_out, c)
    assert any(items[s:s + c] == kept for s in range(n - c + 1)), (items,
                                                                    kept)


def test_crop_offset_is_uniform():
  """n = 10, eta = 0.6: c = 6, offsets 0..4 each with probability 1/5."""
  rows = BIG
  ids = np.tile(np.arange(1, L + 1, dtype=np.int32), (rows, 1))
  ids[:, :L - 10] = 0
  out = np.asarray(ssl.crop(jax.random.key(4), ids, 0.6))
  starts = out[:, L - 6] - ids[:, L - 10]  # first kept item - first item
  counts = np.bincount(starts, minlength=5)
  assert counts.size == 5
  sd = math.sqrt(rows * 0.2 * 0.8)
  assert np.all(np.abs(counts - rows / 5) < 5 * sd), counts


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_mask_items_count_and_support(gamma):
  ids = mixed_batch()
  mask = np.asarray(ssl.mask_items(jax.random.key(3), ids, gamma))
  assert mask.shape == ids.shape and mask.dtype == bool
  assert not mask[ids == 0].any()
  n = (ids != 0).sum(axis=1)
  np.testing.assert_array_equal(mask.sum(axis=1),
                                [math.floor(gamma * k) for k in n])


def test_mask_items_is_uniform_over_positions():
  """n = 10, gamma = 0.3: each real position masked with probability 0.3."""
  rows = BIG
  ids = left_padded([10] * rows, seed=5)
  mask = np.asarray(ssl.mask_items(jax.random.key(5), ids, 0.3))
  freq = mask[:, L - 10:].sum(axis=0)
  sd = math.sqrt(rows * 0.3 * 0.7)
  assert np.all(np.abs(freq - 0.3 * rows) < 5 * sd), freq


def reorder_window_ok(items, out_items, r):
  """out_items equals items outside some window [s, s + r), and the window
  holds the same multiset."""
  n = len(items)
  for s in range(n - r + 1):
    outside = [k for k in range(n) if not s <= k < s + r]
    if (all(items[k] == out_items[k] for k in outside)
        and sorted(items[s:s + r]) == sorted(out_items[s:s + r])):
      return True
  return False


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.6, 1.0])
def test_reorder_shuffles_one_run_in_place(beta):
  ids = mixed_batch()
  out = np.asarray(ssl.reorder(jax.random.key(6), ids, beta))
  assert out.shape == ids.shape and out.dtype == ids.dtype
  np.testing.assert_array_equal(out == 0, ids == 0)  # padding untouched
  changed = 0
  for row_in, row_out in zip(ids, out):
    items, moved = items_of(row_in), items_of(row_out)
    r = math.floor(beta * len(items))
    assert sorted(items) == sorted(moved)
    assert reorder_window_ok(items, moved, r), (items, moved, r)
    changed += items != moved
  if beta >= 0.6:
    assert changed > len(ids) // 3  # it does shuffle


def test_reorder_permutation_is_uniform():
  """n = 3, beta = 1: the 6 orders of (1, 2, 3) with probability 1/6 each."""
  rows = BIG
  ids = np.zeros((rows, L), np.int32)
  ids[:, L - 3:] = [1, 2, 3]
  out = np.asarray(ssl.reorder(jax.random.key(8), ids, 1.0))
  orders = [tuple(row[L - 3:]) for row in out]
  counts = {perm: orders.count(perm) for perm in set(orders)}
  assert len(counts) == 6
  sd = math.sqrt(rows * (1 / 6) * (5 / 6))
  assert all(abs(c - rows / 6) < 5 * sd for c in counts.values()), counts


def test_rows_with_zero_or_one_item_are_left_alone():
  ids = mixed_batch()
  short = (ids != 0).sum(axis=1) <= 1
  key = jax.random.key(0)
  for eta in (0.1, 0.6, 1.0):
    out = np.asarray(ssl.crop(key, ids, eta))
    np.testing.assert_array_equal(out[short], ids[short])
  np.testing.assert_array_equal(
      np.asarray(ssl.reorder(key, ids, 0.99))[short], ids[short])
  assert not np.asarray(ssl.mask_items(key, ids, 0.99))[short].any()
  view, mask = ssl.augment(key, ids)
  np.testing.assert_array_equal(np.asarray(view)[short], ids[short])
  assert not np.asarray(mask)[short].any()


def test_ratios_are_checked():
  ids = mixed_batch()
  with pytest.raises(ValueError, match="eta"):
    ssl.crop(jax.random.key(0), ids, 1.5)
  with pytest.raises(TypeError, match="Python float"):
    jax.jit(ssl.mask_items)(jax.random.key(0), ids, 0.3)
  with pytest.raises(ValueError, match="ops"):
    ssl.augment(jax.random.key(0), ids, ops=("crop", "shuffle"))


def test_augmentations_are_deterministic_per_key():
  ids = mixed_batch()
  for fn in (ssl.crop, ssl.mask_items, ssl.reorder):
    first = np.asarray(fn(jax.random.key(11), ids, 0.6))
    np.testing.assert_array_equal(first, fn(jax.random.key(11), ids, 0.6))
    assert (first != np.asarray(fn(jax.random.key(12), ids, 0.6))).any()
  # Jittability of all three is covered by jitting `augment` below.


# ----------------------------------------------------------------------------
# augment


def test_augment_picks_uniformly_and_applies_the_pick():
  ids = mixed_batch(rows=BIG, seed=9)
  eta, gamma, beta = 0.6, 0.3, 0.6
  view, mask, choice = ssl.augment(jax.random.key(9), ids, eta, gamma, beta,
                                   with_choice=True)
  view, mask, choice = map(np.asarray, (view, mask, choice))
  counts = np.bincount(choice, minlength=3)
  sd = math.sqrt(len(ids) * (1 / 3) * (2 / 3))
  assert np.all(np.abs(counts - len(ids) / 3) < 5 * sd), counts
  for row_in, row_out, row_mask, pick in zip(ids, view, mask, choice):
    items, out_items = items_of(row_in), items_of(row_out)
    n = len(items)
    if pick == ssl.AUGMENTATIONS.index("mask"):
      np.testing.assert_array_equal(row_out, row_in)
      assert row_mask.sum() == math.floor(gamma * n)
      assert not row_mask[row_in == 0].any()
      continue
    assert not row_mask.any()
    if pick == ssl.AUGMENTATIONS.index("crop"):
      c = crop_len(eta, n)
      assert_left_padded(row_out, c)
      assert any(items[s:s + c] == out_items for s in range(n - c + 1))
    else:
      np.testing.assert_array_equal(row_out == 0, row_in == 0)
      assert reorder_window_ok(items, out_items, math.floor(beta * n))


def test_augment_ops_restricts_the_set():
  ids = mixed_batch()
  view, mask, choice = ssl.augment(jax.random.key(1), ids, ops=("reorder",),
                                   with_choice=True)
  assert (np.asarray(choice) == 2).all() and not np.asarray(mask).any()
  for row_in, row_out in zip(ids, np.asarray(view)):
    items = items_of(row_in)
    assert reorder_window_ok(items, items_of(row_out),
                             math.floor(ssl.REORDER_BETA * len(items)))
  _, _, choice = ssl.augment(jax.random.key(1), ids, ops=("crop", "mask"),
                             with_choice=True)
  assert set(np.unique(choice)) == {0, 1}
  jitted = jax.jit(ssl.augment)(jax.random.key(1), ids)
  eager = ssl.augment(jax.random.key(1), ids)
  for a, b in zip(jitted, eager):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------
# info_nce


def brute_info_nce(z1, z2, temperature, similarity):
  """Loops over the 2B views in float64."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  if similarity == "cosine":
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
  views, batch = len(z), len(z1)
  losses = []
  for i in range(views):
    positive = (i + batch) % views
    sims = {j: float(z[i] @ z[j]) / temperature for j in range(views)
            if j != i}
    top = max(sims.values())
    denom = sum(math.exp(s - top) for s in sims.values())
    losses.append(-(sims[positive] - top - math.log(denom)))
  return sum(losses) / len(losses)


def random_views(batch=9, dim=5, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(batch, dim)) * scale
  z2 = z1 + 0.5 * rng.normal(size=(batch, dim)) * scale
  return z1.astype(np.float32), z2.astype(np.float32)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_info_nce_matches_brute_force(similarity, temperature):
  for seed in range(3):
    z1, z2 = random_views(seed=seed)
    got = float(ssl.info_nce(z1, z2, temperature, similarity=similarity))
    want = brute_info_nce(z1, z2, temperature, similarity)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_info_nce_default_is_cl4srec_dot_product():
  z1, z2 = random_views(seed=4)
  assert float(ssl.info_nce(z1, z2)) == pytest.approx(
      brute_info_nce(z1, z2, 1.0, "dot"), rel=1e-5)


def test_info_nce_is_stable_for_large_logits():
  z1, z2 = random_views(seed=5, scale=30.0)  # dot products in the thousands
  got = float(ssl.info_nce(z1, z2))
  assert math.isfinite(got)
  assert got == pytest.approx(brute_info_nce(z1, z2, 1.0, "dot"), rel=1e-4,
                              abs=1e-3)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_info_nce_ignores_batch_order_and_view_order(similarity):
  z1, z2 = random_views(seed=6)
  perm = np.random.default_rng(6).permutation(len(z1))
  base = float(ssl.info_nce(z1, z2, 0.5, similarity=similarity))
  assert float(ssl.info_nce(z1[perm], z2[perm], 0.5,
                            similarity=similarity)) == pytest.approx(
                                base, rel=1e-6)
  assert float(ssl.info_nce(z2, z1, 0.5, similarity=similarity)) == \
      pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_info_nce_valid_equals_the_valid_rows_alone(similarity):
  z1, z2 = random_views(seed=7)
  valid = np.array([1, 0, 1, 1, 0, 1, 1, 0, 1], bool)
  # Dropped rows may hold anything finite, e.g. zeros from empty histories.
  z1[~valid] = 0.0
  got = float(ssl.info_nce(z1, z2, 0.5, similarity=similarity, valid=valid))
  want = float(ssl.info_nce(z1[valid], z2[valid], 0.5,
                            similarity=similarity))
  assert got == pytest.approx(want, rel=1e-6)
  grads = jax.grad(lambda a, b: ssl.info_nce(
      a, b, 0.5, similarity=similarity, valid=valid), argnums=(0, 1))(z1, z2)
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_array_equal(np.asarray(g)[~valid], 0.0)


def test_info_nce_edge_cases():
  z1, z2 = random_views(seed=8)
  none = np.zeros(len(z1), bool)
  assert float(ssl.info_nce(z1, z2, valid=none)) == 0.0
  # One row: its pair is the only candidate, so the loss is 0.
  assert float(ssl.info_nce(z1[:1], z2[:1])) == pytest.approx(0.0, abs=1e-6)
  # Cosine of an all-zero view is 0, with finite gradients.
  zeros = np.zeros_like(z1)
  loss, grad = jax.value_and_grad(
      lambda a: ssl.info_nce(a, z2, 0.5, similarity="cosine"))(zeros)
  assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()
  with pytest.raises(ValueError, match="similarity"):
    ssl.info_nce(z1, z2, similarity="l2")
  with pytest.raises(ValueError, match="same shape"):
    ssl.info_nce(z1, z2[:3])
  with pytest.raises(ValueError, match="temperature"):
    ssl.info_nce(z1, z2, 0.0)
  jitted = jax.jit(ssl.info_nce, static_argnames="similarity")
  assert float(jitted(z1, z2, 0.5, similarity="cosine")) == pytest.approx(
      float(ssl.info_nce(z1, z2, 0.5, similarity="cosine")), rel=1e-6)

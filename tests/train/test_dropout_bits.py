"""train.dropout_bits='hash': dropout masks from a counter hash.

The hash must give the masks dropout needs (each element kept with
probability 1 - rate, unrelated across elements and across keys), keep
JAX's key tree (split, fold_in), and leave a 'threefry' run unchanged.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.train import dropout_bits


def _mask(key, rate, shape, name="hash"):
  layer = nn.Dropout(rate, deterministic=False)
  x = jnp.ones(shape, jnp.float32)
  y = layer.apply({}, x, rngs={"dropout": dropout_bits.dropout_key(key,
                                                                   name)})
  return np.asarray(y != 0)


def test_fmix32_matches_murmur3_finaliser():
  """Against MurmurHash3's fmix32 written in plain Python integers."""
  def fmix(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)
  xs = [0, 1, 2, 0x9E3779B9, 0xFFFFFFFF, 123456789]
  got = dropout_bits.fmix32(jnp.asarray(xs, jnp.uint32))
  assert [int(v) for v in got] == [fmix(x) for x in xs]
  words = dropout_bits.hash_words(jnp.asarray([7, 11], jnp.uint32), 4)
  want = [fmix(fmix((i * 0x9E3779B9 + 7) & 0xFFFFFFFF) ^ 11)
          for i in range(4)]
  assert [int(v) for v in words] == want


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5, 0.9])
def test_keep_rate_and_scale(rate):
  """Kept fraction within 5 standard errors of 1 - rate; kept values are
  scaled by 1 / (1 - rate) as flax does."""
  key = jax.random.PRNGKey(3)
  shape = (64, 200, 50)
  layer = nn.Dropout(rate, deterministic=False)
  y = np.asarray(layer.apply({}, jnp.ones(shape), rngs={
      "dropout": dropout_bits.dropout_key(key, "hash")}))
  kept = y != 0
  n = kept.size
  p = 1 - rate
  assert abs(kept.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
  np.testing.assert_allclose(y[kept], 1 / p, rtol=1e-6)


def test_masks_are_unrelated_across_elements_and_keys():
  """Neighbouring elements, rows and the masks of split or folded keys are
  uncorrelated (|r| < 5 / sqrt(n)); bytes of the raw words are uniform
  (chi-square, 255 degrees of freedom, far below its 1e-6 quantile)."""
  key = jax.random.PRNGKey(0)
  shape = (128, 200, 20)
  m = _mask(key, 0.5, shape).astype(np.float64)
  n = m.size
  bound = 5 / np.sqrt(n)

  def corr(a, b):
    return np.corrcoef(a.ravel(), b.ravel())[0, 1]

  assert abs(corr(m[..., 1:], m[..., :-1])) < bound * 1.01
  assert abs(corr(m[:, 1:], m[:, :-1])) < bound * 1.01
  a, b = jax.random.split(key)
  for other in (a, b, jax.random.fold_in(key, 1), jax.random.PRNGKey(1)):
    assert abs(corr(m, _mask(other, 0.5, shape))) < bound
  words = np.asarray(dropout_bits.hash_words(
      jnp.asarray([5, 9], jnp.uint32), 1 << 20))
  counts = np.bincount((words >> 24).astype(np.int64), minlength=256)
  expected = words.size / 256
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 380  # the 1 - 1e-6 quantile of chi2(255) is about 378


def test_hash_draws_are_deterministic_and_keyed():
  key = jax.random.PRNGKey(42)
  a = _mask(key, 0.2, (32, 50))
  np.testing.assert_array_equal(a, _mask(key, 0.2, (32, 50)))
  assert (a != _mask(jax.random.PRNGKey(43), 0.2, (32, 50))).any()
  # 'threefry' is the step's key itself: the masks flax always drew.
  np.testing.assert_array_equal(
      _mask(key, 0.2, (32, 50), "threefry"),
      np.asarray(nn.Dropout(0.2, deterministic=False).apply(
          {}, jnp.ones((32, 50)), rngs={"dropout": key}) != 0))


def test_hash_keys_work_under_jit_and_vmap():
  """A population vmaps the step over its members' keys."""
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  f = jax.jit(jax.vmap(lambda k: nn.Dropout(0.5, deterministic=False).apply(
      {}, jnp.ones((8, 16)), rngs={"dropout": dropout_bits.dropout_key(
          k, "hash")})))
  out = np.asarray(f(keys))
  for i, k in enumerate(keys):
    np.testing.assert_array_equal(out[i] != 0, _mask(k, 0.5, (8, 16)))


def test_unknown_choice_names_the_choices():
  with pytest.raises(ValueError, match="'threefry', 'hash'"):
    dropout_bits.dropout_key(jax.random.PRNGKey(0), "rbg")


def test_corners_empty_draws_widths_and_extreme_rates():
  """An empty draw, 8/16-bit draws (the top bits of the 32-bit words),
  and rates 0 and 1 (flax returns the input / zeros) with a hash key."""
  key = dropout_bits.dropout_key(jax.random.PRNGKey(1), "hash")
  assert jax.random.bits(key, (0, 5), jnp.uint32).shape == (0, 5)
  assert _mask(jax.random.PRNGKey(1), 0.5, (0, 3)).shape == (0, 3)
  words = np.asarray(jax.random.bits(key, (1000,), jnp.uint32))
  for dtype, shift in ((jnp.uint8, 24), (jnp.uint16, 16)):
    small = np.asarray(jax.random.bits(key, (1000,), dtype))
    np.testing.assert_array_equal(small, words >> shift)
  x = jnp.full((4, 7), 3.0)
  for rate, want in ((0.0, x), (1.0, jnp.zeros_like(x))):
    y = nn.Dropout(rate, deterministic=False).apply({}, x,
                                                    rngs={"dropout": key})
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))

"""`model.encoder.attention = 'real_rows'` (models/causal_attention.py)
against the dense computation it replaces: with dropout off the encoder
equals the dense one (outputs at real positions, gradients, parameters);
with dropout, the attention fed the masks of a dense [B, H, L, L] keep mask
equals a float64 NumPy causal attention with those masks; the masks it
draws itself keep the right fraction; and the config refuses what it
cannot compute."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.models import causal_attention as ca
from mtrec_jax.models.build import default_model_config, encoder_config
from mtrec_jax.models.encoder import EncoderConfig, TransformerEncoder
from mtrec_jax.population_axis import POPULATION_AXIS


def left_padded(batch, length, width, seed, lengths=None):
  """Inputs that are exactly zero at each row's leading padding (as the
  'sasrec' layout's `input_tokens` makes them) and the real-token mask.
  The lengths include an empty row and a full one."""
  rng = np.random.default_rng(seed)
  if lengths is None:
    lengths = rng.integers(0, length + 1, size=batch)
    lengths[:2] = (0, length)
  real = np.arange(length)[None, :] >= (length - np.asarray(lengths))[:, None]
  x = rng.normal(size=(batch, length, width)).astype(np.float32)
  return x * real[..., None], real


def encoder(attention, layers, heads, width=8, dropout=0.0):
  return TransformerEncoder(
      num_layers=layers, num_heads=heads, hidden_dim=width, mlp_dim=2 * width,
      dropout_rate=dropout, attention_dropout_rate=dropout, causal=True,
      layout="sasrec", attention=attention)


@pytest.mark.parametrize("layers,heads", [(1, 2), (2, 1), (3, 2)])
def test_equals_dense_without_dropout(layers, heads):
  # 37 rows: not a whole number of groups of 16.
  x, real = left_padded(37, 30, 8, seed=layers * 10 + heads)
  dense, fast = encoder("dense", layers, heads), encoder("real_rows", layers,
                                                         heads)
  params = dense.init(jax.random.key(0), x, real)
  # The same parameter tree and values: checkpoints load in either.
  same = jax.tree.map(lambda a, b: a.shape == b.shape and bool(jnp.all(a == b)),
                      params, fast.init(jax.random.key(0), x, real))
  assert all(jax.tree.leaves(same))
  y_dense = jax.jit(dense.apply)(params, x, real)
  y_fast = jax.jit(fast.apply)(params, x, real)
  # Real positions always; with one block (no last-block skipping) every one.
  where = real[..., None] if layers > 1 else np.ones_like(real)[..., None]
  np.testing.assert_allclose(np.where(where, y_fast, 0),
                             np.where(where, y_dense, 0), atol=2e-5)

  weights = jnp.asarray(np.random.default_rng(1).normal(size=x.shape[1:]),
                        jnp.float32)

  def loss(p, model):
    return jnp.sum(jnp.where(real[..., None], model.apply(p, x, real), 0.0)
                   * weights)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g_dense, g_fast = grad(params, dense), grad(params, fast)
  for a, b in zip(jax.tree.leaves(g_dense), jax.tree.leaves(g_fast)):
    # The key bias's true gradient is zero (softmax ignores a shift shared
    # by a row); both give rounding noise there, hence the absolute floor.
    np.testing.assert_allclose(b, a, rtol=2e-4,
                               atol=2e-4 * max(1.0, float(jnp.abs(a).max())))


def numpy_attention(q, k, v, keep_mask, keep):
  """Float64 causal attention with a given [B, H, L, L] keep mask:
  softmax over keys <= t, then each probability kept or zeroed and scaled
  by 1 / keep (torch's MultiheadAttention dropout)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  length = q.shape[1]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k)
  logits = np.where(np.tril(np.ones((length, length), bool)), logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  w = np.where(keep_mask, w / keep, 0.0)
  return np.einsum("bhqk,bkhd->bqhd", w, v)


@pytest.mark.parametrize("mode", ca.MODES)
@pytest.mark.parametrize("group_size,num_buckets", [(4, 3), (16, 8), (5, 30)])
def test_dropout_path_equals_numpy_with_the_same_masks(mode, group_size,
                                                       num_buckets):
  batch, length, heads, depth, keep = 11, 17, 2, 3, 0.7
  rng = np.random.default_rng(7)
  lengths = rng.integers(0, length + 1, size=batch)
  lengths[:3] = (0, length, 1)
  lead = length - lengths
  q, k, v = (rng.normal(size=(batch, length, heads, depth)).astype(np.float32)
             for _ in range(3))
  pad_key, pad_value = (rng.normal(size=(heads, depth)).astype(np.float32)
                        for _ in range(2))
  if mode == "first":  # a zero input's key and value at the leading padding
    padding = (np.arange(length)[None, :] < lead[:, None])[..., None, None]
    k = np.where(padding, pad_key, k)
    v = np.where(padding, pad_value, v)
  keep_mask = rng.random((batch, heads, length, length)) < keep
  got = ca.real_row_attention(
      jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(lead),
      mode=mode, pad_key=jnp.asarray(pad_key), pad_value=jnp.asarray(pad_value),
      masks=ca.SlicedMasks(jnp.asarray(keep_mask)), keep=keep,
      group_size=group_size, num_buckets=num_buckets)
  want = numpy_attention(q, k, v, keep_mask, keep)
  # 'last' leaves the (never read) padding rows of the last block out.
  rows = (np.arange(length)[None, :] >= lead[:, None] if mode == "last"
          else np.ones((batch, length), bool))
  np.testing.assert_allclose(np.asarray(got)[rows], want[rows], rtol=1e-5,
                             atol=1e-5)


def test_drawn_masks_keep_the_right_fraction():
  keep, heads = 0.8, 2
  masks = ca.DrawnMasks(jax.random.key(3), keep, heads)
  n = jnp.asarray(np.random.default_rng(0).integers(0, 200, size=(64, 50)))
  counts = np.asarray(masks.padding_counts(n))
  assert counts.shape == (64, heads, 50)
  assert np.all(counts >= 0) and np.all(counts <= np.asarray(n)[:, None])
  assert np.all(counts == np.round(counts))
  total, kept = float(np.asarray(n).sum() * heads), float(counts.sum())
  # Binomial: mean keep * total, std sqrt(total * keep * (1 - keep)).
  assert abs(kept - keep * total) < 5 * np.sqrt(total * keep * (1 - keep))
  rows, pos = jnp.arange(64), jnp.arange(50)
  a = np.asarray(masks.explicit(jnp.asarray(0), rows, pos, pos))
  b = np.asarray(masks.explicit(jnp.asarray(1), rows, pos, pos))
  assert a.shape == (64, heads, 50, 50)
  assert abs(a.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / a.size)
  assert (a != b).mean() > 0.2  # groups draw different masks


def test_training_mode_is_finite_and_reproducible():
  x, real = left_padded(20, 24, 8, seed=4)
  fast = encoder("real_rows", 2, 2, dropout=0.3)
  params = fast.init(jax.random.key(0), x, real)

  @jax.jit
  def run(seed):
    return fast.apply(params, x, real, train=True,
                      rngs={"dropout": jax.random.key(seed)})

  y = run(5)
  assert np.all(np.isfinite(y))
  np.testing.assert_array_equal(y, run(5))
  assert not np.allclose(y, run(6))


def test_bucket_sizes():
  assert ca.bucket_sizes(200, 8) == (25, 50, 75, 100, 125, 150, 175, 200)
  assert ca.bucket_sizes(5, 8) == (1, 2, 3, 4, 5)
  assert ca.bucket_sizes(7, 3)[-1] == 7


def test_config_checks_and_hash_stability():
  with pytest.raises(ValueError, match="attention 'real_rows' needs"):
    EncoderConfig(attention="real_rows", layout="pre_ln", causal=True)
  with pytest.raises(ValueError, match="attention 'real_rows' needs"):
    EncoderConfig(attention="real_rows", layout="sasrec", causal=False)
  with pytest.raises(ValueError, match="must be one of"):
    EncoderConfig(attention="sparse", layout="sasrec", causal=True)
  cfg = encoder_config({"layout": "sasrec", "causal": True,
                        "pooling": "last", "attention": "real_rows"})
  assert cfg.attention == "real_rows"
  # An optional key: the default config (so every stored hash) lacks it.
  assert "attention" not in default_model_config().encoder


def test_population_vmap_keeps_one_branch_and_each_members_numbers():
  """In the population's vmap (axis `POPULATION_AXIS`) a group takes the
  largest bucket its members need: still a `cond` (one branch computed),
  and every member's context equals its solo one."""
  members, batch, length, heads, depth = 3, 9, 16, 1, 4
  rng = np.random.default_rng(11)
  q, k, v = (jnp.asarray(rng.normal(size=(members, batch, length, heads,
                                          depth)), jnp.float32)
             for _ in range(3))
  lead = jnp.asarray(rng.integers(0, length + 1, size=(members, batch)))
  pad = jnp.asarray(rng.normal(size=(heads, depth)), jnp.float32)

  def attend(q, k, v, lead):
    return ca.real_row_attention(q, k, v, lead, mode="last", pad_key=pad,
                                 pad_value=pad, masks=None, keep=1.0,
                                 group_size=4, num_buckets=4)

  population = jax.vmap(attend, axis_name=POPULATION_AXIS)
  assert "cond[" in str(jax.make_jaxpr(population)(q, k, v, lead))
  # An unnamed vmap batches the index: every bucket, selected after.
  assert "cond[" not in str(jax.make_jaxpr(jax.vmap(attend))(q, k, v, lead))
  got = np.asarray(jax.jit(population)(q, k, v, lead))
  for m in range(members):
    want = np.asarray(jax.jit(attend)(q[m], k[m], v[m], lead[m]))
    real = np.arange(length)[None, :] >= np.asarray(lead[m])[:, None]
    np.testing.assert_allclose(got[m][real], want[real], rtol=1e-6,
                               atol=1e-6)


def test_empty_batch():
  q = jnp.zeros((0, 8, 1, 4))
  pad = jnp.zeros((1, 4))
  for mode in ca.MODES:
    out = ca.real_row_attention(q, q, q, jnp.zeros((0,), jnp.int32),
                                mode=mode, pad_key=pad, pad_value=pad,
                                masks=None, keep=1.0, group_size=4,
                                num_buckets=3)
    assert out.shape == q.shape


@pytest.mark.parametrize("scale", [1e-3, 30.0, 300.0])
def test_extreme_logit_scales(scale):
  """Near-uniform and near-one-hot softmaxes (queries scaled by 1e-3 and
  by 30/300) against the float64 reference, padding rows and keys
  included."""
  batch, length, heads, depth = 6, 10, 1, 4
  rng = np.random.default_rng(int(scale * 1000) % 97)
  lead = np.array([0, 3, 10, 5, 1, 9])
  q, k, v = (rng.normal(size=(batch, length, heads, depth)).astype(np.float32)
             for _ in range(3))
  q = q * np.float32(scale)
  pad_key, pad_value = (rng.normal(size=(heads, depth)).astype(np.float32)
                        for _ in range(2))
  padding = (np.arange(length)[None, :] < lead[:, None])[..., None, None]
  k, v = np.where(padding, pad_key, k), np.where(padding, pad_value, v)
  want = numpy_attention(q, k, v, np.ones((batch, heads, length, length),
                                          bool), 1.0)
  real = np.arange(length)[None, :] >= lead[:, None]
  for mode in ("first", "last"):
    got = np.asarray(ca.real_row_attention(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(lead),
        mode=mode, pad_key=jnp.asarray(pad_key),
        pad_value=jnp.asarray(pad_value), masks=None, keep=1.0,
        group_size=4, num_buckets=3))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)

"""FeatureEncoder: padding, pooling, table sharing, input checks.

Runs eagerly on purpose: every test uses the same shapes, so the per-op
compile cache is shared, which beats compiling one program per test; random
values come from numpy (`init_fake`), so no init program is compiled either.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.models import EncoderConfig, FeatureEncoder, FeatureSpec

POOLINGS = ("last", "mean", "cls")
SEQ = slice(-8, None)  # The history encoding is the last 8 output columns.


def _encoder(features, pooling="mean", causal=False):
  cfg = EncoderConfig(num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
                      dropout_rate=0.0, attention_dropout_rate=0.0,
                      causal=causal, pooling=pooling)
  return FeatureEncoder(features, cfg)


def test_output_width_and_layout(features, batch, init_fake):
  enc = _encoder(features)
  variables = init_fake(enc, batch)
  out = enc.apply(variables, batch)
  assert out.shape == (4, enc.output_dim) == (4, 2 + 8 + 4 + 8)
  np.testing.assert_array_equal(out[:, :2], batch["age"])  # Numeric as-is.
  params = variables["params"]
  # 'history' borrows the 'item' table: no table of its own.
  assert "embed_history" not in params and "embed_item" in params
  assert params["pos_history"].shape == (6, 8)
  assert params["embed_city"].shape == (7, 4)  # hash_buckets rows.


def test_shared_table_is_the_owners(features, batch, init_fake):
  enc = _encoder(features)
  variables = init_fake(enc, batch)
  table = enc.apply(variables, "history", method="embedding_table")
  np.testing.assert_array_equal(table, variables["params"]["embed_item"])
  ids = np.array([[0, 3], [5, 0]], np.int32)
  emb = enc.apply(variables, "history", ids, method="embed_ids")
  np.testing.assert_array_equal(emb[0, 0], 0.0)
  np.testing.assert_array_equal(emb[0, 1], table[3])


def test_padding_id_embeds_to_zero(features, batch, init_fake):
  enc = _encoder(features)
  variables = init_fake(enc, batch)
  out = enc.apply(variables, dict(batch, item=np.zeros(4, np.int32),
                                  city=np.zeros(4, np.int32)))
  np.testing.assert_array_equal(out[:, 2:14], 0.0)


def _perturb(params, name, rows, seed):
  """Adds noise to rows `rows` of params[name]."""
  value = params[name]
  noise = jax.random.normal(jax.random.key(seed), value[rows].shape) * 3.0
  return {**params, name: value.at[rows].add(noise)}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_padded_positions_do_not_change_outputs(features, batch, pooling,
                                                causal, init_fake):
  # Every row has >= 2 leading pads, so positions 0 and 1 are padding
  # everywhere.  Their position embeddings reach the encoder as tokens; if
  # padded keys were not masked, real positions would attend to them and the
  # pooled output would move.
  enc = _encoder(features, pooling, causal)
  variables = init_fake(enc, batch)
  out = enc.apply(variables, batch)
  params = _perturb(variables["params"], "pos_history", slice(0, 2), 1)
  params = _perturb(params, "embed_item", 0, 2)  # The padding row.
  np.testing.assert_allclose(enc.apply({"params": params}, batch), out,
                             atol=1e-5)
  # Control: perturbing a real position does change the sequence encoding.
  params = _perturb(variables["params"], "pos_history", 5, 3)
  changed = enc.apply({"params": params}, batch)
  assert float(jnp.abs(changed - out)[:, SEQ].max()) > 1e-3


@pytest.mark.parametrize("pooling", POOLINGS)
def test_empty_history_is_finite(features, batch, pooling, init_fake):
  enc = _encoder(features, pooling)
  out = np.asarray(enc.apply(init_fake(enc, batch), batch))
  assert np.isfinite(out).all()
  assert not batch["history"][1].any()  # Row 1 is fully padded.
  if pooling != "cls":
    np.testing.assert_array_equal(out[1, SEQ], 0.0)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_rows_are_independent(features, batch, pooling, init_fake):
  enc = _encoder(features, pooling)
  variables = init_fake(enc, batch)
  other = dict(batch, history=batch["history"].copy())
  other["history"][2:] = [[0, 0, 3, 1, 4, 1], [5, 9, 2, 6, 5, 3]]
  out, out2 = enc.apply(variables, batch), enc.apply(variables, other)
  np.testing.assert_allclose(out2[:2], out[:2], atol=1e-6)
  assert float(jnp.abs(out2[2:] - out[2:]).max()) > 1e-3


def test_last_pooling_reads_the_last_real_position(features, batch,
                                                   init_fake):
  enc = _encoder(features, "last")
  variables = init_fake(enc, batch)
  history = np.array([[0, 0, 0, 4, 9, 2]] * 4, np.int32)
  history[1, -1] = 7  # Rows 0 and 1 differ only in the last item.
  out = np.asarray(enc.apply(variables, dict(batch, history=history)))
  assert np.abs(out[0, SEQ] - out[1, SEQ]).max() > 1e-4


def test_input_errors(features, batch, init_fake):
  enc = _encoder(features)
  variables = init_fake(enc, batch)
  with pytest.raises(KeyError, match="'history'"):
    enc.apply(variables, {k: v for k, v in batch.items() if k != "history"})
  with pytest.raises(ValueError, match="max_len"):
    enc.apply(variables, dict(batch, history=batch["history"][:, 1:]))
  with pytest.raises(ValueError, match="'item'"):
    enc.apply(variables, dict(batch, item=batch["item"][:, None]))
  with pytest.raises(KeyError, match="did you mean"):
    enc.apply(variables, "itme", method="embedding_table")


def test_numeric_vector_accepted_when_dim_is_one(init_fake):
  enc = _encoder((FeatureSpec("x", "numeric"),))
  b = {"x": np.arange(4, dtype=np.float32)}
  assert enc.apply(init_fake(enc, b), b).shape == (4, 1)


def test_out_of_vocabulary_ids_are_loud(features, batch, init_fake):
  # Unhashed ids >= vocab_size look up NaN rather than clipping to a real row.
  enc = _encoder(features)
  variables = init_fake(enc, batch)
  out = np.asarray(enc.apply(variables, dict(batch, item=np.full(4, 30))))
  assert np.isnan(out[:, 2:10]).all()

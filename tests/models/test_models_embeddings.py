"""FeatureEncoder: padding, pooling, table sharing, input checks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.models import EncoderConfig, FeatureEncoder, FeatureSpec

POOLINGS = ("last", "mean", "cls")


def _encoder(features, pooling="mean", causal=False, dtype=jnp.float32):
  cfg = EncoderConfig(num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
                      dropout_rate=0.0, attention_dropout_rate=0.0,
                      causal=causal, pooling=pooling)
  return FeatureEncoder(features, cfg, dtype)


def _init(enc, batch):
  # Eager on purpose: the per-op compile cache is shared by every test here
  # (same shapes), which beats compiling one whole program per test.
  return enc.init(jax.random.key(0), batch), enc.apply


def test_output_width_and_layout(features, batch):
  enc = _encoder(features)
  variables, apply = _init(enc, batch)
  out = apply(variables, batch)
  assert out.shape == (4, enc.output_dim) == (4, 2 + 8 + 4 + 8)
  np.testing.assert_array_equal(out[:, :2], batch["age"])  # Numeric as-is.
  params = variables["params"]
  # 'history' borrows the 'item' table: no table of its own.
  assert "embed_history" not in params and "embed_item" in params
  assert params["pos_history"].shape == (6, 8)


def test_shared_table_is_the_owners(features, batch):
  enc = _encoder(features)
  variables, apply = _init(enc, batch)
  table = enc.apply(variables, "history", method="embedding_table")
  np.testing.assert_array_equal(table, variables["params"]["embed_item"])
  ids = np.array([[0, 3], [5, 0]], np.int32)
  emb = enc.apply(variables, "history", ids, method="embed_ids")
  np.testing.assert_array_equal(emb[0, 0], 0.0)
  np.testing.assert_array_equal(emb[0, 1], table[3])


def test_padding_id_embeds_to_zero(features, batch):
  enc = _encoder(features)
  variables, apply = _init(enc, batch)
  b = dict(batch, item=np.zeros(4, np.int32))
  out = apply(variables, b)
  np.testing.assert_array_equal(out[:, 2:10], 0.0)


def _perturb(params, name, rows, key):
  """Adds noise to rows `rows` of params[name]."""
  value = params[name]
  noise = jax.random.normal(key, value[rows].shape) * 3.0
  return {**params, name: value.at[rows].add(noise)}


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_padded_positions_do_not_change_outputs(features, batch, pooling,
                                                causal):
  # Every row has >= 2 leading pads, so positions 0 and 1 are padding
  # everywhere.  Their position embeddings reach the encoder as tokens; if
  # padded keys were not masked, real positions would attend to them and the
  # pooled output would move.
  enc = _encoder(features, pooling, causal)
  variables, apply = _init(enc, batch)
  out = apply(variables, batch)
  params = _perturb(variables["params"], "pos_history", slice(0, 2),
                    jax.random.key(1))
  params = _perturb(params, "embed_item", 0, jax.random.key(2))  # Pad row.
  out2 = apply({"params": params}, batch)
  np.testing.assert_allclose(out, out2, atol=1e-5)
  # Control: perturbing a real position does change the sequence encoding.
  params3 = _perturb(variables["params"], "pos_history", 5, jax.random.key(3))
  out3 = apply({"params": params3}, batch)
  assert float(jnp.abs(out3 - out)[:, -8:].max()) > 1e-3


@pytest.mark.parametrize("pooling", POOLINGS)
def test_empty_history_is_finite(features, batch, pooling):
  enc = _encoder(features, pooling)
  variables, apply = _init(enc, batch)
  out = np.asarray(apply(variables, batch))
  assert np.isfinite(out).all()
  assert not batch["history"][1].any()  # Row 1 is fully padded.
  if pooling != "cls":
    np.testing.assert_array_equal(out[1, -8:], 0.0)


def test_rows_are_independent(features, make_batch):
  enc = _encoder(features, "last")
  small, big = make_batch(4, seed=0), make_batch(7, seed=5)
  joined = {k: np.concatenate([small[k], big[k]]) for k in small}
  variables, apply = _init(enc, small)
  np.testing.assert_allclose(apply(variables, joined)[:4],
                             apply(variables, small), atol=1e-5)


def test_last_pooling_reads_the_last_real_position(features):
  enc = _encoder(features, "last")
  batch = {"age": np.zeros((2, 2), np.float32), "item": np.ones(2, np.int32),
           "city": np.ones(2, np.int32),
           "history": np.array([[0, 0, 0, 4, 9, 2], [0, 0, 0, 4, 9, 7]],
                               np.int32)}
  variables, apply = _init(enc, batch)
  seq = np.asarray(apply(variables, batch))[:, -8:]
  assert np.abs(seq[0] - seq[1]).max() > 1e-4  # Depends on the last item.


def test_input_errors(features, batch):
  enc = _encoder(features)
  variables, apply = _init(enc, batch)
  with pytest.raises(KeyError, match="'history'"):
    enc.apply(variables, {k: v for k, v in batch.items() if k != "history"})
  with pytest.raises(ValueError, match="max_len"):
    apply(variables, dict(batch, history=batch["history"][:, 1:]))
  with pytest.raises(ValueError, match="'item'"):
    apply(variables, dict(batch, item=batch["item"][:, None]))
  with pytest.raises(KeyError, match="did you mean"):
    enc.apply(variables, "itme", method="embedding_table")


def test_numeric_vector_accepted_when_dim_is_one():
  enc = _encoder((FeatureSpec("x", "numeric"),))
  b = {"x": np.arange(3, dtype=np.float32)}
  variables, apply = _init(enc, b)
  assert apply(variables, b).shape == (3, 1)

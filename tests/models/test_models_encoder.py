"""TransformerEncoder: masking, causality, degenerate rows."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.models import EncoderConfig, TransformerEncoder

B, L, H = 3, 5, 8


def _setup(causal=False):
  enc = TransformerEncoder(num_layers=2, num_heads=2, hidden_dim=H, mlp_dim=16,
                           dropout_rate=0.0, attention_dropout_rate=0.0,
                           causal=causal)
  x = jax.random.normal(jax.random.key(0), (B, L, H))
  mask = np.ones((B, L), bool)
  mask[:, :2] = False  # Two leading pads in every row.
  params = enc.init(jax.random.key(1), x, mask)
  return enc.apply, params, x, jnp.asarray(mask)


def test_shape():
  apply, params, x, mask = _setup()
  assert apply(params, x, mask).shape == (B, L, H)


def test_padded_keys_do_not_influence_real_positions():
  apply, params, x, mask = _setup()
  noise = jax.random.normal(jax.random.key(2), x.shape) * 10.0
  x2 = jnp.where(mask[..., None], x, noise)  # New values only at pads.
  out1, out2 = apply(params, x, mask), apply(params, x2, mask)
  np.testing.assert_allclose(out1[:, 2:], out2[:, 2:], atol=1e-5)
  # Control: with every key visible the same change does leak, so the
  # assertion above would fail if the mask were dropped.
  full = jnp.ones_like(mask)
  leak = apply(params, x, full)[:, 2:] - apply(params, x2, full)[:, 2:]
  assert float(jnp.abs(leak).max()) > 1e-3


def test_fully_padded_row_is_finite():
  apply, params, x, _ = _setup()
  mask = jnp.zeros((B, L), bool)
  assert np.isfinite(np.asarray(apply(params, x, mask))).all()
  apply_c, params_c, x, _ = _setup(causal=True)
  assert np.isfinite(np.asarray(apply_c(params_c, x, mask))).all()


@pytest.mark.parametrize("t", [0, 2, 3])
def test_causal_output_ignores_the_future(t):
  apply, params, x, _ = _setup(causal=True)
  mask = jnp.ones((B, L), bool)
  future = jnp.arange(L)[None, :, None] > t
  noise = jax.random.normal(jax.random.key(3), x.shape)
  x2 = jnp.where(future, x + noise, x)
  out1, out2 = apply(params, x, mask), apply(params, x2, mask)
  np.testing.assert_allclose(out1[:, :t + 1], out2[:, :t + 1], atol=1e-5)
  assert float(jnp.abs(out1[:, t + 1:] - out2[:, t + 1:]).max()) > 1e-3
  apply_b, params_b, _, _ = _setup(causal=False)  # Control: bidirectional leaks.
  diff = apply_b(params_b, x, mask) - apply_b(params_b, x2, mask)
  assert float(jnp.abs(diff[:, :t + 1]).max()) > 1e-3


def test_input_shape_errors():
  apply, params, x, mask = _setup()
  with pytest.raises(ValueError, match="padding_mask"):
    apply(params, x, mask[:, :3])


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_dim=10, num_heads=4), "multiple of num_heads"),
    (dict(pooling="max"), "pooling"),
    (dict(dropout_rate=1.0), "dropout_rate"),
])
def test_encoder_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    EncoderConfig(**kwargs)

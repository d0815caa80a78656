"""TransformerEncoder: masking, causality, degenerate rows.

Same shapes as the FeatureEncoder tests, so eager op compiles are shared.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.models import EncoderConfig, TransformerEncoder

B, L, H = 4, 6, 8


def _noise(seed, scale=1.0):
  return jnp.asarray(scale * np.random.default_rng(seed).normal(size=(B, L, H)),
                     jnp.float32)


@pytest.fixture(name="setup")
def _setup(init_fake):
  """make(causal, num_layers) -> (apply, variables, x, mask); every row has
  two leading pads."""
  def make(causal=False, num_layers=1):
    enc = TransformerEncoder(num_layers=num_layers, num_heads=2, hidden_dim=H,
                             mlp_dim=16, dropout_rate=0.0,
                             attention_dropout_rate=0.0, causal=causal)
    x = _noise(0)
    mask = jnp.asarray(np.arange(L) >= 2)[None].repeat(B, axis=0)
    return enc.apply, init_fake(enc, x, mask), x, mask
  return make


def test_shape(setup):
  apply, variables, x, mask = setup(num_layers=2)
  assert apply(variables, x, mask).shape == (B, L, H)
  assert set(variables["params"]) == {"block_0", "block_1", "final_norm"}


def test_padded_keys_do_not_influence_real_positions(setup):
  apply, variables, x, mask = setup()
  x2 = jnp.where(mask[..., None], x, _noise(2, 10.0))  # Change only pads.
  out1, out2 = apply(variables, x, mask), apply(variables, x2, mask)
  np.testing.assert_allclose(out1[:, 2:], out2[:, 2:], atol=1e-5)
  # Control: with every key visible the same change does leak, so the
  # assertion above would fail if the mask were dropped.
  full = jnp.ones_like(mask)
  leak = apply(variables, x, full) - apply(variables, x2, full)
  assert float(jnp.abs(leak[:, 2:]).max()) > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_fully_padded_row_is_finite(setup, causal):
  apply, variables, x, _ = setup(causal=causal)
  out = apply(variables, x, jnp.zeros((B, L), bool))
  assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("t", [0, 2, 4])
def test_causal_output_ignores_the_future(setup, t):
  apply, variables, x, _ = setup(causal=True)
  mask = jnp.ones((B, L), bool)
  x2 = jnp.where(jnp.arange(L)[None, :, None] > t, x + _noise(3), x)
  out1, out2 = apply(variables, x, mask), apply(variables, x2, mask)
  np.testing.assert_allclose(out1[:, :t + 1], out2[:, :t + 1], atol=1e-5)
  assert float(jnp.abs(out1[:, t + 1:] - out2[:, t + 1:]).max()) > 1e-3
  apply_b, variables_b, _, _ = setup(causal=False)  # Control: it leaks.
  diff = apply_b(variables_b, x, mask) - apply_b(variables_b, x2, mask)
  assert float(jnp.abs(diff[:, :t + 1]).max()) > 1e-3


def test_input_shape_errors(setup):
  apply, variables, x, mask = setup()
  with pytest.raises(ValueError, match="padding_mask"):
    apply(variables, x, mask[:, :3])
  with pytest.raises(ValueError, match=r"\[B, L, 8\]"):
    apply(variables, x[..., :4], mask)


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_dim=10, num_heads=4), "multiple of num_heads"),
    (dict(pooling="max"), "pooling"),
    (dict(dropout_rate=1.0), "dropout_rate"),
])
def test_encoder_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    EncoderConfig(**kwargs)

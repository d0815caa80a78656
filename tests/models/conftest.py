"""Shared fixtures for the model tests: a tiny feature set and config."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.models import FeatureSpec, default_model_config

MAX_LEN = 6
TASKS3 = (("ctr", 1), ("cvr", 1), ("rating", 3))


def tiny_features() -> tuple[FeatureSpec, ...]:
  return (
      FeatureSpec("age", "numeric", dim=2),
      FeatureSpec("item", "categorical", vocab_size=30, embed_dim=8),
      FeatureSpec("city", "categorical", hash_buckets=7, embed_dim=4),
      FeatureSpec("history", "sequence", max_len=MAX_LEN, embed_dim=8,
                  share_with="item"),
  )


def light_features() -> tuple[FeatureSpec, ...]:
  """No sequence feature, input width 8: for tests about the connections."""
  return (FeatureSpec("x", "numeric", dim=4),
          FeatureSpec("item", "categorical", vocab_size=10, embed_dim=4))


def light_batch(batch_size: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(batch_size, 4)).astype(np.float32),
          "item": rng.integers(0, 10, batch_size).astype(np.int32)}


def fake_init(module, *args, seed: int = 0, **kwargs):
  """Random variables with the shapes `module.init` would give.

  Drawn with numpy from the abstract init (jax.eval_shape), so no random-init
  program is compiled; tests that check initial values use `init` itself.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args, **kwargs)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)


def tiny_batch(batch_size: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
  """Left-padded histories; every row has at least two leading pads and
  row 1 is all padding."""
  rng = np.random.default_rng(seed)
  history = np.zeros((batch_size, MAX_LEN), np.int32)
  for row in range(batch_size):
    n = 0 if row == 1 else int(rng.integers(1, MAX_LEN - 1))
    history[row, MAX_LEN - n:] = rng.integers(1, 30, n)
  return {
      "age": rng.normal(size=(batch_size, 2)).astype(np.float32),
      "item": rng.integers(1, 30, batch_size).astype(np.int32),
      "city": rng.integers(1, 10**6, batch_size).astype(np.int32),
      "history": history,
      "label_ctr": np.zeros(batch_size, np.float32),  # Ignored by the model.
  }


def tiny_config(name: str = "shared_bottom", **overrides):
  """Small widths so every test compiles in well under a second."""
  cfg = default_model_config()
  cfg.name = name
  cfg.tower_hidden = (8,)
  cfg.bottom_hidden = (8, 8)
  cfg.expert_hidden = (8, 8)
  cfg.num_experts = 2  # = K in most tests, so kernel shapes repeat.
  cfg.encoder.hidden_dim = 8
  cfg.encoder.mlp_dim = 16
  cfg.encoder.dropout = 0.0
  cfg.encoder.attention_dropout = 0.0
  for key, value in overrides.items():
    target = cfg
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return cfg


# Test modules get the helpers through fixtures (importing `conftest` by name
# is unreliable when several test folders have one).
@pytest.fixture(scope="session")
def features():
  return tiny_features()


@pytest.fixture(scope="session")
def batch():
  return tiny_batch()


@pytest.fixture(scope="session")
def make_batch():
  return tiny_batch


@pytest.fixture(scope="session")
def light():
  """(features, batch) without sequences."""
  return light_features(), light_batch()


@pytest.fixture(scope="session")
def init_fake():
  return fake_init


@pytest.fixture(scope="session")
def make_config():
  return tiny_config


@pytest.fixture(scope="session")
def tasks3():
  return TASKS3

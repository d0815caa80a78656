"""biased_mf: the rating is p_u . q_i + b_u + b_i (+ the tower's mu)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from mtrec_jax.models import FeatureSpec, build_model, default_model_config


def _model(read=("user", "item")):
  cfg = default_model_config()
  cfg.name = "biased_mf"
  cfg.tower_hidden = ()
  cfg.features = read
  features = (FeatureSpec("user", "categorical", vocab_size=5, embed_dim=4),
              FeatureSpec("item", "categorical", vocab_size=7, embed_dim=4),
              FeatureSpec("age", "numeric", dim=1))
  return build_model(cfg, features, {"rating": 1})


def test_biased_mf_matches_the_formula():
  model = _model()
  rng = np.random.default_rng(0)
  batch = {"user": rng.integers(1, 5, 6).astype(np.int32),
           "item": rng.integers(1, 7, 6).astype(np.int32),
           "age": rng.normal(size=(6, 1)).astype(np.float32)}
  params = model.init(jax.random.key(0), batch)["params"]
  enc = params["shared"]["feature_encoder"]
  p, q = enc["embed_user"][batch["user"]], enc["embed_item"][batch["item"]]
  tower = params["towers"]["rating"]["Dense_0"]
  want = ((p[:, :3] * q[:, :3]).sum(1) + p[:, 3] + q[:, 3]) * \
      tower["kernel"][0, 0] + tower["bias"][0]
  got = model.apply({"params": params}, batch)["rating"][:, 0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # model.features keeps 'age' out: changing it changes nothing.
  other = dict(batch, age=batch["age"] + 5.0)
  np.testing.assert_array_equal(
      model.apply({"params": params}, other)["rating"], got[:, None])


def test_biased_mf_needs_exactly_two_equal_embeddings():
  model = _model(read=())
  batch = {"user": np.ones(2, np.int32), "item": np.ones(2, np.int32),
           "age": np.ones((2, 1), np.float32)}
  with pytest.raises(ValueError, match="set model.features"):
    model.init(jax.random.key(0), batch)
  with pytest.raises(ValueError, match="'usr', which is not a feature"):
    _model(read=("usr", "item"))

"""MultiTaskModel: parameter tree, apply entry points, dtype, determinism."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.models import MultiTaskModel, build_model
from mtrec_jax.registry import MODELS


@pytest.fixture(scope="module")
def built(light, make_config, tasks3):
  """(model, variables, init, batch), really initialised.  Light features keep
  the init program small; the full features are traced in the shape tests."""
  features, batch = light
  model = build_model(make_config("shared_bottom"), features, tasks3)
  init = jax.jit(model.init)
  return model, init(jax.random.key(0), batch), init, batch


def test_param_tree_is_shared_and_towers(built, tasks3):
  _, variables, _, _ = built
  params = variables["params"]
  assert set(variables) == {"params"}
  assert set(params) == {"shared", "towers"}
  assert set(params["shared"]) == {"feature_encoder", "connection"}
  assert set(params["towers"]) == {t for t, _ in tasks3}
  for leaf in jax.tree_util.tree_leaves(params):
    assert leaf.dtype == jnp.float32


def test_entry_points_agree(built):
  model, variables, _, batch = built
  out = model.apply(variables, batch)
  rep = model.apply(variables, batch, method="represent")
  chex.assert_shape(rep, (3, 4, 8))
  chex.assert_trees_all_close(model.apply(variables, rep, method="heads"), out)
  chex.assert_trees_all_close(
      model.apply(variables, batch, train=True,
                  rngs={"dropout": jax.random.key(3)}), out)  # No dropout set.
  for value in out.values():
    assert value.dtype == jnp.float32 and np.isfinite(value).all()
  table = model.apply(variables, "item", method="embedding_table")
  np.testing.assert_array_equal(
      table, variables["params"]["shared"]["feature_encoder"]["embed_item"])


def test_same_key_same_params_and_outputs(built):
  model, variables, init, batch = built
  again = init(jax.random.key(0), batch)
  chex.assert_trees_all_equal(variables, again)
  chex.assert_trees_all_equal(model.apply(variables, batch),
                              model.apply(again, batch))
  other = init(jax.random.key(1), batch)
  tower, tower_other = (v["params"]["towers"]["ctr"]["Dense_0"]["kernel"]
                        for v in (variables, other))
  assert not np.array_equal(tower, tower_other)


def test_dropout_is_active_only_in_training(built):
  model, variables, _, batch = built
  model = model.clone(dropout_rate=0.5,
                      connection=model.connection.clone(dropout_rate=0.5))
  apply = jax.jit(model.apply, static_argnames="train")
  evals = apply(variables, batch)
  chex.assert_trees_all_close(evals, model.apply(variables, batch))
  trained = apply(variables, batch, train=True,
                  rngs={"dropout": jax.random.key(1)})
  assert float(jnp.abs(trained["rating"] - evals["rating"]).max()) > 1e-4


def test_bfloat16_compute(features, batch, make_config, tasks3, init_fake):
  # Full features: the attention softmax is the part most at risk in bf16.
  model32 = build_model(make_config("shared_bottom"), features, tasks3)
  model16 = build_model(make_config("shared_bottom", dtype="bfloat16"),
                        features, tasks3)
  variables = init_fake(model32, batch)
  shapes16 = jax.eval_shape(model16.init, jax.random.key(0), batch)
  chex.assert_trees_all_equal_shapes_and_dtypes(shapes16, variables)
  out32 = jax.jit(model32.apply)(variables, batch)
  out16 = jax.jit(model16.apply)(variables, batch)
  for task in out32:
    assert out16[task].dtype == jnp.float32
    assert np.isfinite(out16[task]).all()
    scale = float(jnp.abs(out32[task]).max()) + 1.0
    np.testing.assert_allclose(out16[task], out32[task], atol=0.1 * scale)


def test_connection_must_match_task_count(features, tasks3):
  with pytest.raises(ValueError, match="num_tasks=2"):
    MultiTaskModel(features, tasks3, MODELS.get("mmoe")(num_tasks=2))


@pytest.mark.parametrize("task_dims, match", [
    ((("a", 1), ("a", 2)), "unique"),
    ((("a", 0), ("b", 2)), "positive"),
    ((), "at least one task"),
])
def test_bad_task_dims(features, task_dims, match):
  conn = MODELS.get("shared_bottom")(num_tasks=max(len(task_dims), 1))
  with pytest.raises(ValueError, match=match):
    MultiTaskModel(features, task_dims, conn)

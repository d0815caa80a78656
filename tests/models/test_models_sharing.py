"""Every registered connection module: shapes, gradient flow, init identities."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.models import build_model
from mtrec_jax.registry import MODELS

CONNECTIONS = MODELS.names()
TASKS = {2: (("ctr", 1), ("cvr", 2)), 3: (("ctr", 1), ("cvr", 2), ("time", 3))}


def test_all_connections_are_registered():
  assert set(CONNECTIONS) >= {"shared_bottom", "single_task", "mmoe", "cgc",
                              "ple", "cross_stitch", "residual",
                              "cross_attention"}


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", CONNECTIONS)
def test_shapes(name, k, features, batch, make_config):
  # Shapes only, so trace without compiling (jax.eval_shape).
  model = build_model(make_config(name), features, TASKS[k])
  variables = jax.eval_shape(model.init, jax.random.key(0), batch)
  rep = jax.eval_shape(lambda v: model.apply(v, batch, method="represent"),
                       variables)
  chex.assert_shape(rep, (k, 4, 8))
  out = jax.eval_shape(model.apply, variables, batch)
  assert list(out) == [task for task, _ in TASKS[k]]
  for task, dim in TASKS[k]:
    chex.assert_shape(out[task], (4, dim))
    assert out[task].dtype == jnp.float32
  assert set(variables["params"]) == {"shared", "towers"}
  assert set(variables["params"]["towers"]) == {t for t, _ in TASKS[k]}


def _zero_grad_leaves(model, variables, batch):
  """Paths of parameter leaves whose gradient is zero everywhere, for a random
  linear functional of all task outputs."""
  out = model.apply(variables, batch)
  rng = np.random.default_rng(0)
  weights = {t: rng.normal(size=o.shape).astype(np.float32)
             for t, o in out.items()}

  def functional(params):
    outputs = model.apply({"params": params}, batch)
    return sum(jnp.sum(outputs[t] * weights[t]) for t in outputs)

  grads = jax.grad(functional)(variables["params"])
  return [jax.tree_util.keystr(path)
          for path, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g))]


@pytest.mark.parametrize("name", CONNECTIONS)
def test_gradient_reaches_every_parameter(name, features, batch, make_config):
  model = build_model(make_config(name), features, TASKS[2])
  variables = model.init(jax.random.key(0), batch)
  assert _zero_grad_leaves(model, variables, batch) == []


def test_residual_starts_as_independent_columns(features, batch, make_config):
  res = build_model(make_config("residual"), features, TASKS[3])
  single = build_model(make_config("single_task"), features, TASKS[3])
  variables = res.init(jax.random.key(0), batch)
  conn = variables["params"]["shared"]["connection"]
  for i in range(2):
    np.testing.assert_array_equal(conn[f"mix_{i}"]["coef"], 0.0)
    assert conn[f"mix_{i}"]["coef"].shape == (3, 2)  # Off-diagonal only.
  # Same column weights without the mixers -> the single-task model.
  stripped = jax.tree_util.tree_map(lambda x: x, variables)
  stripped["params"]["shared"]["connection"] = {
      k: v for k, v in conn.items() if not k.startswith("mix_")}
  chex.assert_trees_all_close(res.apply(variables, batch),
                              single.apply(stripped, batch), atol=1e-6)


def test_cross_stitch_init_and_identity(features, batch, make_config):
  model = build_model(make_config("cross_stitch"), features, TASKS[3])
  variables = model.init(jax.random.key(0), batch)
  alpha = variables["params"]["shared"]["connection"]["mix_0"]["alpha"]
  np.testing.assert_allclose(alpha, [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05],
                                     [0.05, 0.05, 0.9]], atol=1e-7)
  np.testing.assert_allclose(np.sum(alpha, axis=1), 1.0, atol=1e-6)
  # alpha = identity gives back the independent columns.
  single = build_model(make_config("single_task"), features, TASKS[3])
  conn = variables["params"]["shared"]["connection"]
  eye = {k: {"alpha": jnp.eye(3)} if k.startswith("mix_") else v
         for k, v in conn.items()}
  stitched = {"params": {**variables["params"],
                         "shared": {**variables["params"]["shared"],
                                    "connection": eye}}}
  stripped = {"params": {**variables["params"],
                         "shared": {**variables["params"]["shared"],
                                    "connection": {k: v for k, v in conn.items()
                                                   if k.startswith("layer_")}}}}
  chex.assert_trees_all_close(model.apply(stitched, batch),
                              single.apply(stripped, batch), atol=1e-6)


def test_ple_with_one_level_is_cgc(features, batch, make_config):
  ple = build_model(make_config("ple", num_levels=1), features, TASKS[2])
  cgc = build_model(make_config("cgc"), features, TASKS[2])
  variables = cgc.init(jax.random.key(0), batch)
  chex.assert_trees_all_close(ple.apply(variables, batch),
                              cgc.apply(variables, batch))


def test_dropout_is_active_only_in_training(features, batch, make_config):
  model = build_model(make_config("mmoe", dropout=0.5), features, TASKS[2])
  variables = model.init(jax.random.key(0), batch)
  evals = model.apply(variables, batch)
  chex.assert_trees_all_close(evals, model.apply(variables, batch, train=False))
  trained = model.apply(variables, batch, train=True,
                        rngs={"dropout": jax.random.key(1)})
  assert float(jnp.abs(trained["ctr"] - evals["ctr"]).max()) > 1e-4


@pytest.mark.parametrize("name, kwargs, match", [
    ("shared_bottom", dict(bottom_hidden=()), "bottom_hidden"),
    ("mmoe", dict(expert_hidden=(0,)), "expert_hidden"),
    ("ple", dict(num_levels=0), "num_levels"),
    ("cross_attention", dict(bottom_hidden=(6,), num_heads=4), "num_heads"),
])
def test_bad_hyper_parameters(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    MODELS.get(name)(num_tasks=2, **kwargs)


def test_num_tasks_must_be_positive():
  with pytest.raises(ValueError, match="num_tasks"):
    MODELS.get("mmoe")(num_tasks=0)

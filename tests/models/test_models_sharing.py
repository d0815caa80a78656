"""Every registered connection module: shapes, gradient flow, init identities.

The model-level tests use `light` features (no sequence encoder) and numpy
random variables (`init_fake`) to keep compile time low; the sequence encoder
and real initialisation are covered in the other test files.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.models import build_model
from mtrec_jax.registry import MODELS

# biased_mf reads exactly a user and an item embedding (its own tests are in
# test_models_factorization.py); the others take any input.
CONNECTIONS = [n for n in MODELS.names() if n != "biased_mf"]
TASKS = {2: (("ctr", 1), ("cvr", 2)), 3: (("ctr", 1), ("cvr", 2), ("time", 3))}


def test_all_connections_are_registered():
  assert set(CONNECTIONS) >= {"shared_bottom", "single_task", "mmoe", "cgc",
                              "ple", "cross_stitch", "residual",
                              "cross_attention"}


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("name", CONNECTIONS)
def test_shapes(name, k, features, batch, make_config):
  # Full features (with the sequence encoder); shapes only, so trace without
  # compiling (jax.eval_shape).
  model = build_model(make_config(name), features, TASKS[k])

  def both(module, batch):  # One trace for init, represent and heads.
    rep = module.represent(batch)
    return rep, module.heads(rep)

  (rep, out), variables = jax.eval_shape(
      lambda key: model.init_with_output(key, batch, method=both),
      jax.random.key(0))
  chex.assert_shape(rep, (k, 4, 8))
  assert rep.dtype == jnp.float32
  assert list(out) == [task for task, _ in TASKS[k]]
  for task, dim in TASKS[k]:
    chex.assert_shape(out[task], (4, dim))
    assert out[task].dtype == jnp.float32
  assert set(variables["params"]) == {"shared", "towers"}
  assert set(variables["params"]["shared"]) == {"feature_encoder",
                                                "connection"}
  assert set(variables["params"]["towers"]) == {t for t, _ in TASKS[k]}


def _zero_grad_leaves(model, variables, batch) -> list[str]:
  """Paths of parameter leaves whose gradient is zero everywhere, for a
  random linear functional of all task outputs."""
  rng = np.random.default_rng(0)
  weights = {t: jnp.asarray(rng.normal(size=(4, d)), jnp.float32)
             for t, d in model.task_dims}

  @jax.jit
  def grad(params):
    def functional(params):
      out = model.apply({"params": params}, batch)
      return sum(jnp.sum(out[t] * weights[t]) for t in out)
    return jax.grad(functional)(params)

  grads = grad(variables["params"])
  return [jax.tree_util.keystr(path)
          for path, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g))]


def _zero_mixing(variables):
  """Puts residual mixing coefficients at their initial value, 0."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x)
      if jax.tree_util.keystr(path).endswith("['coef']") else x, variables)


@pytest.mark.parametrize("name", CONNECTIONS)
def test_gradient_reaches_every_parameter(name, light, make_config, init_fake):
  features, batch = light
  model = build_model(make_config(name), features, TASKS[2])
  # Zero-init coefficients (residual) must still receive gradient.
  variables = _zero_mixing(init_fake(model, batch))
  assert _zero_grad_leaves(model, variables, batch) == []


def test_gradient_reaches_the_sequence_encoder(features, batch, make_config,
                                                init_fake):
  model = build_model(make_config("cross_stitch", **{"encoder.pooling": "cls"}),
                      features, TASKS[2])
  assert _zero_grad_leaves(model, init_fake(model, batch), batch) == []


# The identities below run on the connection alone (x [4, 8] -> [K, 4, 8]),
# which is where they live, and keeps the eager programs small.
X = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)


@pytest.fixture(name="connection")
def _connection(make_config, light):
  """make(name, k, **overrides): the connection build_model makes."""
  def make(name, k, **overrides):
    model = build_model(make_config(name, **overrides), light[0], TASKS[k])
    return model.connection
  return make


def test_residual_starts_as_independent_columns(connection):
  res = connection("residual", 3)
  params = res.init(jax.random.key(0), X)["params"]
  for i in range(2):
    np.testing.assert_array_equal(params[f"mix_{i}"]["coef"], 0.0)
    assert params[f"mix_{i}"]["coef"].shape == (3, 2)  # Off-diagonal only.
  # At coef = 0 it is the single-task model with the same columns.
  columns = {k: v for k, v in params.items() if k.startswith("layer_")}
  single = connection("single_task", 3)
  np.testing.assert_allclose(res.apply({"params": params}, X),
                             single.apply({"params": columns}, X), atol=1e-6)
  # Non-zero coefficients do mix the columns.
  mixed = {**params, "mix_1": {"coef": jnp.ones((3, 2))}}
  assert float(jnp.abs(res.apply({"params": mixed}, X)
                       - res.apply({"params": params}, X)).max()) > 1e-3


def test_cross_stitch_init_and_identity(connection):
  stitch = connection("cross_stitch", 3)
  params = stitch.init(jax.random.key(0), X)["params"]
  np.testing.assert_allclose(
      params["mix_0"]["alpha"],
      [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]], atol=1e-7)
  # alpha = identity gives back the independent columns.
  columns = {k: v for k, v in params.items() if k.startswith("layer_")}
  identity = {**columns, **{f"mix_{i}": {"alpha": jnp.eye(3)}
                            for i in range(2)}}
  single = connection("single_task", 3)
  np.testing.assert_allclose(stitch.apply({"params": identity}, X),
                             single.apply({"params": columns}, X), atol=1e-6)


def test_ple_with_one_level_is_cgc(connection, init_fake):
  ple = connection("ple", 2, num_levels=1)
  cgc = connection("cgc", 2)
  variables = init_fake(cgc, X)
  np.testing.assert_array_equal(ple.apply(variables, X),
                                cgc.apply(variables, X))


def test_mmoe_gates_mix_experts(connection, init_fake):
  # With identical experts, any convex gate gives back that expert's output.
  mmoe = connection("mmoe", 2)
  params = init_fake(mmoe, X)["params"]
  experts = params["level_0"]["shared_experts"]
  same = jax.tree_util.tree_map(lambda p: jnp.broadcast_to(p[:1], p.shape),
                                experts)
  params = {"level_0": {**params["level_0"], "shared_experts": same}}
  rep = mmoe.apply({"params": params}, X)
  np.testing.assert_allclose(rep[0], rep[1], atol=1e-5)


@pytest.mark.parametrize("name, kwargs, match", [
    ("shared_bottom", dict(bottom_hidden=()), "bottom_hidden"),
    ("mmoe", dict(expert_hidden=(0,)), "expert_hidden"),
    ("ple", dict(num_levels=0), "num_levels"),
    ("cross_attention", dict(bottom_hidden=(6,), num_heads=4), "num_heads"),
    ("cross_attention", dict(num_heads=0), "num_heads"),
])
def test_bad_hyper_parameters(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    MODELS.get(name)(num_tasks=2, **kwargs)


def test_num_tasks_must_be_positive():
  with pytest.raises(ValueError, match="num_tasks"):
    MODELS.get("mmoe")(num_tasks=0)

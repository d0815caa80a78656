"""The fused per-task gradient engine against explicit per-task gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtrec_jax import config as config_lib
from mtrec_jax.train import loop
from mtrec_jax.train.step import make_train_step, task_losses
from mtrec_jax.weighting.base import Strategy, Weighting, cosines


def _components(model="shared_bottom"):
  cfg = config_lib.apply_overrides(config_lib.base_config(), {
      "model.name": model, "data.name": "mmoe_synthetic"})
  return loop.Components(cfg)


def _gramian_mean(weight_task_params=True, mode="params"):
  """A gradient-kind strategy giving weights 1/K: must equal loss-kind `mean`."""
  def weigh(state, *, gramian, losses, step, key):
    k = gramian.shape[0]
    return Weighting(jnp.full((k,), 1.0 / k), {"gram": gramian}, {})
  return Strategy("test_gramian_mean", "gramian",
                  init=lambda k: {"gram": jnp.zeros((k, k))}, weigh=weigh,
                  default_mode=mode, weight_task_params=weight_task_params)


def _batch(c, n=32):
  return {k: v[:n] for k, v in c.dataset.splits["train"].items()}


@pytest.mark.parametrize("model", ["shared_bottom", "mmoe"])
def test_all_paths_equal_loss_mean(model):
  c = _components(model)
  state0 = loop.init_state(c)
  batch = _batch(c)
  sgd = optax.sgd(1.0)  # the update is then minus the gradient
  results = {}
  for name, strategy, mode, engine in [
      ("loss", c.strategy, "", "vmap"),
      ("params", _gramian_mean(), "params", "vmap"),
      ("unrolled", _gramian_mean(), "params", "unrolled"),
      ("rep", _gramian_mean(), "rep", "vmap")]:
    st = state0.replace(opt_state=sgd.init(state0.params),
                        strategy_state=strategy.init(len(c.tasks)))
    step = jax.jit(make_train_step(c.model, c.tasks, strategy, sgd, mode,
                                   jacobian=engine))
    new, metrics = step(st, batch)
    results[name] = (new, metrics)
  ref = results["loss"][0].params
  for name in ("params", "unrolled", "rep"):
    chex_tree = jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
        results[name][0].params, ref)
    del chex_tree


@pytest.mark.parametrize("model", ["shared_bottom", "mmoe"])
def test_graddrop_rep_mode_cotangents_reach_the_shared_parameters(model):
  """GradDrop's per-slot cotangents (`aggregate_rep`) with leak 1 keep every
  gradient, so its rep-mode step equals weights of 1 (the plain sum)."""
  from mtrec_jax import weighting
  c = _components(model)
  state0 = loop.init_state(c)
  batch = _batch(c)
  sgd = optax.sgd(1.0)

  def ones(state, *, gramian, losses, step, key):
    return Weighting(jnp.ones((gramian.shape[0],)), state, {})

  total = Strategy("test_sum", "gramian", init=lambda k: (), weigh=ones,
                   default_mode="rep")
  params = []
  for strategy in (weighting.build("graddrop", leak=1.0), total):
    st = state0.replace(opt_state=sgd.init(state0.params),
                        strategy_state=strategy.init(len(c.tasks)))
    step = jax.jit(make_train_step(c.model, c.tasks, strategy, sgd, "rep"))
    params.append(step(st, batch)[0].params)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
      *params)


def test_gramian_and_cosines_match_explicit_per_task_gradients():
  c = _components("mmoe")
  state = loop.init_state(c)
  batch = _batch(c)
  strategy = _gramian_mean()
  state = state.replace(strategy_state=strategy.init(len(c.tasks)))
  step = jax.jit(make_train_step(c.model, c.tasks, strategy, c.optimizer, "params"))
  new, metrics = step(state, batch)
  rng = jax.random.fold_in(state.rng, state.step)
  rng, _ = jax.random.split(rng)

  def loss_k(params, k):
    out = c.model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
    return task_losses(out, batch, c.tasks)[k]

  rows = []
  for k in range(len(c.tasks)):
    g = jax.grad(loss_k)(state.params, k)["shared"]
    rows.append(jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g)]))
  jac = jnp.stack(rows)
  np.testing.assert_allclose(new.strategy_state["gram"], jac @ jac.T, rtol=1e-4)
  cos = cosines(jac @ jac.T)
  name = f"cos/{c.tasks[0].name}/{c.tasks[1].name}"
  np.testing.assert_allclose(metrics[name], cos[0, 1], rtol=1e-4, atol=1e-6)


def test_non_finite_loss_is_recorded_and_changes_nothing():
  c = _components()
  state = loop.init_state(c)
  batch = _batch(c)
  batch[c.tasks[0].label] = batch[c.tasks[0].label].copy()
  batch[c.tasks[0].label][0] = np.nan
  step = jax.jit(make_train_step(c.model, c.tasks, c.strategy, c.optimizer))
  new, _ = step(state, batch)
  assert int(new.diverged_step) == 0
  jax.tree_util.tree_map(np.testing.assert_array_equal, new.params, state.params)
  new2, _ = step(new, _batch(c))
  assert int(new2.diverged_step) == 0  # the first divergence is kept


def test_block_alternation_freezes_one_group_per_phase():
  from mtrec_jax import weighting
  c = _components("mmoe")
  strategy = weighting.build("alternating", blocks=(1, 1))
  state = loop.init_state(c).replace(strategy_state=strategy.init(len(c.tasks)))
  step = jax.jit(make_train_step(c.model, c.tasks, strategy, c.optimizer))
  s1, m1 = step(state, _batch(c))   # step 0: phase 0, connection frozen
  s2, m2 = step(s1, _batch(c))      # step 1: phase 1, only connection trains
  assert int(m1["strategy/phase"]) == 0 and int(m2["strategy/phase"]) == 1

  def changed(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(
        jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

  p0, p1, p2 = state.params, s1.params, s2.params
  assert not changed(p0["shared"]["connection"], p1["shared"]["connection"])
  assert changed(p0["towers"], p1["towers"])
  assert changed(p1["shared"]["connection"], p2["shared"]["connection"])
  assert not changed(p1["towers"], p2["towers"])

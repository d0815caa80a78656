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


def test_alternating_needs_grouped_optimizer():
  from mtrec_jax import weighting
  c = _components("mmoe")
  strategy = weighting.build("alternating", blocks=(1, 1))
  state = loop.init_state(c).replace(strategy_state=strategy.init(len(c.tasks)))
  step = make_train_step(c.model, c.tasks, strategy, c.optimizer)
  with pytest.raises(ValueError, match="one state per group"):
    step(state, _batch(c))


def test_block_alternation_freezes_one_group_per_phase():
  c = _alternating_components(lr=1e-3, blocks=[1, 1])
  state = loop.init_state(c)
  step = jax.jit(make_train_step(c.model, c.tasks, c.strategy, c.optimizer))
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


# --------------------------------------------------------------------------
# Alternating schedules: each parameter group has its own optimiser state.
# --------------------------------------------------------------------------


def _alternating_components(model="mmoe", lr=0.1, **hparams):
  cfg = config_lib.apply_overrides(config_lib.base_config(), {
      "model.name": model, "data.name": "mmoe_synthetic",
      "optimizer.learning_rate": lr, "strategy.name": "alternating",
      **{f"strategy.hparams.{k}": v for k, v in hparams.items()}})
  return loop.Components(cfg)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _run(c, steps):
  state = loop.init_state(c)
  step = jax.jit(make_train_step(c.model, c.tasks, c.strategy, c.optimizer))
  states = [state]
  for i in range(steps):
    state, _ = step(state, _batch(c, 64))
    states.append(state)
  return states


def _assert_adam_first_step(before, after, lr):
  """Adam's first step moves every parameter with a gradient by exactly
  lr * sign(g) (bias-corrected m / sqrt(v) = g / |g|), up to eps / |g|."""
  deltas = np.concatenate([np.ravel(a - b) for a, b in
                           zip(_leaves(after), _leaves(before))])
  size = np.abs(deltas)
  moved = size > 1e-3 * lr
  assert moved.mean() > 0.2, "parameters with a gradient should move"
  assert size.max() <= lr * (1 + 1e-5)
  # Entries with |g| below ~1e-5 move by lr |g| / (|g| + eps), a bit less.
  close = np.abs(size[moved] - lr) <= 2e-3 * lr
  assert close.mean() > 0.95, np.percentile(size[moved], [1, 50, 99])


def test_block_alternation_connection_gets_adams_first_step():
  # Three towers steps, then the connection's first step: with its own
  # optimiser state (count included) that step is Adam's first, lr * sign(g).
  # With one shared count (count 4 at that step) it was 0.058 instead of 0.1.
  lr = 0.1
  c = _alternating_components(lr=lr, blocks=[3, 2])
  states = _run(c, 5)
  conn = [s.params["shared"]["connection"] for s in states]
  for i in range(3):  # the towers phase leaves the connection alone
    assert all(np.array_equal(a, b) for a, b in
               zip(_leaves(conn[i]), _leaves(conn[i + 1])))
  _assert_adam_first_step(conn[3], conn[4], lr)
  # And the towers' state did not move during the connection step.
  towers = [s.params["towers"] for s in states]
  assert all(np.array_equal(a, b) for a, b in
             zip(_leaves(towers[3]), _leaves(towers[5])))


def test_block_alternation_frozen_group_state_does_not_advance():
  c = _alternating_components(lr=0.1, blocks=[2, 1])
  states = _run(c, 3)
  # Step 2 trains only the connection: the rest's optimiser state (moments
  # and count) is exactly that of step 2's start.
  before, after = states[2].opt_state, states[3].opt_state
  changed = [not np.array_equal(a, b) for a, b in
             zip(_leaves(before), _leaves(after))]
  assert any(changed)
  counts = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(after):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    if names[-1] == "count" and "inner_states" in names:
      counts[names[names.index("inner_states") + 1]] = int(leaf)
  # Tower groups train with the rest (phase 0), so they also count 2.
  assert counts == {"connection": 1, "rest": 2, "task/task1": 2,
                    "task/task2": 2}, counts


def test_round_robin_inactive_towers_get_no_update():
  # Step 0 trains task 0 only, step 1 task 1 only.  Task 0's tower gets no
  # update at step 1 (Adam's momentum moved it by ~6.7e-4 before), and task
  # 1's tower, trained for the first time at step 1, gets Adam's first step
  # (a parameter without a gradient is skipped, as torch.optim.Adam does).
  lr = 0.1
  c = _alternating_components(model="shared_bottom", lr=lr)
  names = [t.name for t in c.tasks]
  states = _run(c, 3)
  t0 = [s.params["towers"][names[0]] for s in states]
  t1 = [s.params["towers"][names[1]] for s in states]
  _assert_adam_first_step(t0[0], t0[1], lr)
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(t1[0]),
                                                  _leaves(t1[1])))
  assert all(np.array_equal(a, b) for a, b in zip(_leaves(t0[1]),
                                                  _leaves(t0[2])))
  _assert_adam_first_step(t1[1], t1[2], lr)


# --------------------------------------------------------------------------
# Rep mode: the Gramian of the representation gradients, two constructions.
# --------------------------------------------------------------------------


def _rep_gradients(c, state, batch):
  """R [K, B, H]: each task's loss gradient w.r.t. the representation, by
  K separate gradients through the heads (the step's rep-mode keys)."""
  rng = jax.random.fold_in(state.rng, state.step)
  rng, _ = jax.random.split(rng)
  r_enc, r_head = jax.random.split(rng)
  rep = c.model.apply({"params": state.params}, batch, train=True,
                      rngs={"dropout": r_enc}, method="represent")

  def loss_k(rep, k):
    out = c.model.apply({"params": state.params}, rep, train=True,
                        rngs={"dropout": r_head}, method="heads")
    return task_losses(out, batch, c.tasks)[k]

  # rep is [K, B, H] with slot k read by tower k only: R_k = slot k of the
  # gradient of L_k (the other slots are zero).
  return np.stack([np.asarray(jax.grad(loss_k)(rep, k)[k], np.float64)
                   for k in range(len(c.tasks))])


def test_rep_gramian_rows_and_batch_sum_against_numpy():
  c = _components("mmoe")
  state = loop.init_state(c)
  batch = _batch(c)
  strategy = _gramian_mean(mode="rep")
  state = state.replace(strategy_state=strategy.init(len(c.tasks)))
  r = _rep_gradients(c, state, batch)
  k, b = r.shape[:2]
  flat = r.reshape(k, -1)
  expected = {"rows": flat @ flat.T,  # sum over examples of per-example dots
              "batch_sum": np.einsum("kbh,jch->kj", r, r)}  # (sum_b)(sum_c)
  grams = {}
  for how in ("rows", "batch_sum"):
    step = jax.jit(make_train_step(c.model, c.tasks, strategy, c.optimizer,
                                   "rep", rep_gramian=how))
    new, _ = step(state, batch)
    grams[how] = np.asarray(new.strategy_state["gram"])
    np.testing.assert_allclose(grams[how], expected[how], rtol=1e-4,
                               atol=1e-7 * np.abs(expected[how]).max())
  assert not np.allclose(grams["rows"], grams["batch_sum"], rtol=1e-2)


def test_rep_gramian_batch_sum_reorders_norms_and_rejects_jacobian_kind():
  # Per-example gradients that cancel over the batch: task 0 has the larger
  # rows norm, task 1 the larger batch-summed norm.
  r = np.zeros((2, 4, 3))
  r[0, :, 0] = [5.0, -5.0, 5.0, -5.0]
  r[1, :, 1] = 1.0
  rows, summed = r.reshape(2, -1), r.sum(1)
  assert np.linalg.norm(rows[0]) > np.linalg.norm(rows[1])
  assert np.linalg.norm(summed[0]) < np.linalg.norm(summed[1])
  from mtrec_jax import weighting
  c = _components("mmoe")
  with pytest.raises(ValueError, match="batch_sum"):
    make_train_step(c.model, c.tasks, weighting.build("graddrop"),
                    c.optimizer, "rep", rep_gramian="batch_sum")
  with pytest.raises(ValueError, match="rep_gramian 'cols'"):
    make_train_step(c.model, c.tasks, c.strategy, c.optimizer,
                    rep_gramian="cols")

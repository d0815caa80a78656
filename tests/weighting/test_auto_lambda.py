"""Auto-Lambda (`mtrec_jax/weighting/auto_lambda.py`): the meta-gradient
against a NumPy closed form on quadratic tasks and against differentiation
through the virtual step on a small network (float64); the meta optimiser's
step; the train step and the train loop with meta batches; the direction of
the weights on a constructed conflict; clear errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtrec_jax.weighting as W
from mtrec_jax.weighting import auto_lambda as AL


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# --------------------------------------------------------------------------
# Quadratic tasks: L_k(theta; batch) = 1/2 sum_p a_kp (theta_p - c_kp)^2,
# theta = {"w": [3], "v": [2]} (P = 5), the batch holds a [K, 5], c [K, 5].
# --------------------------------------------------------------------------


def _quad_losses(params, batch, rng):
  del rng
  theta = jnp.concatenate([params["w"], params["v"]])
  return 0.5 * jnp.sum(batch["a"] * (theta - batch["c"]) ** 2, axis=1)


def _numpy_meta_grad(theta, lam, tr, va, alpha, pri):
  """Closed form: g_k = a_k (theta - c_k); theta' = theta - alpha sum
  lam_k g_k; d meta / d lam_k = -alpha g_k . sum_{j pri} a'_j (theta' -
  c'_j)."""
  g = tr["a"] * (theta - tr["c"])
  theta2 = theta - alpha * lam @ g
  v = (pri[:, None] * va["a"] * (theta2 - va["c"])).sum(0)
  return -alpha * g @ v


def _numpy_meta_loss(theta, lam, tr, va, alpha, pri):
  g = tr["a"] * (theta - tr["c"])
  theta2 = theta - alpha * lam @ g
  return float(pri @ (0.5 * (va["a"] * (theta2 - va["c"]) ** 2).sum(1)))


def _quad_case(seed, k=4, zero_row=False, scales=None, identical=False,
               all_zero=False):
  rng = np.random.default_rng(seed)
  tr = {"a": rng.uniform(0.2, 2.0, (k, 5)), "c": rng.normal(size=(k, 5))}
  va = {"a": rng.uniform(0.2, 2.0, (k, 5)), "c": rng.normal(size=(k, 5))}
  if zero_row:  # task 1 has no gradient in the training batch
    tr["a"][1] = 0.0
  if identical:  # tasks 0 and 2 are the same training task
    tr["a"][2], tr["c"][2] = tr["a"][0], tr["c"][0]
  if all_zero:  # no task has a training gradient
    tr["a"][:] = 0.0
  if scales is not None:
    tr["a"] = tr["a"] * np.asarray(scales)[:, None]
  theta = rng.normal(size=5)
  lam = rng.uniform(0.05, 1.0, k)
  return theta, lam, tr, va


def _as_params(theta):
  return {"w": jnp.asarray(theta[:3]), "v": jnp.asarray(theta[3:])}


CASES = [dict(seed=0), dict(seed=1, k=2), dict(seed=2, k=6),  # K > P
         dict(seed=3, zero_row=True), dict(seed=4, scales=[0.1, 1, 10, 1]),
         dict(seed=5, scales=[1, 100, 1, 1]), dict(seed=6, identical=True),
         dict(seed=7, all_zero=True)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("hessian", ["exact", "finite_difference"])
@pytest.mark.parametrize("primary", ["all", "first"])
def test_meta_gradient_matches_numpy_closed_form(case, hessian, primary, x64):
  theta, lam, tr, va = _quad_case(**case)
  k = len(lam)
  pri = np.ones(k) if primary == "all" else np.eye(k)[0]
  alpha = 0.3
  got, value = AL.meta_gradient(
      _quad_losses, _as_params(theta), jnp.asarray(lam),
      jax.tree_util.tree_map(jnp.asarray, tr),
      jax.tree_util.tree_map(jnp.asarray, va), alpha, jnp.asarray(pri),
      jax.random.PRNGKey(0), hessian)
  want = _numpy_meta_grad(theta, lam, tr, va, alpha, pri)
  # Central differences of the quadratic losses are exact up to rounding.
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-7,
                             atol=1e-9 * np.abs(want).max())
  np.testing.assert_allclose(float(value),
                             _numpy_meta_loss(theta, lam, tr, va, alpha, pri),
                             rtol=1e-12)
  # And against central differences of the whole meta loss in lambda.
  h = 1e-6
  fd = np.array([(_numpy_meta_loss(theta, lam + h * e, tr, va, alpha, pri) -
                  _numpy_meta_loss(theta, lam - h * e, tr, va, alpha, pri))
                 / (2 * h) for e in np.eye(k)])
  np.testing.assert_allclose(np.asarray(got), fd, rtol=1e-6,
                             atol=1e-8 * max(np.abs(fd).max(), 1.0))
  if case.get("zero_row"):
    assert float(got[1]) == 0.0
  if case.get("identical"):
    assert float(got[2]) == pytest.approx(float(got[0]), rel=1e-12)
  if case.get("all_zero"):
    np.testing.assert_array_equal(np.asarray(got), 0.0)


def test_zero_meta_gradient_is_zero_not_nan(x64):
  """theta' at every primary task's minimum: v = 0, so J v = 0 (the
  official finite difference would divide by ||v|| = 0)."""
  theta, lam, tr, va = _quad_case(5, k=3)
  va["c"] = np.broadcast_to(theta, va["c"].shape).copy()
  for hessian in ("exact", "finite_difference"):
    got, _ = AL.meta_gradient(
        _quad_losses, _as_params(theta), jnp.asarray(lam),
        jax.tree_util.tree_map(jnp.asarray, tr),
        jax.tree_util.tree_map(jnp.asarray, va), 0.0, jnp.ones(3),
        jax.random.PRNGKey(0), hessian)
    np.testing.assert_array_equal(np.asarray(got), 0.0)


# --------------------------------------------------------------------------
# A small tanh network with dropout: the meta-gradient equals the gradient
# through the virtual step (reverse over reverse, a different code path).
# --------------------------------------------------------------------------


def _mlp_losses(params, batch, rng):
  keep = jax.random.bernoulli(rng, 0.8, (batch["x"].shape[0], 6))
  h = jnp.tanh(batch["x"] @ params["w1"]) * keep / 0.8
  out = h @ params["w2"]  # [B, K]
  return jnp.mean((out - batch["y"]) ** 2, axis=0)


def test_meta_gradient_equals_gradient_through_virtual_step(x64):
  rng = np.random.default_rng(7)
  params = {"w1": jnp.asarray(rng.normal(size=(4, 6))),
            "w2": jnp.asarray(rng.normal(size=(6, 3)) / 3)}
  batch = {"x": jnp.asarray(rng.normal(size=(16, 4))),
           "y": jnp.asarray(rng.normal(size=(16, 3)))}
  meta = {"x": jnp.asarray(rng.normal(size=(16, 4))),
          "y": jnp.asarray(rng.normal(size=(16, 3)))}
  lam = jnp.asarray([0.1, 0.7, 0.3])
  pri = jnp.asarray([1.0, 0.0, 1.0])
  key, alpha = jax.random.PRNGKey(3), 0.05
  r_train, r_meta = jax.random.split(key)

  def meta_loss(lam):
    g = jax.grad(lambda p: lam @ _mlp_losses(p, batch, r_train))(params)
    virtual = jax.tree_util.tree_map(lambda p, d: p - alpha * d, params, g)
    return pri @ _mlp_losses(virtual, meta, r_meta)

  want = jax.grad(meta_loss)(lam)
  exact, value = AL.meta_gradient(_mlp_losses, params, lam, batch, meta,
                                  alpha, pri, key, "exact")
  np.testing.assert_allclose(np.asarray(exact), np.asarray(want), rtol=1e-10)
  np.testing.assert_allclose(float(value), float(meta_loss(lam)), rtol=1e-12)
  fd, _ = AL.meta_gradient(_mlp_losses, params, lam, batch, meta, alpha, pri,
                           key, "finite_difference")
  # The official approximation: O(eps^2) error, eps = 0.01 / ||v||.
  np.testing.assert_allclose(np.asarray(fd), np.asarray(want), rtol=1e-3)


# --------------------------------------------------------------------------
# The strategy: state, meta optimiser, update_every, fixed weights outside
# the train step.
# --------------------------------------------------------------------------


def _meta(strategy, state, theta, tr, va, step=0, names=("a", "b", "c", "d")):
  return strategy.meta_update(
      state, losses_fn=_quad_losses, params=_as_params(theta),
      batch=jax.tree_util.tree_map(jnp.asarray, tr),
      meta_batch=jax.tree_util.tree_map(jnp.asarray, va),
      step=jnp.asarray(step), rng=jax.random.PRNGKey(0), names=names)


def test_meta_update_is_one_adam_step_on_lambda(x64):
  theta, _, tr, va = _quad_case(0)
  s = W.build("auto_lambda", virtual_lr=0.3, lr=1e-2)
  state = s.init_state(4)
  # The weights are float32 (one dtype across steps, as every state here).
  np.testing.assert_array_equal(np.asarray(state["weights"]), np.float32(0.1))
  lam = np.full(4, np.float32(0.1), np.float64)
  m = v = np.zeros(4)
  for t in range(1, 4):  # torch.optim.Adam's update, written out
    g = _numpy_meta_grad(theta, lam, tr, va, 0.3, np.ones(4))
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    lam = lam - 1e-2 * (m / (1 - 0.9 ** t)) / (
        np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    state, metrics = _meta(s, state, theta, tr, va, step=t - 1)
    np.testing.assert_allclose(np.asarray(state["weights"]), lam, rtol=1e-6)
    assert float(metrics["meta_updated"]) == 1.0


def test_update_every_skips_steps(x64):
  theta, _, tr, va = _quad_case(0)
  s = W.build("auto_lambda", virtual_lr=0.3, update_every=2)
  state0 = s.init_state(4)
  skipped, m1 = _meta(s, state0, theta, tr, va, step=1)
  jax.tree_util.tree_map(np.testing.assert_array_equal, skipped, state0)
  assert float(m1["meta_updated"]) == 0.0
  moved, m2 = _meta(s, state0, theta, tr, va, step=2)
  assert float(m2["meta_updated"]) == 1.0
  assert not np.allclose(np.asarray(moved["weights"]), 0.1)


def test_outside_the_step_it_applies_its_weights_unchanged():
  """`aggregate` / `as_optax` have no meta batch: fixed weights 0.1 (from a
  fresh state), i.e. 0.1 times the sum of the rows."""
  jac = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(W.aggregate("auto_lambda", jac)),
                             0.1 * jac.sum(0), rtol=1e-6)


def test_direction_on_a_constructed_conflict(x64):
  """Primary task 0 pulls theta to +1, auxiliary task 1 to -1 (in both
  batches), auxiliary task 2 also to +1: the conflicting auxiliary's weight
  falls, the helpful one's and the primary's rise."""
  k, p = 3, 5
  tr = {"a": np.ones((k, p)),
        "c": np.stack([np.ones(p), -np.ones(p), np.ones(p)])}
  va = {"a": np.ones((k, p)), "c": tr["c"].copy()}
  s = W.build("auto_lambda", primary=(0,), virtual_lr=0.1, lr=1e-2)
  state, theta = s.init_state(k), np.zeros(p)
  for t in range(20):
    state, _ = _meta(s, state, theta, tr, va, step=t, names=("p", "x", "y"))
    lam = np.asarray(state["weights"])
    theta = theta - 0.1 * lam @ (tr["a"] * (theta - tr["c"]))  # train step
  assert lam[1] < 0.1 - 0.1 and lam[0] > 0.1 + 0.1 and lam[2] > 0.1 + 0.1, lam


# --------------------------------------------------------------------------
# The real train step and loop (smallest synthetic setup).
# --------------------------------------------------------------------------


def _config(**overrides):
  from mtrec_jax import config as config_lib
  cfg = config_lib.apply_overrides(config_lib.base_config(), {
      "data.name": "mmoe_synthetic", "model.name": "shared_bottom",
      "model.bottom_hidden": (16,), "model.tower_hidden": (8,),
      "train.batch_size": 32, "strategy.name": "auto_lambda"})
  with cfg.data.ignore_type():
    cfg.data.n_train, cfg.data.n_val, cfg.data.n_test = 256, 64, 64
  return config_lib.apply_overrides(cfg, overrides)


def _losses_fn(c):
  from mtrec_jax.train.step import task_losses

  def losses(params, batch, rng):
    out = c.model.apply({"params": params}, batch, train=True,
                        rngs={"dropout": rng})
    return task_losses(out, batch, c.tasks)
  return losses


def test_train_step_meta_update_and_direction():
  """Through `make_train_step`: the first step's weights are the Adam step
  on the meta-gradient computed outside the step (same keys).  A constructed
  conflict: task2's training labels are flipped (-y2) while the meta batches
  keep the true ones (both tasks primary, the default): task2's training
  gradient works against its meta loss, so its weight falls, and task1's
  rises."""
  from mtrec_jax.train import loop
  from mtrec_jax.train.step import make_train_step
  cfg = _config(**{"strategy.hparams": {"virtual_lr": 0.1, "lr": 1e-2}})
  c = loop.Components(cfg)
  assert [t.name for t in c.tasks] == ["task1", "task2"]
  label = c.tasks[1].label
  rows = dict(c.dataset.splits["train"])
  meta_batches = [{k: v[i * 16:(i + 1) * 16 + 16] for k, v in rows.items()}
                  for i in range(8)]
  flipped = dict(rows, **{label: -rows[label]})
  batches = [{k: v[128 + i * 16:128 + (i + 1) * 16 + 16]
              for k, v in flipped.items()} for i in range(7)]
  sgd = optax.sgd(0.1)
  state = loop.init_state(c)
  state = state.replace(opt_state=sgd.init(state.params))
  step = jax.jit(make_train_step(c.model, c.tasks, c.strategy, sgd))
  with pytest.raises(ValueError, match="with_meta_batch"):
    step(state, batches[0])

  # The first step, replayed: the step's key, then fold_in(., 1).
  rng = jax.random.fold_in(state.rng, state.step)
  rng, _ = jax.random.split(rng)
  grad, _ = AL.meta_gradient(_losses_fn(c), state.params,
                             jnp.full((2,), 0.1), batches[0], meta_batches[0],
                             0.1, jnp.ones(2),
                             jax.random.fold_in(rng, 1))
  g = np.asarray(grad, np.float64)
  want = 0.1 - 1e-2 * g / (np.abs(g) + 1e-8)  # Adam's first step
  weights = []
  for i in range(7):
    state, metrics = step(state, AL.with_meta_batch(batches[i],
                                                    meta_batches[i]))
    assert int(state.diverged_step) == -1
    for key, value in metrics.items():
      assert np.isfinite(value), (i, key)
    weights.append(np.asarray(state.strategy_state["weights"]))
    if i == 0:
      np.testing.assert_allclose(weights[0], want, rtol=1e-5)
      np.testing.assert_allclose(float(metrics["weight/task1"]), want[0],
                                 rtol=1e-5)
  assert weights[-1][1] < 0.1 < weights[-1][0], weights


def test_train_and_evaluate_runs_with_meta_batches(tmp_path):
  """A whole (tiny) run through `loop.train_and_evaluate`: the loop feeds
  meta batches from the validation split, the virtual step uses the
  optimiser's learning rate, the results are finite and the weights move."""
  from mtrec_jax.train import loop
  cfg = _config(**{"train.num_steps": 8, "train.eval_every": 4,
                   "train.log_every": 4,
                   "strategy.hparams": {"meta_split": "val", "lr": 1e-2}})
  res = loop.train_and_evaluate(cfg, tmp_path, experiment="t",
                                grid={"seed": 0}, progress=False)
  assert res["status"] == "done" and res["steps"] == 8
  assert np.isfinite(res["metrics"]["val/loss"])
  weights = np.asarray(res["strategy_state"]["weights"])
  assert np.all(np.isfinite(weights)) and np.abs(weights - 0.1).max() > 1e-3
  logged = [r["weight/task1"] for r in res["train_log"]]
  assert logged[-1] != pytest.approx(0.1)


def test_meta_split_larger_than_the_split_is_a_clear_error(tmp_path):
  from mtrec_jax.train import loop
  cfg = _config(**{"train.batch_size": 128, "train.num_steps": 2,
                   "strategy.hparams": {"meta_split": "val"}})
  with pytest.raises(ValueError, match="lower train.batch_size"):
    loop.train_and_evaluate(cfg, None, progress=False)


# --------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------


def test_bad_hyper_parameters_are_clear_errors():
  with pytest.raises(ValueError, match="hessian"):
    W.build("auto_lambda", hessian="fd")
  with pytest.raises(ValueError, match="meta_split"):
    W.build("auto_lambda", meta_split="test")
  with pytest.raises(ValueError, match="update_every"):
    W.build("auto_lambda", update_every=0)
  with pytest.raises(ValueError, match="primary is empty"):
    W.build("auto_lambda", primary=())
  with pytest.raises(ValueError, match="is not a task"):
    AL.primary_mask(["nope"], ("a", "b"))
  with pytest.raises(ValueError, match="out of range"):
    AL.primary_mask([2], ("a", "b"))
  theta, _, tr, va = _quad_case(0)
  s = W.build("auto_lambda")
  with pytest.raises(ValueError, match="virtual_lr"):
    _meta(s, s.init_state(4), theta, tr, va)

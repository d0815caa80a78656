"""MoCo, DB-MTL, ExcessMTL and MetaBalance: the strategies whose state is
shaped by the Jacobian rows.

* multi-step trajectories (weights and updates) against the independent
  NumPy replays in `reference_stateful.py`, in float64;
* degenerate Jacobians (zero rows, all zero, K > P, exact opposites,
  identical rows, one row x100) stay finite and agree with the replays;
* invariances each method promises (MoCo: per-task gradient scale;
  DB-MTL: a row's scale only rescales the update; ExcessMTL: weights free of
  each task's gradient scale; MetaBalance with r = 1: auxiliary scale);
* small hand-computed values (the papers give no numeric examples);
* the per-parameter state plumbing: `init_state`, `as_optax` and the real
  train step in params and rep mode (`loop.init_state`).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtrec_jax.weighting as W
from mtrec_jax.weighting.base import tree_size

try:
  from tests.weighting import reference_stateful as ref
except ImportError:  # tests/ not importable as a package.
  import reference_stateful as ref  # type: ignore[no-redef]

NEW = ("moco", "db_mtl", "excess_mtl", "metabalance")


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _as64(tree):
  return jax.tree_util.tree_map(
      lambda x: x.astype(jnp.float64)
      if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@functools.lru_cache(maxsize=None)
def _jitted(name, frozen_hparams):
  """(strategy, jitted step), one per strategy and hyper-parameters, so the
  cases of one shape and dtype compile once."""
  s = W.build(name, **dict(frozen_hparams))

  @jax.jit
  def step(state, jac, loss):
    return W.apply_strategy(s, state, losses=loss, stacked_grads=jac)

  return s, step


def run_jax(name, jacobians, losses, **hparams):
  """Replays strategy `name` over the steps; returns (weights, updates,
  metrics) per step, from a fresh state (float64 when x64 is on)."""
  s, step = _jitted(name, tuple(sorted(hparams.items())))
  k, p = np.shape(jacobians[0])
  state = s.init_state(k, row=p)
  if jax.config.jax_enable_x64:
    state = _as64(state)
  weights, updates, metrics = [], [], []
  for jac, loss in zip(jacobians, losses):
    update, out = step(state, jnp.asarray(jac), jnp.asarray(loss))
    state = out.state
    weights.append(np.asarray(out.weights, np.float64))
    updates.append(np.asarray(update, np.float64))
    metrics.append({n: float(v) for n, v in out.metrics.items()})
  return weights, updates, metrics


def run_ref(name, jacobians, losses, **hparams):
  """(weights, updates) of the NumPy replay of `name` on flat rows."""
  if name == "metabalance":
    scales, updates = ref.metabalance([[j] for j in jacobians], **hparams)
    return [s[:, 0] for s in scales], [u[0] for u in updates]
  out = getattr(ref, name)(jacobians, losses, **hparams)
  return out[0], out[1]


def _sequence(seed, steps=6, k=3, p=7):
  """Correlated per-step Jacobians (a drifting base plus noise, rows of
  different scales) and positive losses."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(k, p)) * np.array([0.3, 1.0, 3.0][:k] +
                                            [1.0] * max(0, k - 3))[:, None]
  jacs, losses = [], []
  for _ in range(steps):
    base = base + 0.3 * rng.normal(size=(k, p))
    jacs.append(base + 0.5 * rng.normal(size=(k, p)))
    losses.append(rng.uniform(0.2, 2.0, size=k))
  return jacs, losses


TRAJECTORIES = [
    ("moco", {}),
    ("moco", {"simplex": "projection", "normalize": False, "rho": 0.1,
              "beta_sigma": 0.0, "gamma": 0.05}),
    ("moco", {"gamma": 2.0, "gamma_sigma": 0.0}),
    ("db_mtl", {}),
    ("db_mtl", {"beta": 0.5, "beta_sigma": 0.5}),
    ("excess_mtl", {}),
    ("excess_mtl", {"robust_step_size": 1.0}),
    ("metabalance", {}),
    ("metabalance", {"main": 2, "relax_factor": 1.0, "adapt": "reduce"}),
    ("metabalance", {"main": 1, "adapt": "enlarge", "beta": 0.5}),
]


@pytest.mark.parametrize("name,hparams", TRAJECTORIES)
def test_trajectory_matches_reference(name, hparams, x64):
  jacs, losses = _sequence(1)
  w, u, _ = run_jax(name, jacs, losses, **hparams)
  rw, ru = run_ref(name, jacs, losses, **hparams)
  for t in range(len(jacs)):
    np.testing.assert_allclose(w[t], rw[t], rtol=1e-5, atol=1e-12,
                               err_msg=f"{name} weights, step {t}")
    # atol: the fresh state is float32 (lambda = 1/3 rounded), which shows
    # in entries of the update that nearly cancel.
    np.testing.assert_allclose(u[t], ru[t], rtol=1e-5,
                               atol=1e-7 * np.abs(ru[t]).max(),
                               err_msg=f"{name} update, step {t}")
  # The trajectory is not trivial: the weights move over the steps.
  if name != "metabalance" or hparams.get("adapt", "both") == "both":
    assert np.ptp(np.stack(w), axis=0).max() > 1e-4, (name, w)


def test_db_mtl_reports_its_rescaling_factors(x64):
  jacs, losses = _sequence(2)
  _, _, metrics = run_jax("db_mtl", jacs, losses)
  _, _, alphas = ref.db_mtl(jacs, losses)
  for m, a in zip(metrics, alphas):
    np.testing.assert_allclose([m[f"alpha/{k}"] for k in range(3)], a,
                               rtol=1e-9)


def test_excess_mtl_task_without_gradient_at_first(x64):
  """A task with no gradient in the first batches (no positive labels) gets
  its normaliser at its first non-zero gradient; LibMTL would divide by 0."""
  jacs, losses = _sequence(3)
  for t in range(2):
    jacs[t][1] = 0.0
  for hp in ({}, {"robust_step_size": 1.0}):
    w, u, _ = run_jax("excess_mtl", jacs, losses, **hp)
    rw, ru = ref.excess_mtl(jacs, **hp)
    assert all(np.all(np.isfinite(x)) for x in w + u)
    for t in range(len(jacs)):
      np.testing.assert_allclose(w[t], rw[t], rtol=1e-9)
      np.testing.assert_allclose(u[t], ru[t], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose([x.sum() for x in w], 3.0, rtol=1e-12)


# --------------------------------------------------------------------------
# Degenerate Jacobians.
# --------------------------------------------------------------------------


def _degenerate():
  rng = np.random.default_rng(4)
  cases = {}
  j = rng.normal(size=(3, 6))
  j[1] = 0.0
  cases["zero_row"] = j
  cases["all_zero"] = np.zeros((3, 6))
  cases["k_gt_p"] = rng.normal(size=(5, 2))
  j = rng.normal(size=(3, 6))
  j[1] = -j[0]
  cases["opposite_rows"] = j
  j = rng.normal(size=(3, 6))
  j[2] = j[0]
  cases["identical_rows"] = j
  j = rng.normal(size=(3, 6))
  j[0] *= 100.0
  cases["one_row_x100"] = j
  cases["tiny"] = 1e-10 * rng.normal(size=(3, 6))
  return cases


DEGENERATE = _degenerate()


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("name", NEW)
def test_degenerate_inputs_finite_and_match_reference(name, case, dtype):
  jac = DEGENERATE[case]
  k = jac.shape[0]
  # Four steps on the same Jacobian, then on a perturbed one.
  jacs = [jac] * 4 + [jac + 0.1 * np.ones_like(jac)]
  losses = [np.linspace(0.5, 1.5, k)] * 5
  w, u, _ = run_jax(name, [j.astype(dtype) for j in jacs],
                    [l.astype(dtype) for l in losses])
  for x in w + u:
    assert np.all(np.isfinite(x)), (name, case, w, u)
  if dtype != jnp.float64:
    return
  rw, ru = run_ref(name, jacs, losses)
  for t in range(len(jacs)):
    np.testing.assert_allclose(w[t], rw[t], rtol=1e-6, atol=1e-12,
                               err_msg=f"{name} {case} weights, step {t}")
    scale = max(np.abs(ru[t]).max(), 1e-300)
    np.testing.assert_allclose(u[t], ru[t], rtol=1e-6, atol=1e-9 * scale,
                               err_msg=f"{name} {case} update, step {t}")
  if case == "all_zero":
    for x in u[:4]:
      np.testing.assert_array_equal(x, 0.0)


@pytest.mark.parametrize("name", NEW)
def test_exact_opposites_cancel(name, x64):
  """Two tasks with exactly opposite gradients and equal losses: every
  method here treats them symmetrically, so the update is zero."""
  g = np.random.default_rng(5).normal(size=6)
  jac = np.stack([g, -g])
  hp = {"relax_factor": 1.0} if name == "metabalance" else {}
  _, u, _ = run_jax(name, [jac] * 3, [np.ones(2)] * 3, **hp)
  for x in u:
    assert np.linalg.norm(x) <= 1e-12 * np.linalg.norm(g), (name, x)


def test_moco_normalized_ignores_gradient_scale(x64):
  """With LibMTL's normalisation each gradient is rescaled to norm L_k, so
  scaling one task's gradients changes nothing."""
  jacs, losses = _sequence(6)
  scaled = [j * np.array([[100.0], [1.0], [0.01]]) for j in jacs]
  _, u, _ = run_jax("moco", jacs, losses)
  _, us, _ = run_jax("moco", scaled, losses)
  # Only eps = 1e-8 added to the norms (~0.03 for the row x 0.01) breaks it.
  np.testing.assert_allclose(np.stack(us), np.stack(u), rtol=1e-5)


def test_db_mtl_row_scale_only_rescales_update(x64):
  """Each buffer is rescaled to the largest norm, so scaling one task's
  gradients by c at every step scales the update by (new max / old max)."""
  jacs, losses = _sequence(7)
  _, u, _ = run_jax("db_mtl", jacs, losses)
  scaled = [j * np.array([[100.0], [1.0], [1.0]]) for j in jacs]
  _, us, _ = run_jax("db_mtl", scaled, losses)
  for a, b in zip(u, us):
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cos > 1 - 1e-12
    assert np.linalg.norm(b) > np.linalg.norm(a)


def test_excess_mtl_weights_ignore_gradient_scale(x64):
  """The excess-risk estimate of a task is linear in its gradient's scale
  and divided by its first value, so the weights are scale-free."""
  jacs, losses = _sequence(8)
  # Only eps under the root breaks the invariance: a tiny one here.
  hp = {"robust_step_size": 1.0, "eps": 1e-14}
  w, _, _ = run_jax("excess_mtl", jacs, losses, **hp)
  scaled = [j * np.array([[1e3], [1.0], [1e-2]]) for j in jacs]
  ws, _, _ = run_jax("excess_mtl", scaled, losses, **hp)
  np.testing.assert_allclose(np.stack(ws), np.stack(w), rtol=1e-6)
  assert np.ptp(np.stack(w), axis=0).max() > 0.05  # the weights do move


def test_metabalance_full_relax_ignores_auxiliary_scale(x64):
  """With r = 1 every auxiliary gradient gets the main one's average norm:
  scaling an auxiliary task's gradients at every step changes nothing."""
  jacs, losses = _sequence(9)
  _, u, _ = run_jax("metabalance", jacs, losses, relax_factor=1.0)
  scaled = [j * np.array([[1.0], [100.0], [0.01]]) for j in jacs]
  _, us, _ = run_jax("metabalance", scaled, losses, relax_factor=1.0)
  np.testing.assert_allclose(np.stack(us), np.stack(u), rtol=1e-9)


# --------------------------------------------------------------------------
# Hand-computed values.
# --------------------------------------------------------------------------


def test_golden_values(x64):
  jac = np.array([[3.0, 0.0], [0.0, 4.0]])
  # MoCo, step 1, losses 1: g = unit rows, y = g / 2, Y Y^T lambda = lambda
  # / 8 for lambda = (1/2, 1/2): lambda stays, update = (1/4, 1/4).
  np.testing.assert_allclose(W.aggregate("moco", jac), [0.25, 0.25],
                             rtol=1e-7)
  # Losses (2, 1): y = diag(1, 1/2); step = (1/2, 1/2) - 0.1 (1/2, 1/8).
  lam0 = 1.0 / (1.0 + math.exp(-0.1 * (0.125 - 0.5)))
  np.testing.assert_allclose(
      W.aggregate("moco", jac, losses=jnp.array([2.0, 1.0])),
      [lam0, 0.5 * (1.0 - lam0)], rtol=1e-7)
  # DB-MTL, step 1, losses 1: buffers 0.1 g, both rescaled to norm 0.4.
  np.testing.assert_allclose(W.aggregate("db_mtl", jac), [0.4, 0.4],
                             rtol=1e-6)
  # ExcessMTL: the first step keeps weights 1.
  np.testing.assert_allclose(W.aggregate("excess_mtl", jac), [3.0, 4.0],
                             rtol=1e-12)
  # ExcessMTL, two steps: J1 = diag(1, 2), J2 = 2 I: risks (1, 2) then
  # (4 / sqrt 5, 4 / sqrt 8), ratios (4 / sqrt 5, 1 / sqrt 2).
  w, u, _ = run_jax("excess_mtl", [np.diag([1.0, 2.0]), 2 * np.eye(2)],
                    [np.ones(2)] * 2)
  d = 0.01 * (4 / math.sqrt(5) - 1 / math.sqrt(2))
  w0 = 2.0 / (1.0 + math.exp(-d))
  np.testing.assert_allclose(w[1], [w0, 2.0 - w0], rtol=1e-6)
  np.testing.assert_allclose(u[1], [2 * w0, 2 * (2.0 - w0)], rtol=1e-6)
  # MetaBalance: main norm 2, auxiliary norm 8, r = 0.7: the auxiliary
  # gradient is scaled by 0.7 * 2 / 8 + 0.3 = 0.475.
  j = np.array([[2.0, 0.0], [0.0, 8.0]])
  np.testing.assert_allclose(W.aggregate("metabalance", j), [2.0, 3.8],
                             rtol=1e-7)
  np.testing.assert_allclose(W.aggregate("metabalance", j, main=1),
                             [0.7 * 8 + 0.3 * 2, 8.0], rtol=1e-7)


# --------------------------------------------------------------------------
# The per-parameter state plumbing.
# --------------------------------------------------------------------------


def test_init_state_needs_the_row():
  for name in NEW:
    s = W.build(name)
    assert s.row_state
    with pytest.raises(ValueError, match="per-parameter state"):
      s.init_state(3)
  # Existing strategies ignore the row.
  assert W.build("mgda").init_state(3, row=10) == ()
  with pytest.raises(ValueError, match="positive length"):
    W.build("moco").init_state(3, row=0)


@pytest.mark.parametrize("name", ["moco", "db_mtl", "excess_mtl"])
def test_state_shape_mismatch_is_a_clear_error(name):
  s = W.build(name)
  state = s.init_state(3, row=5)
  with pytest.raises(ValueError, match="init_state"):
    s.aggregate(state, jacobian=jnp.ones((3, 6)), losses=jnp.ones(3),
                step=0, key=None)


def test_bad_hyper_parameters_are_clear_errors():
  with pytest.raises(ValueError, match="simplex"):
    W.build("moco", simplex="euclid")
  with pytest.raises(ValueError, match="mode=params"):
    W.build("moco", mode="rep")
  with pytest.raises(ValueError, match="mode=params"):
    W.build("db_mtl", mode="rep")
  with pytest.raises(ValueError, match="beta"):
    W.build("db_mtl", beta=1.0)
  with pytest.raises(ValueError, match="robust_step_size"):
    W.build("excess_mtl", robust_step_size=-1.0)
  with pytest.raises(ValueError, match="relax_factor"):
    W.build("metabalance", relax_factor=1.5)
  with pytest.raises(ValueError, match="granularity"):
    W.build("metabalance", granularity="layer")
  with pytest.raises(ValueError, match=r"main=3 but there are only 3 tasks"):
    W.build("metabalance", main=3).init_state(3, row=4)


def test_as_optax_sizes_the_state_from_params_and_metabalance_per_tensor(x64):
  """`as_optax` shapes the state from the params; MetaBalance balances each
  parameter tensor separately (the official optimizer's granularity)."""
  k = 3
  params = {"a": jnp.zeros((2, 3)), "b": jnp.zeros((4,))}
  tx = W.as_optax(W.build("moco"), k)
  assert tx.init(params).inner["y"].shape == (k, tree_size(params))

  rng = np.random.default_rng(10)
  steps = [{"a": rng.normal(size=(k, 2, 3)) * np.array([1.0, 5.0, 0.2])
                 [:, None, None],
            "b": rng.normal(size=(k, 4)) * np.array([0.1, 1.0, 20.0])[:, None]}
           for _ in range(5)]
  tx = W.as_optax(W.build("metabalance"), k)
  state = _as64(tx.init(_as64(params)))
  assert state.inner["norms"].shape == (k, 2)
  update_fn = jax.jit(lambda g, s: tx.update(g, s))
  got = []
  for g in steps:
    update, state = update_fn(jax.tree_util.tree_map(jnp.asarray, g), state)
    got.append((update, np.asarray(state.weights)))
  scales, want = ref.metabalance(
      [[g["a"].reshape(k, -1), g["b"]] for g in steps])
  for (update, weights), s, w in zip(got, scales, want):
    np.testing.assert_allclose(np.asarray(update["a"]).ravel(), w[0],
                               rtol=1e-9)
    np.testing.assert_allclose(np.asarray(update["b"]), w[1], rtol=1e-9)
    np.testing.assert_allclose(weights, s.mean(axis=1), rtol=1e-9)
  # Per-tensor differs from one global norm here (the tensors' scales
  # disagree), so the granularity matters.
  global_tx = W.as_optax(W.build("metabalance", granularity="global"), k)
  u_global, _ = global_tx.update(
      jax.tree_util.tree_map(jnp.asarray, steps[0]),
      _as64(global_tx.init(_as64(params))))
  assert not np.allclose(np.asarray(u_global["b"]), want[0][1], rtol=1e-3)


# --------------------------------------------------------------------------
# End to end: the real train step (`loop.init_state`, `make_train_step`).
# --------------------------------------------------------------------------


def _config(name, mode, **overrides):
  """The smallest synthetic setup: shared-bottom on 256 MMoE-synthetic
  rows, two tasks."""
  from mtrec_jax import config as config_lib
  cfg = config_lib.apply_overrides(config_lib.base_config(), {
      "data.name": "mmoe_synthetic", "model.name": "shared_bottom",
      "model.bottom_hidden": (16,), "model.tower_hidden": (8,),
      "train.batch_size": 32, "strategy.name": name, "strategy.mode": mode})
  with cfg.data.ignore_type():
    cfg.data.n_train, cfg.data.n_val, cfg.data.n_test = 256, 64, 64
  return config_lib.apply_overrides(cfg, overrides)


def _components(name, mode):
  from mtrec_jax.train import loop
  return loop.Components(_config(name, mode))


def _batches(c, n=32, count=3):
  train = c.dataset.splits["train"]
  return [{k: v[i * n:(i + 1) * n] for k, v in train.items()}
          for i in range(count)]


def _explicit_jacobian(c, state, batch):
  """Per-task losses and gradients w.r.t. params['shared'] from K separate
  `jax.grad` calls (the step's dropout key, as test_step.py does)."""
  from mtrec_jax.train.step import task_losses
  rng = jax.random.fold_in(state.rng, state.step)
  rng, _ = jax.random.split(rng)

  def loss_k(params, k):
    out = c.model.apply({"params": params}, batch, train=True,
                        rngs={"dropout": rng})
    return task_losses(out, batch, c.tasks)[k]

  losses, grads = [], []
  for k in range(len(c.tasks)):
    value, g = jax.value_and_grad(loss_k)(state.params, k)
    losses.append(float(value))
    grads.append(g["shared"])
  return np.array(losses), grads


E2E = [("moco", "params"), ("db_mtl", "params"), ("excess_mtl", "params"),
       ("excess_mtl", "rep"), ("metabalance", "params"),
       ("metabalance", "rep")]


@pytest.mark.parametrize("name,mode", E2E)
def test_trains_through_the_real_step(name, mode):
  from mtrec_jax.train import loop
  from mtrec_jax.train.step import make_train_step
  c = _components(name, mode)
  k = len(c.tasks)
  state0 = loop.init_state(c)
  # The state is shaped by the rows the step will give it.
  p = (tree_size(state0.params["shared"]) if mode == "params" else
       math.prod(jax.eval_shape(lambda q: c.model.apply(
           {"params": q}, _batches(c, 2, 1)[0], train=False,
           method="represent"), state0.params).shape[2:]))
  shapes = [x.shape for x in jax.tree_util.tree_leaves(state0.strategy_state)]
  if name == "metabalance":
    parts = 1 if mode == "rep" else len(jax.tree_util.tree_leaves(
        state0.params["shared"]))
    assert shapes == [(k, parts)]
  else:
    assert (k, p) in shapes, shapes
  sgd = optax.sgd(1.0)  # the applied update is minus the gradient
  state = state0.replace(opt_state=sgd.init(state0.params))
  step = jax.jit(make_train_step(c.model, c.tasks, c.strategy, sgd, mode))
  weights = []
  for i, batch in enumerate(_batches(c)):
    new, metrics = step(state, batch)
    assert int(new.diverged_step) == -1
    for key, value in metrics.items():
      assert np.isfinite(value), (name, mode, i, key)
    weights.append([float(metrics[f"weight/{t}"]) for t in c.task_names])
    if i == 0 and mode == "params":
      _check_first_update(c, name, state, new, batch)
    state = new
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()),
                                 state.params, state0.params)
  assert max(jax.tree_util.tree_leaves(moved["shared"])) > 0
  if name == "metabalance":  # the main task keeps weight 1
    np.testing.assert_allclose(np.array(weights)[:, 0], 1.0)
  if name in ("moco", "excess_mtl"):  # the weights move from step to step
    assert np.ptp(np.array(weights), axis=0).max() > 0


def _check_first_update(c, name, state, new, batch):
  """The step's shared update equals the NumPy replay on the explicit
  per-task Jacobian (first step from a fresh state)."""
  losses, grads = _explicit_jacobian(c, state, batch)
  got = jax.tree_util.tree_map(lambda a, b: np.asarray(a - b, np.float64),
                               state.params["shared"], new.params["shared"])
  leaves = [jax.tree_util.tree_leaves(g) for g in grads]
  if name == "metabalance":
    parts = [np.stack([np.asarray(l[t], np.float64).ravel() for l in leaves])
             for t in range(len(leaves[0]))]
    _, (want,) = ref.metabalance([parts])
    for g, w in zip(jax.tree_util.tree_leaves(got), want):
      np.testing.assert_allclose(g.ravel(), w, rtol=2e-4,
                                 atol=1e-5 * np.abs(w).max())
    return
  jac = np.stack([np.concatenate([np.asarray(x, np.float64).ravel()
                                  for x in l]) for l in leaves])
  _, (want,) = run_ref(name, [jac], [losses])
  flat = np.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(got)])
  np.testing.assert_allclose(flat, want, rtol=2e-4,
                             atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name", ["moco", "db_mtl"])
def test_rep_mode_is_refused_with_the_fix(name):
  from mtrec_jax.train import loop
  from mtrec_jax.train.step import make_train_step
  c = _components(name, "rep")
  state = loop.init_state(c)
  step = jax.jit(make_train_step(c.model, c.tasks, c.strategy, c.optimizer,
                                 "rep"))
  with pytest.raises(ValueError, match="strategy.mode=params"):
    step(state, _batches(c, 8, 1)[0])


@pytest.mark.parametrize("name,mode", [("excess_mtl", "rep"),
                                       ("db_mtl", "params")])
def test_train_and_evaluate_runs(name, mode, tmp_path):
  """A whole (tiny) run: `loop.train_and_evaluate` builds the state with
  the right row shape, trains, evaluates and selects."""
  from mtrec_jax.train import loop
  cfg = _config(name, mode, **{"train.num_steps": 12, "train.eval_every": 6,
                               "train.log_every": 6})
  res = loop.train_and_evaluate(cfg, tmp_path, experiment="t",
                                grid={"seed": 0}, progress=False)
  assert res["status"] == "done" and res["steps"] == 12
  assert np.isfinite(res["metrics"]["val/loss"])

"""Loss-based strategies and schedules against hand-computed values.

max, uncertainty, dwa, rlw, gls, famo, imtl_l and alternating.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.weighting import build
from mtrec_jax.weighting.alternating import alternating_phase


def run_steps(strategy, losses_seq, keys=None, num_tasks=None):
  """Runs `weigh` over a [T, K] loss sequence under one jit; returns the
  [T, K] weights and the final state."""
  losses_seq = jnp.asarray(losses_seq, jnp.float32)
  k = num_tasks or losses_seq.shape[1]
  steps = jnp.arange(losses_seq.shape[0])
  if keys is None:
    keys = jax.random.split(jax.random.PRNGKey(0), losses_seq.shape[0])

  @jax.jit
  def scan(state):
    def body(state, xs):
      losses, step, key = xs
      out = strategy.weigh(state, losses=losses, step=step, key=key)
      return out.state, out.weights
    return jax.lax.scan(body, state, (losses_seq, steps, keys))

  state, weights = scan(strategy.init(k))
  return np.asarray(weights), state


def weigh_once(strategy, losses, state=None, step=0, key=None):
  losses = jnp.asarray(losses, jnp.float32)
  state = strategy.init(losses.shape[0]) if state is None else state
  return strategy.weigh(state, losses=losses, step=jnp.asarray(step), key=key)


# --------------------------------------------------------------------------
# max / smooth max.
# --------------------------------------------------------------------------


def test_max_is_gradient_of_max():
  losses = jnp.array([0.3, 1.7, 0.9, 1.2])
  w = weigh_once(build("max"), losses).weights
  np.testing.assert_allclose(w, jax.grad(jnp.max)(losses))
  np.testing.assert_allclose(w, [0, 1, 0, 0])


@pytest.mark.parametrize("tau", [0.1, 1.0, 5.0])
def test_smooth_max_is_gradient_of_logsumexp(tau):
  losses = jnp.array([0.3, 1.7, 0.9, 1.2])
  w = weigh_once(build("max", temperature=tau), losses).weights
  expected = jax.grad(lambda l: tau * jax.nn.logsumexp(l / tau))(losses)
  np.testing.assert_allclose(w, expected, rtol=1e-5)
  np.testing.assert_allclose(float(jnp.sum(w)), 1.0, rtol=1e-6)


# --------------------------------------------------------------------------
# GLS.
# --------------------------------------------------------------------------


def test_gls_weights_give_gradient_of_geometric_mean():
  losses = jnp.array([0.5, 2.0, 4.0])
  w = weigh_once(build("gls"), losses).weights
  geo = lambda l: jnp.prod(l) ** (1.0 / l.shape[0])
  np.testing.assert_allclose(w, jax.grad(geo)(losses), rtol=1e-5)
  # By hand: Lg = (0.5 * 2 * 4)^(1/3) = 4^(1/3); w_k = Lg / (3 L_k).
  lg = 4.0 ** (1 / 3)
  np.testing.assert_allclose(w, [lg / 1.5, lg / 6.0, lg / 12.0], rtol=1e-5)
  # The weights are constants for the backward pass.
  s = build("gls")
  g = jax.grad(lambda l: jnp.sum(s.weigh((), losses=l, step=0,
                                         key=None).weights * l))(losses)
  np.testing.assert_allclose(g, w, rtol=1e-5)


# --------------------------------------------------------------------------
# DWA.
# --------------------------------------------------------------------------


def _dwa_by_hand(prev1, prev2, t=2.0):
  r = [a / b for a, b in zip(prev1, prev2)]
  e = [math.exp(x / t) for x in r]
  return [len(r) * x / sum(e) for x in e]


def test_dwa_known_history_per_step():
  history = [[1.0, 2.0], [0.8, 1.9], [0.5, 1.8], [0.45, 1.0]]
  w, _ = run_steps(build("dwa", period=1), history)
  np.testing.assert_allclose(w[0], [1, 1])
  np.testing.assert_allclose(w[1], [1, 1])
  # Step 2: r = L(1) / L(0) = (0.8, 0.95).
  np.testing.assert_allclose(w[2], _dwa_by_hand([0.8, 1.9], [1.0, 2.0]),
                             rtol=1e-5)
  # Step 3: r = L(2) / L(1) = (0.625, 0.947...).
  np.testing.assert_allclose(w[3], _dwa_by_hand([0.5, 1.8], [0.8, 1.9]),
                             rtol=1e-5)
  np.testing.assert_allclose(w.sum(1), 2.0, rtol=1e-6)


def test_dwa_period_averages():
  history = [[1.0, 2.0], [3.0, 2.0],   # period 0: mean (2.0, 2.0)
             [1.0, 1.0], [1.0, 3.0],   # period 1: mean (1.0, 2.0)
             [5.0, 5.0], [5.0, 5.0]]   # uses periods 1 / 0
  w, _ = run_steps(build("dwa", period=2, temperature=2.0), history)
  np.testing.assert_allclose(w[:4], np.ones((4, 2)))
  expected = _dwa_by_hand([1.0, 2.0], [2.0, 2.0])
  np.testing.assert_allclose(w[4], expected, rtol=1e-5)
  np.testing.assert_allclose(w[5], expected, rtol=1e-5)


def _libmtl_dwa(losses, steps_per_epoch, t=2.0):
  """LibMTL's DWA, re-written in numpy: `train_loss_buffer[:, e]` is epoch
  e's mean training loss per task, and in epoch e the weights are
  ``K softmax(buffer[:, e-1] / buffer[:, e-2] / T)`` when e > 1, else 1."""
  losses = np.asarray(losses, np.float64)
  n, k = losses.shape
  epochs = n // steps_per_epoch
  buffer = losses[:epochs * steps_per_epoch].reshape(
      epochs, steps_per_epoch, k).mean(axis=1).T
  out = []
  for i in range(n):
    e = i // steps_per_epoch
    if e > 1:
      r = buffer[:, e - 1] / buffer[:, e - 2] / t
      out.append(k * np.exp(r) / np.exp(r).sum())
    else:
      out.append(np.ones(k))
  return np.array(out)


@pytest.mark.parametrize("steps_per_epoch,t", [(3, 2.0), (5, 0.5), (1, 2.0)])
def test_dwa_default_is_per_epoch_as_libmtl(steps_per_epoch, t):
  losses = np.random.default_rng(steps_per_epoch).uniform(
      0.1, 3.0, (6 * steps_per_epoch + 2, 3))
  w, _ = run_steps(build("dwa", temperature=t,
                         steps_per_epoch=steps_per_epoch), losses)
  np.testing.assert_allclose(w, _libmtl_dwa(losses, steps_per_epoch, t),
                             rtol=1e-5)
  # The per-step variant is a different strategy once epochs are > 1 step.
  w1, _ = run_steps(build("dwa", temperature=t, period=1), losses)
  assert steps_per_epoch == 1 or not np.allclose(w1, w)


def test_dwa_epoch_needs_steps_per_epoch():
  with pytest.raises(ValueError, match="steps_per_epoch"):
    build("dwa")
  for bad in (0, -1, 1.5, "x", True):
    with pytest.raises(ValueError, match="positive integer"):
      build("dwa", period=bad)
  with pytest.raises(ValueError, match="positive integer"):
    build("dwa", steps_per_epoch=0)
  # An explicit period ignores steps_per_epoch (the loop always passes it).
  assert build("dwa", period=2, steps_per_epoch=7).hparams["period"] == 2


# --------------------------------------------------------------------------
# RLW.
# --------------------------------------------------------------------------


def test_rlw_on_simplex_and_reproducible():
  s = build("rlw")
  keys = jax.random.split(jax.random.PRNGKey(42), 50)
  w, _ = run_steps(s, np.ones((50, 4)), keys=keys)
  assert np.all(w > 0)
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
  # Same key, same weights.
  np.testing.assert_allclose(weigh_once(s, np.ones(4), key=keys[7]).weights,
                             w[7], rtol=1e-6)
  assert np.std(w[:, 0]) > 0.05  # Different keys, different weights.
  # softmax of a standard normal draw from the key.
  key = jax.random.PRNGKey(3)
  np.testing.assert_allclose(
      weigh_once(s, np.ones(4), key=key).weights,
      jax.nn.softmax(jax.random.normal(key, (4,))), rtol=1e-6)


# --------------------------------------------------------------------------
# Uncertainty and IMTL-L (own optimisers).
# --------------------------------------------------------------------------


def test_uncertainty_converges_to_log_loss():
  losses = np.array([0.2, 1.0, 3.0], np.float32)
  s = build("uncertainty", lr=0.05)
  w, state = run_steps(s, np.tile(losses, (600, 1)))
  np.testing.assert_allclose(state["log_var"], np.log(losses), atol=0.02)
  # Reported weights are the loss multipliers 0.5 exp(-s): 0.5 at s = 0.
  np.testing.assert_allclose(w[0], [0.5, 0.5, 0.5])
  np.testing.assert_allclose(w[-1], 0.5 / losses, rtol=0.05)


def test_uncertainty_classification_form():
  losses = np.array([0.5, 0.5], np.float32)
  s = build("uncertainty", task_types=("regression", "classification"),
            lr=0.05)
  w, state = run_steps(s, np.tile(losses, (600, 1)))
  # Optima: s = log L (regression), log 2L (classification).
  np.testing.assert_allclose(state["log_var"],
                             [math.log(0.5), math.log(1.0)], atol=0.02)
  np.testing.assert_allclose(w[0], [0.5, 1.0])
  # One SGD step by hand: d/ds [0.5 e^-s L + s/2] at s = 0 = 0.5 - 0.5 L.
  sgd = build("uncertainty", optimizer="sgd", lr=0.1)
  out = weigh_once(sgd, [0.5, 2.0])
  np.testing.assert_allclose(out.state["log_var"],
                             [-0.1 * 0.25, -0.1 * (0.5 - 1.0)], rtol=1e-6)
  with pytest.raises(ValueError):
    build("uncertainty", task_types=("regression", "ranking"))


def test_imtl_l_converges_to_inverse_loss():
  losses = np.array([0.25, 1.0, 4.0], np.float32)
  w, state = run_steps(build("imtl_l", lr=0.05), np.tile(losses, (600, 1)))
  np.testing.assert_allclose(state["scale"], -np.log(losses), atol=0.02)
  np.testing.assert_allclose(w[0], np.ones(3))
  np.testing.assert_allclose(w[-1] * losses, np.ones(3), rtol=0.05)


# --------------------------------------------------------------------------
# FAMO.
# --------------------------------------------------------------------------


def test_famo_hand_worked_example():
  eps = 1e-8
  s = build("famo")  # lr 0.025, gamma 1e-3
  w, state = run_steps(s, [[1.0, 2.0], [0.5, 1.8]])
  # Step 0: no update, xi = 0, z = (1/2, 1/2); w = (z / L) / sum(z / L):
  # (0.5, 0.25) / 0.75 = (2/3, 1/3).
  np.testing.assert_allclose(w[0], [2 / 3, 1 / 3], rtol=1e-6)
  # Step 1: delta = log L(0) - log L(1) = (log 2, log(2 / 1.8)).
  d = np.array([math.log(1 / 0.5), math.log(2 / 1.8)])
  # Softmax VJP at z = (1/2, 1/2): z * (d - z.d) = (+-0.5 (d0 - d1) / 2).
  g = np.array([0.25 * (d[0] - d[1]), -0.25 * (d[0] - d[1])])
  # First Adam step (gamma * xi = 0): lr * g / (|g| + eps) = +-0.025.
  xi = -0.025 * g / (np.abs(g) + eps)
  np.testing.assert_allclose(state["logits"], xi, rtol=1e-5)
  z = np.exp(xi) / np.exp(xi).sum()
  zd = z / np.array([0.5, 1.8])
  np.testing.assert_allclose(w[1], zd / zd.sum(), rtol=1e-5)
  # The task that improved more (task 0) lost weight relative to step 0's z.
  assert z[0] < 0.5


# --------------------------------------------------------------------------
# Alternating schedules.
# --------------------------------------------------------------------------


def test_alternating_round_robin_and_schedule():
  w, _ = run_steps(build("alternating"), np.ones((7, 3)))
  np.testing.assert_allclose(w, np.eye(3)[[0, 1, 2, 0, 1, 2, 0]])
  w, _ = run_steps(build("alternating", schedule=(2, 2, 0)), np.ones((5, 3)))
  np.testing.assert_allclose(w, np.eye(3)[[2, 2, 0, 2, 2]])
  with pytest.raises(ValueError):
    build("alternating", schedule=(0, 3)).init(3)


def test_alternating_wraps_inner_strategy():
  losses = np.array([[0.5, 2.0, 4.0]] * 4, np.float32)
  w, _ = run_steps(build("alternating", inner="gls"), losses)
  gls_w = np.asarray(weigh_once(build("gls"), losses[0]).weights)
  np.testing.assert_allclose(w, np.eye(3)[[0, 1, 2, 0]] * gls_w, rtol=1e-6)
  # A gradient inner makes the strategy a gradient one.
  s = build("alternating", inner="pcgrad", inner_hparams={"random_order":
                                                          False})
  assert s.kind == "gramian" and s.weight_task_params
  out = s.weigh(s.init(2), gramian=jnp.eye(2), losses=jnp.ones(2),
                step=jnp.asarray(1), key=None)
  np.testing.assert_allclose(out.weights, [0.0, 1.0])


def test_alternating_blocks_phase():
  assert [alternating_phase(t, 3, 2) for t in range(10)] == [
      0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
  phases = jax.jit(lambda t: alternating_phase(t, 3, 2))(jnp.arange(10))
  np.testing.assert_array_equal(phases, [0, 0, 0, 1, 1, 0, 0, 0, 1, 1])
  s = build("alternating", blocks=(3, 2))
  out = weigh_once(s, [1.0, 1.0], step=4)
  assert int(out.metrics["phase"]) == 1
  np.testing.assert_allclose(out.weights, [1.0, 1.0])  # No task mask.
  out = weigh_once(build("alternating", blocks=(3, 2), schedule=(1,)),
                   [1.0, 1.0], step=0)
  assert int(out.metrics["phase"]) == 0
  np.testing.assert_allclose(out.weights, [0.0, 1.0])

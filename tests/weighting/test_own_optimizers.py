"""The strategies that train their own [K] parameters (uncertainty, imtl_l,
famo, gradnorm) use optax's Adam, and follow ``torch.optim.Adam`` step by
step: checked against a numpy Adam written as PyTorch writes it, with each
objective's gradient in closed form."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtrec_jax.weighting import build


class TorchAdam:
  """``torch.optim.Adam`` (amsgrad off), as in its source: L2 weight decay
  added to the gradient, ``step_size = lr / bias_correction1``,
  ``denom = sqrt(v) / sqrt(bias_correction2) + eps``."""

  def __init__(self, p, lr, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
    self.p = np.asarray(p, np.float64).copy()
    self.lr, self.wd, self.b1, self.b2, self.eps = lr, weight_decay, b1, b2, eps
    self.m = np.zeros_like(self.p)
    self.v = np.zeros_like(self.p)
    self.t = 0

  def step(self, grad):
    g = np.asarray(grad, np.float64) + self.wd * self.p
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * g
    self.v = self.b2 * self.v + (1 - self.b2) * g * g
    bc1 = 1 - self.b1 ** self.t
    bc2 = 1 - self.b2 ** self.t
    denom = np.sqrt(self.v) / np.sqrt(bc2) + self.eps
    self.p = self.p - (self.lr / bc1) * self.m / denom
    return self.p


def _losses(t=6, k=3, seed=0):
  return np.random.default_rng(seed).uniform(0.2, 3.0, (t, k)).astype(
      np.float32)


def _scan(strategy, losses, gramians=None):
  """The states after each `weigh` call, as a list of pytrees."""
  state = strategy.init(losses.shape[1])
  states = []
  for i, l in enumerate(losses):
    kw = {} if gramians is None else {"gramian": jnp.asarray(gramians[i])}
    state = strategy.weigh(state, losses=jnp.asarray(l), step=jnp.asarray(i),
                           key=None, **kw).state
    states.append(state)
  return states


def _has_optax_adam(state) -> bool:
  return any(isinstance(x, optax.ScaleByAdamState) for x in
             jax.tree_util.tree_leaves(
                 state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)))


@pytest.mark.parametrize("task_types", [None, ("classification", "regression",
                                               "classification")])
def test_uncertainty_follows_torch_adam(task_types):
  losses = _losses()
  s = build("uncertainty", lr=0.1, task_types=task_types)
  states = _scan(s, losses)
  assert _has_optax_adam(states[0]["opt"])
  coef = np.array([0.5] * 3 if task_types is None else
                  [1.0 if t == "classification" else 0.5 for t in task_types])
  ref = TorchAdam(np.zeros(3), lr=0.1)
  for l, st in zip(losses, states):
    grad = -coef * np.exp(-ref.p) * l + 0.5
    np.testing.assert_allclose(st["log_var"], ref.step(grad), rtol=1e-5,
                               atol=1e-6)


def test_imtl_l_follows_torch_adam():
  losses = _losses(seed=1)
  states = _scan(build("imtl_l", lr=0.05), losses)
  assert _has_optax_adam(states[0]["opt"])
  ref = TorchAdam(np.zeros(3), lr=0.05)
  for l, st in zip(losses, states):
    grad = np.exp(ref.p) * l - 1.0
    np.testing.assert_allclose(st["scale"], ref.step(grad), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("gamma", [1e-3, 0.0, 0.5])
def test_famo_follows_official_torch_adam_with_weight_decay(gamma):
  # The official code: Adam([w], lr, weight_decay=gamma) on
  # d = J_softmax(w)^T delta, delta = log(L_prev + eps) - log(L_now + eps).
  losses = _losses(t=7, seed=2)
  states = _scan(build("famo", lr=0.025, gamma=gamma), losses)
  assert _has_optax_adam(states[0]["opt"])
  np.testing.assert_array_equal(states[0]["logits"], 0.0)  # first: no update
  ref = TorchAdam(np.zeros(3), lr=0.025, weight_decay=gamma)
  for prev, now, st in zip(losses, losses[1:], states[1:]):
    delta = np.log(prev + 1e-8) - np.log(now + 1e-8)
    z = np.exp(ref.p) / np.exp(ref.p).sum()
    d = z * (delta - z @ delta)  # softmax's Jacobian (symmetric) times delta
    np.testing.assert_allclose(st["logits"], ref.step(d), rtol=1e-5,
                               atol=1e-7)


def test_gradnorm_follows_torch_adam():
  t, k, alpha, lr, min_w = 6, 3, 1.5, 0.025, 1e-4
  rng = np.random.default_rng(3)
  losses = _losses(t=t, seed=3)
  jac = rng.normal(size=(t, k, 5)) * np.array([1.0, 3.0, 0.3])[:, None]
  grams = np.einsum("tkp,tjp->tkj", jac, jac).astype(np.float32)
  states = _scan(build("gradnorm", alpha=alpha, lr=lr, min_weight=min_w),
                 losses, grams)
  assert _has_optax_adam(states[0]["opt"])
  ref = TorchAdam(np.ones(k), lr=lr)
  initial = losses[0]
  for l, g, st in zip(losses, grams, states):
    norms = np.sqrt(np.diag(g).astype(np.float64))
    rate = l / initial
    target = np.mean(ref.p * norms) * (rate / rate.mean()) ** alpha
    grad = np.sign(ref.p * norms - target) * norms
    w = np.maximum(ref.step(grad), min_w)
    ref.p = w * k / w.sum()  # the renormalisation edits w in place (w.data)
    np.testing.assert_allclose(st["weights"], ref.p, rtol=1e-5, atol=1e-6)

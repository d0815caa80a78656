"""Independent NumPy references for the stateful per-parameter strategies.

Each function replays a strategy over a SEQUENCE of Jacobians (one per
step) and returns the per-step weights and updates.  They are written from
the papers / LibMTL's update rules, a different way from the JAX code in
`mtrec_jax.weighting`: plain Python loops over steps, tasks and parameters
(no vectorised state), LibMTL's multiplicative ExcessMTL update instead of
logits, the simplex projection by bisection instead of Michelot's rounds,
and MetaBalance task by task as the official optimizer does it.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def _norm(v) -> float:
  return math.sqrt(sum(float(x) * float(x) for x in v))


def _softmax(v) -> np.ndarray:
  top = max(v)
  e = [math.exp(x - top) for x in v]
  s = sum(e)
  return np.array([x / s for x in e])


def project_simplex_bisect(v, iters: int = 200) -> np.ndarray:
  """Euclidean projection onto the simplex: max(v - theta, 0) with theta
  found by bisection on sum(max(v - theta, 0)) = 1."""
  v = np.asarray(v, np.float64)
  lo, hi = float(np.min(v)) - 1.0, float(np.max(v))
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    if np.maximum(v - mid, 0.0).sum() > 1.0:
      lo = mid
    else:
      hi = mid
  return np.maximum(v - 0.5 * (lo + hi), 0.0)


# --------------------------------------------------------------------------
# MoCo (Fernando et al., ICLR 2023; LibMTL's MoCo).
# --------------------------------------------------------------------------


def moco(jacobians: Sequence[np.ndarray], losses: Sequence[np.ndarray], *,
         beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0,
         normalize=True, simplex="softmax", eps=1e-8):
  k, p = np.shape(jacobians[0])
  y = [[0.0] * p for _ in range(k)]
  lam = [1.0 / k] * k
  weights, updates = [], []
  for t, (jac, loss) in enumerate(zip(jacobians, losses), start=1):
    b = beta / t ** beta_sigma
    c = gamma / t ** gamma_sigma
    for i in range(k):
      g = [float(x) for x in jac[i]]
      if normalize:
        s = float(loss[i]) / (_norm(g) + eps)
        g = [x * s for x in g]
      y[i] = [yi - b * (yi - gi) for yi, gi in zip(y[i], g)]
    step = []
    for i in range(k):
      acc = rho * lam[i]
      for j in range(k):
        acc += sum(a * bb for a, bb in zip(y[i], y[j])) * lam[j]
      step.append(lam[i] - c * acc)
    lam = list(_softmax(step) if simplex == "softmax"
               else project_simplex_bisect(step))
    upd = [sum(lam[i] * y[i][q] for i in range(k)) for q in range(p)]
    weights.append(np.array(lam))
    updates.append(np.array(upd))
  return weights, updates


# --------------------------------------------------------------------------
# DB-MTL (Lin et al., 2023; LibMTL's DB_MTL).
# --------------------------------------------------------------------------


def db_mtl(jacobians, losses, *, beta=0.9, beta_sigma=0.0, eps=1e-8):
  """Weights: the log-transform factors 1 / (L_k + eps); also returns the
  rescaling factors alpha per step."""
  k, p = np.shape(jacobians[0])
  buf = np.zeros((k, p))
  weights, updates, alphas = [], [], []
  for t, (jac, loss) in enumerate(zip(jacobians, losses), start=1):
    b = beta / t ** beta_sigma
    for i in range(k):
      log_grad = np.asarray(jac[i], np.float64) / (max(loss[i], 0.0) + eps)
      buf[i] = b * buf[i] + (1.0 - b) * log_grad
    norms = [_norm(buf[i]) for i in range(k)]
    alpha = [max(norms) / (n + eps) for n in norms]
    upd = np.zeros(p)
    for i in range(k):
      upd += alpha[i] * buf[i]
    weights.append(np.array([1.0 / (max(x, 0.0) + eps) for x in loss]))
    updates.append(upd)
    alphas.append(np.array(alpha))
  return weights, updates, alphas


# --------------------------------------------------------------------------
# ExcessMTL (He et al., ICML 2024; LibMTL's ExcessMTL).
# --------------------------------------------------------------------------


def excess_mtl(jacobians, losses=None, *, robust_step_size=1e-2, eps=1e-7):
  """LibMTL's multiplicative update; a task's normaliser is its first
  positive estimate (the documented guard against LibMTL's 0 / 0)."""
  del losses
  k, p = np.shape(jacobians[0])
  acc = np.zeros((k, p))
  w = np.ones(k)
  initial: list[Optional[float]] = [None] * k
  weights, updates = [], []
  for t, jac in enumerate(jacobians):
    risk = np.zeros(k)
    for i in range(k):
      for q in range(p):
        g = float(jac[i][q])
        acc[i, q] += g * g
        risk[i] += g * g / math.sqrt(acc[i, q] + eps)
      if initial[i] is None and risk[i] > 0:
        initial[i] = risk[i]
    if t > 0:
      ratios = [0.0 if initial[i] is None else risk[i] / initial[i]
                for i in range(k)]
      # w_i exp(s r_i), each factor divided by the largest (no overflow; the
      # renormalisation below cancels it).
      top = max(robust_step_size * r for r in ratios)
      for i in range(k):
        w[i] *= math.exp(robust_step_size * ratios[i] - top)
      w = w / w.sum() * k
    weights.append(w.copy())
    updates.append(sum(w[i] * np.asarray(jac[i], np.float64)
                       for i in range(k)))
  return weights, updates


# --------------------------------------------------------------------------
# MetaBalance (He et al., WWW 2022; the official optimizer).
# --------------------------------------------------------------------------


def metabalance(steps, *, main=0, relax_factor=0.7, beta=0.9, adapt="both"):
  """`steps`: per step, a list of parts, each a [K, n_part] array (the
  per-task gradients of one shared tensor).  Returns per step the scales
  [K, parts] and the list of per-part updates.  Like the official
  optimizer: task by task, part by part, each moving average updated and
  the gradient rescaled before it is added to the running sum."""
  k = np.shape(steps[0][0])[0]
  parts = len(steps[0])
  m = [[0.0] * parts for _ in range(k)]
  all_scales, all_updates = [], []
  for grads in steps:
    scales = np.ones((k, parts))
    sums = [np.zeros(np.shape(g)[1]) for g in grads]
    order = [main] + [i for i in range(k) if i != main]
    for i in order:
      for t, g in enumerate(grads):
        gi = np.asarray(g[i], np.float64)
        m[i][t] = beta * m[i][t] + (1.0 - beta) * _norm(gi)
        if i != main:
          ratio = m[main][t] / m[i][t] if m[i][t] > 0 else 1.0
          s = ratio * relax_factor + (1.0 - relax_factor)
          if adapt == "reduce" and not m[i][t] > m[main][t]:
            s = 1.0
          if adapt == "enlarge" and not m[i][t] < m[main][t]:
            s = 1.0
          scales[i, t] = s
        sums[t] = sums[t] + scales[i, t] * gi
    all_scales.append(scales)
    all_updates.append(sums)
  return all_scales, all_updates

"""ExcessMTL: task weights from estimated excess risks.

He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, "Robust Multi-Task Learning
with Excess Risks", ICML 2024.  Weighting by the losses themselves favours
noisy tasks, whose irreducible loss is high; ExcessMTL weights by the *excess*
risk, the distance to the task's own optimum, estimated to second order as
``g_k^T H_k^{-1} g_k`` with a diagonal AdaGrad-style curvature ``H_k`` (the
root of the task's accumulated squared gradients), and moves the weights by
exponentiated gradient ascent.  The accumulators are [K, P] state
(``row_state``); the update is ``sum_k w_k g_k`` ("jacobian" kind, because
the weights need the rows themselves, not only their Gramian).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import (Strategy, Weighting, combine_tree,
                                      tree_size)
from mtrec_jax.weighting.loss_weighting import resolve_mode
from mtrec_jax.weighting.moco import cast_like


def excess_mtl_step(state: dict, rows: jax.Array, *, robust_step_size: float,
                    eps: float) -> tuple[jax.Array, jax.Array, dict]:
  """One ExcessMTL step on [K, D] gradient rows: returns (weights [K],
  excess-risk estimates [K], new state)."""
  acc = state["grad_sq"]
  dtype = jnp.promote_types(rows.dtype, acc.dtype)
  g = rows.astype(dtype)
  acc = acc.astype(dtype) + g * g
  risk = jnp.sum(g * g / jnp.sqrt(acc + eps), axis=1)
  # The normaliser of task k is its first positive estimate (LibMTL: the
  # first step's, which divides by zero for a task without gradient then).
  has = state["has_initial"] > 0
  initial = jnp.where(has, state["initial"].astype(dtype), risk)
  has = has | (risk > 0)
  ratio = jnp.where(has, risk / jnp.where(has, initial, 1.0), 0.0)
  # Weights w = K softmax(log_w): LibMTL's w <- w exp(step * ratio) followed
  # by renormalisation to sum K, kept in log space so it cannot overflow.
  # The first step only records the normalisers (weights stay 1).
  first = state["count"] == 0
  log_w = state["log_weights"].astype(dtype) + jnp.where(
      first, 0.0, robust_step_size * ratio)
  weights = rows.shape[0] * jax.nn.softmax(log_w)
  new_state = {"grad_sq": acc, "initial": initial,
               "has_initial": has.astype(jnp.int32), "log_weights": log_w,
               "count": state["count"] + 1}
  return weights, risk, new_state


@STRATEGIES.register("excess_mtl")
def excess_mtl(robust_step_size: float = 1e-2, eps: float = 1e-7,
               mode: Optional[str] = None) -> Strategy:
  """ExcessMTL (He et al., ICML 2024), as in LibMTL.

  Every step, for each task ``k`` with gradient row ``g_k``:

    a_k <- a_k + g_k^2                        (elementwise; zeros at first)
    r_k  = sum_p g_kp^2 / sqrt(a_kp + eps)    (excess-risk estimate)

  The first step records ``r_k`` as task k's normaliser ``r_k(0)`` and keeps
  the weights at 1; every later step updates
  ``w <- K normalize(w * exp(robust_step_size * r / r(0)))`` and returns the
  new weights (so they act on the same step's gradients, as in LibMTL).  The
  shared update is ``sum_k w_k g_k``.

  Deliberate difference: LibMTL divides by the first step's estimate even
  when it is zero (a task with no gradient in the first batch, common for
  sparse recommendation labels), which makes every weight NaN.  Here a
  task's normaliser is its first *positive* estimate and its ratio is 0
  until then.  The multiplicative update is kept as a running sum of logits
  (``w = K softmax(log w)``, mathematically the same) so it cannot overflow.

  Defaults: LibMTL's ``robust_step_size=1e-2`` and ``eps=1e-7``; torchjd 0.18
  has no ExcessMTL.

  Scale: sum-like (the weights sum to K and start at 1).  Task-specific
  parameters get their weighted gradient (``weight_task_params``: LibMTL
  back-propagates ``sum_k w_k L_k`` through the whole model).

  Rep mode (``mode="rep"``) follows LibMTL's ``rep_grad=True``: the
  representation gradients ``[K, B, *F]`` are summed over the batch into [K, F]
  rows for the estimates (so the state is [K, F], F = one example's
  representation size), and the weights multiply each task's
  representation gradient.  (LibMTL's ``rep_grad`` path back-propagates
  the weighted loss only to its detached copies of the representation, so
  its encoder gets no gradient there; here the weighted cotangents go
  through the shared part.)

  Memory: the state holds K x P floats, as much as the Jacobian itself.

  Args:
    robust_step_size: step of the exponentiated-gradient update.
    eps: added to the accumulated squares under the root.
    mode: 'params' (default, as LibMTL's default) or 'rep'.
  """
  if robust_step_size < 0:
    raise ValueError(f"strategy 'excess_mtl': robust_step_size must be >= 0, "
                     f"got {robust_step_size}")
  if eps <= 0:
    raise ValueError(f"strategy 'excess_mtl': eps must be > 0, got {eps}")
  mode = resolve_mode("excess_mtl", mode, "params")

  def init(num_tasks: int, *, row):
    dim = tree_size(row)
    return {"grad_sq": jnp.zeros((num_tasks, dim), jnp.float32),
            "initial": jnp.zeros((num_tasks,), jnp.float32),
            "has_initial": jnp.zeros((num_tasks,), jnp.int32),
            "log_weights": jnp.zeros((num_tasks,), jnp.float32),
            "count": jnp.zeros((), jnp.int32)}

  def check(rows, state):
    if rows.shape != state["grad_sq"].shape:
      raise ValueError(
          f"strategy 'excess_mtl': gradient rows of shape {rows.shape} for a "
          f"state built for {state['grad_sq'].shape}; build the state with "
          f"init_state(K, row=P), P = the size of the shared parameters "
          f"(params mode) or of one example's representation (rep mode)")

  def run(state, rows):
    check(rows, state)
    w, risk, new_state = excess_mtl_step(
        state, rows, robust_step_size=robust_step_size, eps=eps)
    metrics = {f"excess_risk/{k}": risk[k] for k in range(risk.shape[0])}
    return w, Weighting(w, cast_like(new_state, state), metrics)

  def aggregate(state, *, jacobian, losses, step, key):
    del losses, step, key
    w, out = run(state, jacobian)
    update = combine_tree(w, jacobian)
    return update, out

  def aggregate_rep(state, *, rep_grads, rep, losses, step, key):
    del rep, losses, step, key
    k = rep_grads.shape[0]
    rows = jnp.sum(rep_grads, axis=1).reshape(k, -1)
    w, out = run(state, rows)
    w = w.astype(rep_grads.dtype).reshape((k,) + (1,) * (rep_grads.ndim - 1))
    return w * rep_grads, out

  return Strategy(
      name="excess_mtl", kind="jacobian", init=init, aggregate=aggregate,
      aggregate_rep=aggregate_rep, default_mode=mode,
      weight_task_params=True, row_state=True,
      hparams={"robust_step_size": robust_step_size, "eps": eps,
               "mode": mode})

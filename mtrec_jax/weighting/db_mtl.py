"""DB-MTL: dual balancing of loss scales and gradient magnitudes.

Lin, Jiang, Ye, Zhang, Chen, Chen, Liu & Kwok, "Dual-Balancing for Multi-Task
Learning", arXiv:2308.12029 (2023).  Loss-scale balancing: every task is
trained on ``log L_k``, which removes the losses' scales.  Gradient-magnitude
balancing: the shared update adds each task's (EMA-smoothed) log-loss
gradient rescaled to the largest of their norms, so no task's gradient is
drowned by another's.  The EMA buffers are [K, P] state (``row_state``), and
the update is not a combination of the current gradients ("jacobian" kind).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import (Strategy, Weighting, combine_tree,
                                      tree_size)
from mtrec_jax.weighting.loss_weighting import resolve_mode
from mtrec_jax.weighting.moco import cast_like, rep_mode_unsupported


def db_mtl_step(state: dict, jacobian: jax.Array, losses: jax.Array, *,
                beta: float, beta_sigma: float, eps: float
                ) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
  """One DB-MTL step: returns (update [P], log-loss factors [K], alpha [K],
  new state)."""
  buf = state["buffer"]
  dtype = jnp.promote_types(jacobian.dtype, buf.dtype)
  j = jacobian.astype(dtype)
  buf = buf.astype(dtype)
  losses = jax.lax.stop_gradient(losses).astype(dtype)
  # d log(L + eps) = dL / (L + eps); losses below 0 are clipped (log domain).
  factors = 1.0 / (jnp.maximum(losses, 0.0) + eps)
  g = j * factors[:, None]
  t = (state["count"] + 1).astype(dtype)
  beta_t = beta / t ** beta_sigma
  buf = g + beta_t * (buf - g)
  norms = jnp.sqrt(jnp.sum(buf * buf, axis=1))
  alpha = jnp.max(norms) / (norms + eps)
  update = combine_tree(alpha, buf)
  return update, factors, alpha, {"buffer": buf, "count": state["count"] + 1}


@STRATEGIES.register("db_mtl")
def db_mtl(beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8,
           mode: Optional[str] = None) -> Strategy:
  """DB-MTL (Lin et al., 2023), as in LibMTL.

  At step ``t = 1, 2, ...`` (counted in the state, so `aggregate`'s fresh
  state is step 1), with ``g_k`` the gradients of the raw losses:

    h_k     = g_k / (L_k + eps)           (the gradient of log(L_k + eps))
    b_k    <- h_k + beta_t (b_k - h_k),   beta_t = beta / t^beta_sigma
    alpha_k = max_j ||b_j|| / (||b_k|| + eps)
    update  = sum_k alpha_k b_k

  The buffers ``b`` start at zero (no bias correction: the first step's
  buffer is ``(1 - beta) h``).  The log transform needs the loss values:
  pass ``task_losses`` (``as_optax`` uses ones, i.e. no transform, when they
  are missing); losses below zero are clipped to zero.

  Defaults: LibMTL's (``DB_beta=0.9, DB_beta_sigma=0``, ``eps=1e-8`` in both
  places); torchjd 0.18 has no DB-MTL.

  Scale: every buffered gradient is rescaled to the largest buffered norm,
  so the update is sum-like (K times the largest norm for aligned tasks) in
  log-loss gradients, which are the raw gradients divided by the losses.

  Task-specific parameters get their own log-loss gradient ``g_k / (L_k +
  eps)`` (``weight_task_params``; in LibMTL each task's backward pass of its
  log-loss fills its tower's gradient).  So the reported weights are these
  factors ``1 / (L_k + eps)``; the shared part's rescaling factors
  ``alpha_k`` go to the metrics ``alpha/<k>``.

  Params mode only: the update mixes buffered gradients of earlier steps,
  which has no per-example representation form (LibMTL raises for
  ``rep_grad=True`` too).

  Memory: the state holds K x P floats, as much as the Jacobian itself.

  Args:
    beta, beta_sigma: the EMA's weight on the old buffer,
      ``beta / t^beta_sigma``.
    eps: added to the losses in the log and to the norms before dividing.
    mode: 'params' (the default and only mode).
  """
  if not 0.0 <= beta < 1.0:
    raise ValueError(f"strategy 'db_mtl': beta must be in [0, 1), got {beta}")
  if beta_sigma < 0:
    raise ValueError(f"strategy 'db_mtl': beta_sigma must be >= 0, got "
                     f"{beta_sigma}")
  mode = resolve_mode("db_mtl", mode, "params")
  if mode == "rep":
    rep_mode_unsupported("db_mtl")()

  def init(num_tasks: int, *, row):
    dim = tree_size(row)
    return {"buffer": jnp.zeros((num_tasks, dim), jnp.float32),
            "count": jnp.zeros((), jnp.int32)}

  def aggregate(state, *, jacobian, losses, step, key):
    del step, key
    if jacobian.shape != state["buffer"].shape:
      raise ValueError(f"strategy 'db_mtl': Jacobian of shape "
                       f"{jacobian.shape} for a state built for "
                       f"{state['buffer'].shape}; build the state with "
                       f"init_state(K, row=P) for these rows")
    update, factors, alpha, new_state = db_mtl_step(
        state, jacobian, losses, beta=beta, beta_sigma=beta_sigma, eps=eps)
    metrics = {f"alpha/{k}": alpha[k] for k in range(alpha.shape[0])}
    return (update.astype(jacobian.dtype),
            Weighting(factors, cast_like(new_state, state), metrics))

  return Strategy(
      name="db_mtl", kind="jacobian", init=init, aggregate=aggregate,
      aggregate_rep=rep_mode_unsupported("db_mtl"), default_mode=mode,
      weight_task_params=True, row_state=True,
      hparams={"beta": beta, "beta_sigma": beta_sigma, "eps": eps,
               "mode": mode})

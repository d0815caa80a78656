"""MoCo: multi-objective gradient correction with tracked gradients.

Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias
in Multi-objective Learning: A Provably Convergent Approach", ICLR 2023.
Stochastic MGDA is biased because its weights are computed from the same
noisy gradients they multiply.  MoCo tracks each task's gradient with a
momentum-like estimate ``y_k`` and moves the weights ``lambda`` on the
simplex by one (regularised) gradient step of ``1/2 ||Y^T lambda||^2``
instead of solving the min-norm problem exactly.  The update is ``Y^T lambda``,
a combination of the *tracked* gradients, so the strategy sees the whole
[K, P] Jacobian ("jacobian" kind) and keeps [K, P] state (``row_state``).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import (Strategy, Weighting, combine_tree,
                                      tree_size)
from mtrec_jax.weighting.loss_weighting import resolve_mode
from mtrec_jax.weighting.solvers import project_simplex

SIMPLEX_STEPS = ("softmax", "projection")


def cast_like(new, old):
  """`new` with the dtypes of `old` (leaf by leaf), so a strategy state keeps
  its types from step to step (a jitted train step then compiles once)."""
  return jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), new, old)


def rep_mode_unsupported(name: str):
  """An ``aggregate_rep`` that refuses, with the fix: for strategies whose
  update mixes gradients from earlier steps, which cannot be written as one
  cotangent per example of the current batch's representation."""
  def aggregate_rep(*args, **kwargs):
    del args, kwargs
    raise ValueError(
        f"strategy {name!r} tracks per-parameter gradients across steps and "
        f"has no representation-gradient form (LibMTL also rejects "
        f"rep_grad=True); set strategy.mode=params")
  return aggregate_rep


def moco_step(state: dict, jacobian: jax.Array, losses: jax.Array, *,
              beta: float, beta_sigma: float, gamma: float,
              gamma_sigma: float, rho: float, normalize: bool, simplex: str,
              eps: float) -> tuple[jax.Array, jax.Array, dict]:
  """One MoCo step: returns (update [P], new lambda [K], new state)."""
  y, lam = state["y"], state["lambda"]
  dtype = jnp.promote_types(jacobian.dtype, y.dtype)
  j = jacobian.astype(dtype)
  y, lam = y.astype(dtype), lam.astype(dtype)
  if normalize:
    losses = jax.lax.stop_gradient(losses).astype(dtype)
    norms = jnp.sqrt(jnp.sum(j * j, axis=1))
    j = j * (losses / (norms + eps))[:, None]
  t = (state["count"] + 1).astype(dtype)
  beta_t = beta / t ** beta_sigma
  gamma_t = gamma / t ** gamma_sigma
  y = y - beta_t * (y - j)
  k = lam.shape[0]
  grad = (y @ y.T + rho * jnp.eye(k, dtype=dtype)) @ lam
  raw = lam - gamma_t * grad
  lam = jax.nn.softmax(raw) if simplex == "softmax" else project_simplex(raw)
  update = combine_tree(lam, y)
  new_state = {"y": y, "lambda": lam, "count": state["count"] + 1}
  return update, lam, new_state


@STRATEGIES.register("moco")
def moco(beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1,
         gamma_sigma: float = 0.5, rho: float = 0.0, normalize: bool = True,
         simplex: str = "softmax", eps: float = 1e-8,
         mode: Optional[str] = None) -> Strategy:
  """MoCo (Fernando et al., ICLR 2023), as in LibMTL.

  At step ``t = 1, 2, ...`` (counted in the state, so `aggregate`'s fresh
  state is step 1), with ``g_k`` the task gradients (rows of the Jacobian)::

    g_k    <- L_k g_k / (||g_k|| + eps)                 (if `normalize`)
    y      <- y - beta_t (y - g),         beta_t  = beta / t^beta_sigma
    lambda <- S(lambda - gamma_t (Y Y^T + rho I) lambda),
                                          gamma_t = gamma / t^gamma_sigma
    update  = Y^T lambda

  where ``Y`` stacks the tracked gradients ``y_k`` (state, zeros at first)
  and ``S`` maps back to the simplex: ``softmax`` (default: LibMTL and the
  authors' code it was adapted from) or the Euclidean projection
  (``simplex="projection"``, the paper's Algorithm 1).  ``lambda`` starts at
  ``1/K``.  The rescaling of each gradient to norm ``L_k`` also comes from
  LibMTL (the authors' code); ``normalize=False`` uses the raw gradients, as
  the paper's algorithm.

  Defaults: LibMTL's (``MoCo_beta=0.5, MoCo_beta_sigma=0.5, MoCo_gamma=0.1,
  MoCo_gamma_sigma=0.5, MoCo_rho=0``); torchjd 0.18 has no MoCo.

  Scale: mean-like in the tracked gradients (``lambda`` is on the simplex).
  With `normalize` each gradient is first rescaled to norm ``L_k``, so the
  update's norm follows the losses, not the gradients: pass ``task_losses``
  (``as_optax`` uses ones when they are missing).  At the first step
  ``y = beta g`` (no bias correction), so the first update is
  ``beta sum_k lambda_k g_k`` -- half the convex combination by default.

  Task-specific parameters get their own raw gradient (LibMTL: each task's
  backward pass fills its tower's gradient; only the shared gradient is
  replaced).  The reported weights are the new ``lambda``.

  Params mode only: the update combines gradients tracked over earlier
  steps, which has no per-example representation form (LibMTL raises for
  ``rep_grad=True`` too).

  Memory: the state holds K x P floats, as much as the Jacobian itself.

  Args:
    beta, beta_sigma: rate of the gradient tracking, decayed as
      ``beta / t^beta_sigma``.
    gamma, gamma_sigma: rate of the lambda step, ``gamma / t^gamma_sigma``.
    rho: l2 regularisation of the lambda step.
    normalize: rescale each gradient to norm ``L_k`` first (LibMTL).
    simplex: "softmax" (LibMTL) or "projection" (the paper).
    eps: added to the gradient norms before dividing.
    mode: 'params' (the default and only mode).
  """
  if simplex not in SIMPLEX_STEPS:
    raise ValueError(f"strategy 'moco': simplex must be one of "
                     f"{SIMPLEX_STEPS}, got {simplex!r}")
  for hp, value in (("beta", beta), ("gamma", gamma)):
    if value <= 0:
      raise ValueError(f"strategy 'moco': {hp} must be > 0, got {value}")
  if rho < 0:
    raise ValueError(f"strategy 'moco': rho must be >= 0, got {rho}")
  mode = resolve_mode("moco", mode, "params")
  if mode == "rep":
    rep_mode_unsupported("moco")()

  def init(num_tasks: int, *, row):
    dim = tree_size(row)
    return {"y": jnp.zeros((num_tasks, dim), jnp.float32),
            "lambda": jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32),
            "count": jnp.zeros((), jnp.int32)}

  def aggregate(state, *, jacobian, losses, step, key):
    del step, key
    if jacobian.shape != state["y"].shape:
      raise ValueError(f"strategy 'moco': Jacobian of shape {jacobian.shape} "
                       f"for a state built for {state['y'].shape}; build the "
                       f"state with init_state(K, row=P) for these rows")
    update, lam, new_state = moco_step(
        state, jacobian, losses, beta=beta, beta_sigma=beta_sigma,
        gamma=gamma, gamma_sigma=gamma_sigma, rho=rho, normalize=normalize,
        simplex=simplex, eps=eps)
    return (update.astype(jacobian.dtype),
            Weighting(lam, cast_like(new_state, state), {}))

  return Strategy(
      name="moco", kind="jacobian", init=init, aggregate=aggregate,
      aggregate_rep=rep_mode_unsupported("moco"), default_mode=mode,
      row_state=True,
      hparams={"beta": beta, "beta_sigma": beta_sigma, "gamma": gamma,
               "gamma_sigma": gamma_sigma, "rho": rho,
               "normalize": normalize, "simplex": simplex, "eps": eps,
               "mode": mode})

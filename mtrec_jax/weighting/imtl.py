"""Impartial multi-task learning (Liu et al., ICLR 2021): `imtl_g`, `imtl_l`.

IMTL has two halves that the paper also combines ("IMTL", the hybrid):

* IMTL-G (`imtl_g`, "gramian" kind) picks the combination of the task
  gradients whose projections onto every task's unit gradient are equal.
* IMTL-L (`imtl_l`, "loss" kind) learns loss scales ``exp(s_k)`` so that the
  scaled losses become equal.

The hybrid (IMTL-G applied to the gradients of the IMTL-L-scaled losses) is
not offered as one strategy: the Strategy interface has no hook for rescaling
the losses before the per-task gradients are taken.  Because IMTL-G's
direction is invariant to rescaling each task's gradient, the hybrid only
differs from `imtl_g` in the update's length.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import (check_optimizer,
                                                own_optimizer, own_step,
                                                resolve_mode)


@jax.jit
def imtl_g_weights(gram: jax.Array) -> jax.Array:
  """IMTL-G task weights from the Gramian ``G = J J^T`` alone.

  The paper's closed form: with ``u_k = g_k / ||g_k||``,
  ``D = [g_1 - g_2, ..., g_1 - g_K]``, ``U = [u_1 - u_2, ..., u_1 - u_K]``
  (rows), ``alpha_{2:K} = g_1 U^T (D U^T)^{-1}`` and
  ``alpha_1 = 1 - sum alpha_{2:K}``.  With ``E`` the (K-1) x K matrix of rows
  ``e_1 - e_{k+1}`` and ``N = diag(||g_k||)``: ``D U^T = E G N^-1 E^T`` and
  ``g_1 U^T = (E N^-1 G e_1)^T``, so everything comes from ``G``.  The
  (K-1) x (K-1) system is solved with a pseudo-inverse so that linearly
  dependent or zero gradients give a finite answer (identical to the inverse
  whenever the gradients are linearly independent).
  """
  gram = gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
  k = gram.shape[0]
  if k == 1:
    return jnp.ones((1,), gram.dtype)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  inv_norms = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
  e = jnp.concatenate([jnp.ones((k - 1, 1), gram.dtype),
                       -jnp.eye(k - 1, dtype=gram.dtype)], axis=1)
  m = e @ (gram * inv_norms[None, :]) @ e.T        # D U^T
  b = e @ (inv_norms * gram[:, 0])                 # (g_1 U^T)^T
  rest = jnp.linalg.pinv(m.T) @ b
  return jnp.concatenate([1.0 - jnp.sum(rest, keepdims=True), rest])


@STRATEGIES.register("imtl_g")
def imtl_g(mode: Optional[str] = None) -> Strategy:
  """IMTL-G, the gradient half of IMTL (Liu et al., ICLR 2021).

  Finds the combination ``g = sum_k alpha_k g_k`` with ``sum_k alpha_k = 1``
  whose projection onto every unit task gradient ``u_k`` is the same, with the
  paper's closed form computed from the Gramian (see `imtl_g_weights`).
  No hyper-parameters.  Default mode "params" (LibMTL's default,
  ``rep_grad=False``); ``mode="rep"`` uses the gradients w.r.t. the shared
  representation instead (cheaper, as MGDA-UB).

  Scale: mean-like (the weights sum to 1; equal-norm orthogonal gradients get
  1/K each).  Weights may be negative, as in the paper.
  """
  name = "imtl_g"

  def weigh(state, *, gramian, losses, step, key):
    del losses, step, key
    return Weighting(imtl_g_weights(jax.lax.stop_gradient(gramian)), state, {})

  return Strategy(name=name, kind="gramian", init=lambda k: (), weigh=weigh,
                  default_mode=resolve_mode(name, mode, "params"),
                  hparams={"mode": mode})


@STRATEGIES.register("imtl_l")
def imtl_l(lr: float = 1e-3, optimizer: str = "adam",
           mode: Optional[str] = None) -> Strategy:
  """IMTL-L, the loss half of IMTL (Liu et al., ICLR 2021).

  Learnable scales ``s_k`` (state, initialised at 0) turn each loss into
  ``exp(s_k) L_k - s_k``; the weights applied are ``exp(s_k)`` (before this
  step's update), and ``s`` takes one step of its own optimiser on
  ``sum_k exp(s_k) L_k - s_k`` with the losses held fixed.  The optimum is
  ``s_k = -log L_k``, i.e. every scaled loss equal to 1.  The paper (and
  LibMTL's ``IMTL``) train ``s`` with the network's optimiser; here it is
  Adam (PyTorch defaults) with ``lr = 1e-3`` unless set otherwise.

  Scale: sum-like (weights start at 1).

  Args:
    lr: learning rate of the scales.
    optimizer: "adam" or "sgd".
    mode: accepted for interface uniformity; ignored (loss strategy).
  """
  name = "imtl_l"
  check_optimizer(name, optimizer)
  tx = own_optimizer(optimizer, lr)

  def init_fn(num_tasks: int):
    s = jnp.zeros((num_tasks,), jnp.float32)
    return {"scale": s, "opt": tx.init(s)}

  def weigh(state, *, losses, step, key):
    del step, key
    losses = jax.lax.stop_gradient(jnp.asarray(losses, jnp.float32))
    s = state["scale"]

    def objective(s):
      return jnp.sum(jnp.exp(s) * losses - s)

    value, grad = jax.value_and_grad(objective)(s)
    new_s, new_opt = own_step(tx, s, grad, state["opt"])
    return Weighting(jnp.exp(s), {"scale": new_s, "opt": new_opt},
                     {"imtl_l_objective": value})

  return Strategy(name=name, kind="loss", init=init_fn, weigh=weigh,
                  default_mode=resolve_mode(name, mode, "params"),
                  hparams={"lr": lr, "optimizer": optimizer, "mode": mode})

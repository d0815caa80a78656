"""MoDo: multi-objective gradient with double sampling.

Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective
Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023
(JMLR 2024).  MoDo keeps task weights ``lambda`` on the simplex and moves
them by one projected gradient step per training step on
``1/2 ||J^T lambda||^2 + rho/2 ||lambda||^2``:

  lambda <- proj_simplex(lambda - gamma (J_1 J_2^T lambda + rho lambda)),

where the paper (and the official code, LibMTL and torchjd) draw ``J_1``
and ``J_2`` from two independent mini-batches so that the product is an
unbiased estimate of the Gramian, and a third batch (or the mean of the two)
gives the gradients that ``lambda`` combines.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode
from mtrec_jax.weighting.solvers import project_simplex


@STRATEGIES.register("modo")
def modo(gamma: float = 0.1, rho: float = 0.1,
         mode: Optional[str] = None) -> Strategy:
  """MoDo (Chen et al., NeurIPS 2023), one ``lambda`` step per call.

  Here the step uses the Gramian ``G = J J^T`` of the one batch the train
  step gives (``aggregate`` acts once from the fresh state ``lambda = 1/K``,
  i.e. returns ``J^T proj(1/K - gamma (G + rho I) 1/K)``).  The double (or
  triple) sampling of the paper, ``J_1 J_2^T`` from independent batches, is
  left to the train loop: feeding ``weigh`` the cross-batch matrix as
  ``gramian`` gives the paper's update of ``lambda``.  With one batch the
  estimate of ``||J^T lambda||^2`` is biased, which the paper's convergence
  guarantee does not cover.

  Defaults match torchjd 0.18 (``MoDoWeighting(gamma=0.1, rho=0.1)``);
  LibMTL's defaults are ``MoDo_gamma = 1e-3`` and ``MoDo_rho = 0.1``.  No
  normalisation of G, as in all three: ``gamma`` acts on the gradients'
  squared scale, so large gradients drive ``lambda`` to a vertex of the
  simplex within a step.

  Scale: mean-like (``lambda`` on the simplex).

  Args:
    gamma: step size of the ``lambda`` update, > 0.
    rho: l2 regularisation of ``lambda``, >= 0.
    mode: 'params' (default) or 'rep' (LibMTL and the official code do not
      support MoDo in representation mode; here G is then the
      representation's Gramian).
  """
  name = "modo"
  if not gamma > 0:
    raise ValueError(f"strategy {name!r}: gamma must be > 0, got {gamma}")
  if not rho >= 0:
    raise ValueError(f"strategy {name!r}: rho must be >= 0, got {rho}")
  mode = resolve_mode(name, mode, "params")

  def init(num_tasks: int):
    return {"lambda": jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)}

  def weigh(state, *, gramian, losses, step, key):
    del losses, step, key
    gram = jax.lax.stop_gradient(gramian)
    gram = gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
    lam = state["lambda"].astype(gram.dtype)
    lam = project_simplex(lam - gamma * (gram @ lam + rho * lam))
    return Weighting(lam, {"lambda": lam.astype(state["lambda"].dtype)}, {})

  return Strategy(name=name, kind="gramian", init=init, weigh=weigh,
                  default_mode=mode,
                  hparams={"gamma": gamma, "rho": rho, "mode": mode})

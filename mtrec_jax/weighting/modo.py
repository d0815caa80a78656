"""MoDo: multi-objective gradient with double sampling.

Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective
Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023
(JMLR 2024), Algorithm 1.  MoDo keeps task weights ``lambda`` on the simplex.
Each step draws three independent mini-batches z1, z2, z3 and takes

  lambda <- proj_simplex(lambda - gamma (J_1 J_2^T lambda + rho lambda)),
  x      <- x - alpha J_3^T lambda            (the new lambda),

i.e. one projected gradient step on ``1/2 ||J^T lambda||^2 + rho/2
||lambda||^2`` with the unbiased estimate ``J_1 J_2^T`` of the Gramian
(``J_b``: the [K, P] Jacobian on batch z_b), then the model step on z3.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode
from mtrec_jax.weighting.sampling import (DoubleSampledStrategy,
                                         check_flag)
from mtrec_jax.weighting.solvers import project_simplex


@STRATEGIES.register("modo")
def modo(gamma: float = 0.1, rho: float = 0.1, mode: Optional[str] = None,
         independent_batches: bool = True) -> Strategy:
  """MoDo (Chen et al., NeurIPS 2023), one ``lambda`` step per call.

  Batches (`independent_batches=True`, the default): in the train step
  (params mode) the ``lambda`` step uses the cross Gramian ``J_1 J_2^T`` of
  two extra training batches, and the new ``lambda`` weighs the Jacobian of
  the step's own batch (the paper's z3); see `mtrec_jax.weighting.sampling`.
  The step's own batch is the run's usual training batch (the same order as
  every other strategy sees), and z1, z2 are two consecutive batches of a
  second, independently seeded shuffle of the training split (the loop
  feeds them as ``sample1:*`` / ``sample2:*``).  Deliberate difference:
  LibMTL's trainer draws z1, z2, z3 as three consecutive batches of its one
  training loader, so its epoch of n steps reads 3n batches; here the
  training order is unchanged and the extra batches come from their own
  stream.  Cost: two more forward passes and 2K backward passes per step
  (one pass, vmapped over the two batches).  Task-specific parameters (the
  towers) get their own task's gradient on z3, as the paper updates all of
  x with z3 (LibMTL gives them the mean of their gradients over the three
  batches).  `independent_batches=False` (and rep mode, where the
  per-example representation rows of two batches share no coordinates, and
  ``aggregate`` / ``as_optax``) uses the Gramian ``J J^T`` of the one batch
  given, a biased estimate that the paper's analysis does not cover; the
  census rows stored before double sampling existed ran that way.

  ``aggregate`` acts once from the fresh state ``lambda = 1/K``, i.e.
  returns ``J^T proj(1/K - gamma (J J^T + rho I) 1/K)``.

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
      representation's Gramian of the one batch).
    independent_batches: the paper's double sampling in training (see
      above); False: the one batch's Gramian.
  """
  name = "modo"
  check_flag(name, "independent_batches", independent_batches)
  if not gamma > 0:
    raise ValueError(f"strategy {name!r}: gamma must be > 0, got {gamma}")
  if not rho >= 0:
    raise ValueError(f"strategy {name!r}: rho must be >= 0, got {rho}")
  mode = resolve_mode(name, mode, "params")

  def init(num_tasks: int):
    return {"lambda": jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)}

  def weigh(state, *, gramian, losses, step, key):
    # `gramian`: J J^T, or in training with double sampling the cross matrix
    # G_ij = <J1_i, J2_j> (not symmetric); the step is G lambda either way.
    del losses, step, key
    gram = jax.lax.stop_gradient(gramian)
    gram = gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
    lam = state["lambda"].astype(gram.dtype)
    lam = project_simplex(lam - gamma * (gram @ lam + rho * lam))
    return Weighting(lam, {"lambda": lam.astype(state["lambda"].dtype)}, {})

  cls = DoubleSampledStrategy if independent_batches else Strategy
  return cls(name=name, kind="gramian", init=init, weigh=weigh,
             default_mode=mode,
             hparams={"gamma": gamma, "rho": rho, "mode": mode,
                      "independent_batches": bool(independent_batches)})

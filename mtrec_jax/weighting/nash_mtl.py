"""Nash-MTL: task weights from the Nash bargaining solution.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task
Learning as a Bargaining Game", ICML 2022.  The update ``J^T alpha`` uses the
weights ``alpha > 0`` with ``alpha_i (G alpha)_i = 1`` for every task, i.e.
``G alpha = 1 / alpha`` (Theorem 5.1 of the paper): each task's directional
derivative along the update is inversely proportional to its weight.

The official code (and LibMTL, torchjd) approximates this solution with up to
``optim_niter = 20`` steps of a convex-concave procedure, each a cvxpy/ECOS
problem solved on the host, warm-started from the previous step's weights.
Here `solvers.nash_bargaining` solves the equation itself inside the jitted
step, by damped Newton on the convex potential
``1/2 alpha^T G alpha - sum_i log alpha_i``, to solver precision.  Differences
from the reference: (1) the CCP's early stops and inexact iterates are gone;
(2) a ridge ``reg_eps`` on the Frobenius-normalised Gramian keeps the weights
finite where the reference fails or returns its previous weights (zero in the
convex hull of the gradients, e.g. two opposite gradients: then no solution
exists, and the ridged weights give a near-zero update); (3) the step's
weights are kept in the strategy state, as the reference keeps
``prvs_alpha``, for ``update_weights_every > 1``.

Against torchjd 0.18's ``NashMTL`` (the official CCP) on the hard-Jacobian
corpus (`references/results/torchjd_compare.md`), the two differ (cosine
0.74-0.97) when row norms differ by 10-100x, on rank-deficient rows, and with
a zero gradient.  There torchjd's CCP stalls far from the bargaining
solution (on the four such cases checked, its ``alpha_i (G alpha)_i`` is
off from 1 by 35 to 390, with ``optim_niter`` 20, 200 or 2000 alike: the
ECOS sub-problems stop changing the iterate), while
ours matches the exact solution of an independent solver (L-BFGS-B,
trust-region Newton in ``log alpha`` and a root polish, `tests/weighting/
reference.py`) to cosine > 0.999999 with residual ~1e-15 (`tests/weighting/
test_hard_jacobians.py`).  Tasks with a zero gradient get a weight of about
``1 / sqrt(reg_eps)`` that does not change the update: the others bargain
as if the task were absent (the exact solution without it).

Where zero lies in the convex hull of the nonzero gradients (a
Pareto-stationary point: two opposite gradients, K > P rows surrounding
zero), no update improves every task and the bargaining problem has no
solution; the update is then the solution of the ridged problem (not
converged within ``num_iters`` there), a finite update of norm at most
``max_norm`` that depends on ``reg_eps`` (norm 2e-3 to 0.37 on the K > P
cases of the corpus, 1 for [g, -g, h]), not zero.  Neither torchjd (whose CCP returns norm
``max_norm`` there) nor any reference defines the method at these points.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode
from mtrec_jax.weighting.solvers import nash_bargaining


def clip_weights(weights: jax.Array, gram: jax.Array,
                 max_norm: float) -> jax.Array:
  """Scales ``weights`` so that ``||J^T w|| = sqrt(w^T G w) <= max_norm``.

  The reference clips the shared parameters' gradient norm with
  ``torch.nn.utils.clip_grad_norm_(shared_parameters, max_norm)``; on the
  weights this is the same operation (in 'rep' mode it clips the norm of the
  representation-space update instead).
  """
  if max_norm <= 0:
    return weights
  norm = jnp.sqrt(jnp.maximum(weights @ gram @ weights, 0.0))
  scale = jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1.0),
                    1.0)
  return weights * scale


@STRATEGIES.register("nash_mtl")
def nash_mtl(max_norm: float = 1.0, update_weights_every: int = 1,
             reg_eps: float = 1e-10, num_iters: int = 20,
             mode: Optional[str] = None) -> Strategy:
  """Nash-MTL (Navon et al., ICML 2022).

  Weights ``alpha`` with ``G alpha = 1 / alpha`` (recomputed every
  ``update_weights_every`` steps, otherwise the last ones are reused), then
  scaled down so that the update norm is at most ``max_norm``.

  Defaults match the official code and LibMTL: ``max_norm = 1.0``,
  ``update_weights_every = 1``.  (Their ``optim_niter = 20`` CCP iterations
  have no counterpart: see the module docstring; ``num_iters`` counts damped
  Newton steps instead.)

  Scale: neither sum- nor mean-like.  The bargaining update has norm
  ``sqrt(K)`` whatever the gradients' scale (``alpha^T G alpha = K``), so with
  ``max_norm = 1`` and K >= 2 the update is clipped to norm 1 (in 'params'
  mode, the norm of the shared-parameter update): the learning rate sets the
  step length directly.

  Args:
    max_norm: clip the update norm to this (0 disables clipping).
    update_weights_every: solve for new weights every this many steps.
    reg_eps: ridge added to the Frobenius-normalised Gramian.
    num_iters: damped Newton steps.
    mode: 'params' (default) or 'rep' (LibMTL does not support Nash-MTL in
      representation mode; here the bargaining and the clipping then use the
      representation-space Gramian).
  """
  if update_weights_every < 1:
    raise ValueError(f"strategy 'nash_mtl': update_weights_every must be "
                     f">= 1, got {update_weights_every}")
  if max_norm < 0:
    raise ValueError(f"strategy 'nash_mtl': max_norm must be >= 0 (0 turns "
                     f"clipping off), got {max_norm}")
  mode = resolve_mode("nash_mtl", mode, "params")

  def init(num_tasks: int):
    return {"alpha": jnp.ones((num_tasks,), jnp.float32),
            "count": jnp.zeros((), jnp.int32)}

  def weigh(state, *, gramian, losses, step, key):
    del losses, step, key
    gram = gramian.astype(jnp.promote_types(gramian.dtype, jnp.float32))
    count = state["count"]
    prev = state["alpha"].astype(gram.dtype)

    def solve(_):
      # The first solve starts from the diagonal solution, later ones from
      # the previous weights as well (the better start is kept).
      warm = jnp.where(count > 0, prev, jnp.zeros_like(prev))
      return nash_bargaining(gram, reg_eps=reg_eps, num_iters=num_iters,
                             alpha0=warm)

    if update_weights_every == 1:
      alpha = solve(None)
    else:
      alpha = jax.lax.cond(count % update_weights_every == 0, solve,
                           lambda _: prev, None)
    residual = jnp.max(jnp.abs(alpha * (gram @ alpha) - 1.0))
    weights = clip_weights(alpha, gram, max_norm)
    new_state = {"alpha": alpha.astype(state["alpha"].dtype),
                 "count": count + 1}
    return Weighting(weights, new_state, {"nash_residual": residual})

  return Strategy(
      name="nash_mtl", kind="gramian", init=init, weigh=weigh,
      default_mode=mode,
      hparams={"max_norm": max_norm,
               "update_weights_every": update_weights_every,
               "reg_eps": reg_eps, "num_iters": num_iters, "mode": mode})

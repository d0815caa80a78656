"""CAGrad: conflict-averse gradient descent.

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021.  The update maximises the worst task improvement
``min_i g_i^T d`` within a ball ``||d - g_0|| <= c ||g_0||`` around the mean
gradient ``g_0``.  Through its dual,

  w* = argmin_{w in simplex} g_w^T g_0 + c ||g_0|| ||g_w||,   g_w = J^T w,

the update is ``d = g_0 + (c ||g_0|| / ||g_w*||) g_w*``, i.e. the weights
``1/K + lam w*`` with ``lam = c ||g_0|| / ||g_w*||``.  The official code and
LibMTL solve the dual with SciPy's SLSQP on the host; here a fixed-iteration
projected Newton method runs inside the jitted step
(`solvers.cagrad_weights`).
"""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode
from mtrec_jax.weighting.solvers import (cagrad_weights, dual_cone_weights,
                                         normalize_gram, regularize)

RESCALES = (0, 1, 2)


@STRATEGIES.register("cagrad")
def cagrad(c: float = 0.4, rescale: int = 1, reg_eps: float = 1e-10,
           norm_eps: float = 1e-4, num_iters: Optional[int] = None,
           mode: Optional[str] = None) -> Strategy:
  """CAGrad (Liu et al., NeurIPS 2021).

  Weights ``(1/K + lam w*) / r`` (see the module docstring), with the divisor
  ``r`` chosen by ``rescale`` as in the official code and LibMTL: 0 -> 1,
  1 -> ``1 + c^2``, 2 -> ``1 + c``.

  Defaults: ``c = 0.4``, the value of the official repository's run scripts
  for NYU-v2 and Cityscapes (Cityscapes also runs 0.6; the code's function
  default and LibMTL's ``calpha`` are 0.5); ``rescale = 1``, the default of
  the official code and LibMTL.  When
  ``||g_w*|| < norm_eps ||J||_F`` (zero lies in, or next to, the convex hull
  of the gradients: a Pareto-stationary point) the direction of ``g_w*`` is
  undefined: the primal problem's best worst-case improvement is then 0,
  reached by every ``d`` in the ball with ``J d >= 0``.  The update is the one
  of those closest to the mean gradient, its projection onto the dual cone
  ``{d : J d >= 0}`` (DualProj of ``g_0``, `solvers.dual_cone_weights`),
  divided by ``r``; it is ``g_0 / r`` when no task conflicts with ``g_0``
  (torchjd, with the same ``norm_eps = 1e-4`` test, returns a zero update
  there; the official code divides by ``||g_w|| + 1e-8``, an arbitrary
  direction).

  Scale: mean-like (``g_0`` plus a correction of norm ``c ||g_0||``, divided
  by ``r``).

  Args:
    c: radius of the ball around the mean gradient, relative to its norm.
    rescale: 0, 1 or 2 (see above).
    reg_eps: ridge added to the trace-normalised Gramian inside ``||g_w||``.
    norm_eps: threshold on ``||g_w*|| / ||J||_F`` (see above).
    num_iters: solver iterations (default ``2 K + 10``).
    mode: 'params' (default) or 'rep' (LibMTL does not support CAGrad in
      representation mode; here ``g_0`` and the ball then live in the
      representation space).
  """
  if c < 0:
    raise ValueError(f"strategy 'cagrad': c must be >= 0, got {c}")
  if rescale not in RESCALES:
    raise ValueError(f"strategy 'cagrad': rescale must be one of {RESCALES}, "
                     f"got {rescale!r}")
  mode = resolve_mode("cagrad", mode, "params")
  divisor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]

  def init(num_tasks: int):
    del num_tasks
    return ()

  def weigh(state, *, gramian, losses, step, key):
    del losses, step, key
    w, lam = cagrad_weights(gramian, c, reg_eps=reg_eps, norm_eps=norm_eps,
                            num_iters=num_iters)
    k = w.shape[0]
    # At a Pareto-stationary point (lam = 0): g_0 projected onto the dual
    # cone (the primal maximiser closest to g_0; see the docstring).
    gram_n, _ = normalize_gram(gramian)
    proj = dual_cone_weights(regularize(gram_n, reg_eps),
                             jnp.full((k,), 1.0 / k, gram_n.dtype),
                             num_iters=num_iters)
    weights = jnp.where(lam > 0, 1.0 / k + lam * w, proj) / divisor
    return Weighting(weights, state, {"cagrad_lambda": lam})

  return Strategy(
      name="cagrad", kind="gramian", init=init, weigh=weigh, default_mode=mode,
      hparams={"c": c, "rescale": rescale, "reg_eps": reg_eps,
               "norm_eps": norm_eps, "num_iters": num_iters, "mode": mode})

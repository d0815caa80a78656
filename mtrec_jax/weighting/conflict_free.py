"""ConFIG: conflict-free updates by a pseudo-inverse of the unit gradients.

Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics
Informed Neural Networks", 2024 (arXiv:2408.11104), Equation 2.  With the
unit task gradients ``U`` (rows ``g_i / ||g_i||``; zero rows stay zero) and
a preference vector ``w``, the direction ``d = U^+ w`` has the same positive
cosine with every task gradient (when the rows are linearly independent),
and the update is its unit vector ``u = d / ||d||`` rescaled by the summed
projections of the gradients: ``(sum_i g_i . u) u``.

The strategy name is "config"; the module is `conflict_free` so that it does
not shadow `mtrec_jax.config`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode


def config_update(jacobian: jax.Array, pref: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """ConFIG's update of a [K, P] Jacobian, and weights ``c`` with
  ``update = J^T c`` (minimum norm; for logging).

  ``U^+ w`` is computed from the thin QR factorisation ``U^T = Q R``:
  ``U^+ = Q (R^T)^+`` (Q has orthonormal columns), with ``(R^T)^+`` from the
  SVD of the small R, whose singular values are U's.  Singular values below
  ``eps * max(K, P)`` times the largest count as zero, the default cut-off of
  ``torch.linalg.pinv`` that torchjd uses.  An all-zero Jacobian gives a zero
  update (torchjd's normalisation of a zero ``d`` gives zero too).

  Cost: forming Q explicitly is a large part of this function's CPU time; the
  seminormal form ``d = U^T (R^T R)^+ w`` needs only R, but in float32 it
  loses the update's norm on ill-conditioned rows (nearly parallel plus
  nearly opposite gradients), even with iterative refinement; Q stays.
  """
  jac = jacobian.astype(jnp.promote_types(jacobian.dtype, jnp.float32))
  k, p = jac.shape
  dtype = jac.dtype
  norms = jnp.sqrt(jnp.sum(jac * jac, axis=1))
  nonzero = norms > 0
  inv = jnp.where(nonzero, 1.0 / jnp.where(nonzero, norms, 1.0), 0.0)
  units = jac * inv[:, None]
  q, r = jnp.linalg.qr(units.T)               # [P, m], [m, K], m = min(P, K)
  a, s, bt = jnp.linalg.svd(r.T, full_matrices=False)  # R^T = A diag(s) B^T
  cut = jnp.finfo(dtype).eps * max(k, p) * jnp.max(s)
  s_inv = jnp.where(s > cut, 1.0 / jnp.where(s > cut, s, 1.0), 0.0)
  z = bt.T @ (s_inv * (a.T @ pref.astype(dtype)))    # (R^T)^+ w, [m]
  d = q @ z                                          # U^+ w, [P]
  d_norm = jnp.sqrt(jnp.sum(z * z))
  ok = d_norm > 0
  unit = d / jnp.where(ok, d_norm, 1.0)
  length = jnp.sum(jac @ unit)
  update = jnp.where(ok, length, 0.0) * unit
  # d = U^T y with y = R^+ z (z lies in R's column space), so
  # update = J^T (length / ||d|| * y / ||g||).
  y = a @ (s_inv * (bt @ z))                         # R^+ z = (R^T)^+T z
  coef = jnp.where(ok, length / jnp.where(ok, d_norm, 1.0), 0.0)
  return update, coef * y * inv


@STRATEGIES.register("config")
def config(pref_vector: Optional[Sequence[float]] = None,
           mode: Optional[str] = None) -> Strategy:
  """ConFIG (Liu et al., 2024), as torchjd's ``ConFIG``.

  Defaults match torchjd: ``pref_vector`` = ones (torchjd's ``SumWeighting``
  default).  A "jacobian" strategy: the update is computed from the [K, P]
  Jacobian (a pseudo-inverse needs the rows themselves for accuracy: through
  the Gramian, singular values below about ``sqrt(eps)`` of the largest would
  be lost in rounding).  The reported weights ``c`` satisfy
  ``update = J^T c``.

  Scale: sum-like (the length is the sum of the gradients' projections on
  the direction: orthogonal gradients give ``sum_i g_i``).  The pseudo-
  inverse cut-off is torch.linalg.pinv's default, ``eps * max(K, P)``
  relative.  K > P or dependent rows: ``U^+ w`` is the least-squares
  direction, as torchjd.

  Args:
    pref_vector: [K] preference weights ``w`` (default ones).
    mode: 'params' (default) or 'rep' (then the combined representation
      update is split equally over the task slots, as for every "jacobian"
      strategy).
  """
  name = "config"
  pref = None if pref_vector is None else tuple(float(x) for x in pref_vector)
  mode = resolve_mode(name, mode, "params")

  def init(num_tasks: int):
    if pref is not None and len(pref) != num_tasks:
      raise ValueError(f"strategy {name!r}: {len(pref)} preference weights "
                       f"given for {num_tasks} tasks; give one per task")
    return ()

  def aggregate(state, *, jacobian, losses, step, key):
    del losses, step, key
    jac = jax.lax.stop_gradient(jacobian)
    k = jac.shape[0]
    if pref is not None and len(pref) != k:
      raise ValueError(f"strategy {name!r}: {len(pref)} preference weights "
                       f"given for {k} tasks; give one per task")
    w = jnp.ones((k,), jnp.float32) if pref is None else jnp.asarray(
        pref, jnp.float32)
    update, coef = config_update(jac, w)
    return update.astype(jacobian.dtype), Weighting(coef, state, {})

  return Strategy(name=name, kind="jacobian", init=init, aggregate=aggregate,
                  default_mode=mode,
                  hparams={"pref_vector": None if pref is None else list(pref),
                           "mode": mode})

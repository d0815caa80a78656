"""Aligned-MTL (Senushkin et al., CVPR 2023): `aligned_mtl`."""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode

_SCALE_MODES = ("min", "median", "rmse")


@functools.partial(jax.jit, static_argnames=("scale_mode",))
def balance_matrix(gram: jax.Array, scale_mode: str = "min"
                   ) -> tuple[jax.Array, jax.Array]:
  """Aligned-MTL's balance transformation ``B`` from the Gramian.

  With ``G = V diag(lam) V^T`` (eigenvalues above ``max(lam) * K * eps`` kept,
  the rest treated as 0), ``B = sqrt(lam_s) V diag(lam^-1/2) V^T`` where
  ``lam_s`` is the smallest kept eigenvalue ("min"), their lower median
  ("median") or their mean ("rmse"), as the official ``ProcrustesSolver``.  ``J^T B`` replaces the Jacobian's singular values
  by ``sqrt(lam_s)`` (the gradient system gets condition number 1).  An
  all-zero Gramian gives ``B = I``.  Returns ``(B, cond)`` where ``cond`` is
  the Jacobian's condition number ``sigma_max / sigma_min`` over the kept
  spectrum.
  """
  gram = gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
  k = gram.shape[0]
  gram = 0.5 * (gram + gram.T)
  lam, vecs = jnp.linalg.eigh(gram)
  tol = jnp.max(lam) * k * jnp.finfo(gram.dtype).eps
  kept = lam > tol
  safe = jnp.where(kept, lam, 1.0)
  inv_sqrt = jnp.where(kept, 1.0 / jnp.sqrt(safe), 0.0)
  if scale_mode == "min":
    scale = jnp.min(jnp.where(kept, lam, jnp.inf))
  elif scale_mode == "median":
    # Lower median of the kept eigenvalues (torch.median, as the original).
    n = jnp.sum(kept)
    ordered = jnp.sort(jnp.where(kept, lam, jnp.inf))
    scale = ordered[jnp.maximum((n - 1) // 2, 0)]
  elif scale_mode == "rmse":
    scale = jnp.sum(jnp.where(kept, lam, 0.0)) / jnp.maximum(jnp.sum(kept), 1)
  else:
    raise ValueError(f"strategy 'aligned_mtl': scale_mode must be one of "
                     f"{_SCALE_MODES}, got {scale_mode!r}")
  any_kept = jnp.any(kept)
  scale = jnp.where(any_kept, scale, 1.0)
  b = jnp.sqrt(scale) * (vecs * inv_sqrt[None, :]) @ vecs.T
  b = jnp.where(any_kept, b, jnp.eye(k, dtype=gram.dtype))
  cond = jnp.where(any_kept, jnp.sqrt(
      jnp.max(lam) / jnp.min(jnp.where(kept, lam, jnp.inf))), 1.0)
  return b, cond


@STRATEGIES.register("aligned_mtl")
def aligned_mtl(pref_vector: Optional[Sequence[float]] = None,
                scale_mode: str = "min",
                mode: Optional[str] = None) -> Strategy:
  """Aligned-MTL, independent component alignment (Senushkin et al., CVPR
  2023).

  Aligns the task gradients' principal components: the Jacobian ``J`` is
  replaced by ``sigma_s U V^T`` (its SVD with every singular value set to
  ``sigma_s``), making the linear system of gradients perfectly conditioned,
  and the update is ``(sigma_s U V^T)^T w = J^T B w`` for a preference vector
  ``w``.  So the weights are ``B w`` with ``B`` from the Gramian's
  eigendecomposition (`balance_matrix`).

  Defaults, as the official code (SamsungLabs/MTL, ``scale_mode='min'``) and
  LibMTL: the smallest singular value scales the aligned system (the
  official code also offers "median" and "rmse"), and ``w = 1`` (the
  official code and LibMTL sum the aligned gradients), so the scale is
  sum-like (orthogonal equal-norm gradients get weight 1 each).  TorchJD's
  ``AlignedMTL`` defaults to ``w = 1/K`` (mean-like, K times smaller); pass
  ``pref_vector=[1/K] * K`` for it.  Default mode "params"; the paper's
  Aligned-MTL-UB is ``mode="rep"``.

  Args:
    pref_vector: preference weights ``w`` (one per task); None means ones.
    scale_mode: "min", "median" or "rmse".
    mode: "params" or "rep"; overrides the default mode.
  """
  name = "aligned_mtl"
  if scale_mode not in _SCALE_MODES:
    raise ValueError(f"strategy {name!r}: scale_mode must be one of "
                     f"{_SCALE_MODES}, got {scale_mode!r}")
  pref = None if pref_vector is None else tuple(float(x) for x in pref_vector)

  def init(num_tasks: int):
    if pref is not None and len(pref) != num_tasks:
      raise ValueError(f"strategy {name!r}: {len(pref)} preference weights "
                       f"given for {num_tasks} tasks; give one per task")
    return ()

  def weigh(state, *, gramian, losses, step, key):
    del losses, step, key
    gram = jax.lax.stop_gradient(gramian)
    k = gram.shape[0]
    b, cond = balance_matrix(gram, scale_mode)
    w = jnp.ones((k,), b.dtype) if pref is None else jnp.asarray(pref, b.dtype)
    return Weighting(b @ w, state, {"condition_number": cond})

  return Strategy(name=name, kind="gramian", init=init, weigh=weigh,
                  default_mode=resolve_mode(name, mode, "params"),
                  hparams={"pref_vector": None if pref is None else list(pref),
                           "scale_mode": scale_mode, "mode": mode})

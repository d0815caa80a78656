"""Independent NumPy references for the projection-type strategies.

Written directly on the [K, P] Jacobian in float64 with explicit loops and
matrix inverses, following the papers' formulas (not the Gramian-only
implementations under test).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def pcgrad(jac: np.ndarray, orders: Optional[Sequence[Sequence[int]]] = None
           ) -> np.ndarray:
  """PCGrad (Yu et al., 2020): project each g_i against each conflicting g_j
  (original gradients) in the given per-task order; return sum of results."""
  jac = np.asarray(jac, np.float64)
  k = jac.shape[0]
  if orders is None:
    orders = [list(range(k))] * k
  out = np.zeros(jac.shape[1])
  for i in range(k):
    g = jac[i].copy()
    for j in orders[i]:
      if j == i:
        continue
      dot = float(g @ jac[j])
      if dot < 0:
        g = g - dot / float(jac[j] @ jac[j]) * jac[j]
    out += g
  return out


def gradvac(jac: np.ndarray, targets: np.ndarray, beta: float,
            orders: Optional[Sequence[Sequence[int]]] = None,
            eps: float = 1e-8, ema_on_conflict_only: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
  """GradVac (Wang et al., 2021), whole-model granularity, Algorithm 1.

  Returns (update, new targets)."""
  jac = np.asarray(jac, np.float64)
  targets = np.array(targets, np.float64)
  k = jac.shape[0]
  if orders is None:
    orders = [list(range(k))] * k
  out = np.zeros(jac.shape[1])
  for i in range(k):
    g = jac[i].copy()
    for j in orders[i]:
      if j == i:
        continue
      gj = jac[j]
      phi = float(g @ gj) / (np.linalg.norm(g) * np.linalg.norm(gj) + eps)
      t = targets[i, j]
      corrected = False
      if phi < t:
        w = (np.linalg.norm(g) * (t * np.sqrt(1 - phi ** 2)
                                  - phi * np.sqrt(1 - t ** 2))
             / (np.linalg.norm(gj) * np.sqrt(1 - t ** 2) + eps))
        g = g + w * gj
        corrected = True
      if corrected or not ema_on_conflict_only:
        targets[i, j] = (1 - beta) * t + beta * phi
    out += g
  return out, targets


def graddrop(jac: np.ndarray, noise: np.ndarray, leak: float = 0.0
             ) -> np.ndarray:
  """GradDrop (Chen et al., 2020) with explicit per-coordinate loops."""
  jac = np.asarray(jac, np.float64)
  k, p = jac.shape
  out = np.zeros(p)
  for c in range(p):
    col = jac[:, c]
    mass = np.abs(col).sum()
    purity = 0.5 * (1 + (col.sum() / mass if mass > 0 else 0.0))
    for i in range(k):
      keep = (purity > noise[c] and col[i] > 0) or (purity < noise[c]
                                                    and col[i] < 0)
      out[c] += (leak + (1 - leak) * float(keep)) * col[i]
  return out


def imtl_g(jac: np.ndarray) -> np.ndarray:
  """IMTL-G (Liu et al., 2021), the paper's closed form with an explicit
  inverse: alpha_{2:K} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum."""
  jac = np.asarray(jac, np.float64)
  k = jac.shape[0]
  if k == 1:
    return jac[0].copy()
  units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
  d = np.stack([jac[0] - jac[i] for i in range(1, k)])
  u = np.stack([units[0] - units[i] for i in range(1, k)])
  rest = jac[0] @ u.T @ np.linalg.inv(d @ u.T)
  alpha = np.concatenate([[1 - rest.sum()], rest])
  return alpha @ jac


def imtl_g_lstsq(jac: np.ndarray, rel_tol: float = 1e-8) -> np.ndarray:
  """IMTL-G generalised to dependent or zero gradients (Quinton & Rey, 2024;
  torchjd's ``IMTLG``), from least squares on the Jacobian itself.

  The update is ``x / sum(alpha)`` where ``x`` is the minimum-norm
  least-squares solution of ``J x = d`` (``d_k = ||g_k||``: unit projections
  ``u_k . x = 1``) and ``alpha`` the minimum-norm solution of
  ``J^T alpha = x`` (LAPACK's SVD-based ``gelsd`` through
  ``np.linalg.lstsq``, never forming ``J J^T``).  Since
  ``(J^T)^+ J^+ = (J J^T)^+``, ``alpha = G^+ d``, the weights of the
  Gramian formulation.  Zero when ``|sum(alpha)| <= rel_tol ||alpha||_1``.
  """
  jac = np.asarray(jac, np.float64)
  k, p = jac.shape
  scale = np.linalg.norm(jac)
  if scale == 0:
    return np.zeros(p)
  jn = jac / scale
  d = np.linalg.norm(jn, axis=1)
  x = np.linalg.lstsq(jn, d, rcond=None)[0]
  alpha = np.linalg.lstsq(jn.T, x, rcond=None)[0]
  total = alpha.sum()
  if abs(total) <= rel_tol * np.abs(alpha).sum():
    return np.zeros(p)
  return x * scale / total


def aligned_mtl(jac: np.ndarray, pref: Optional[np.ndarray] = None,
                scale_mode: str = "min") -> np.ndarray:
  """Aligned-MTL (Senushkin et al., 2023) via the SVD J = U S V^T: the
  aligned Jacobian is sigma U V^T, the update its transpose times pref.

  sigma: the smallest singular value ("min"), the singular value at the
  lower median of the squared ones ("median"), or the root mean square of
  the singular values ("rmse")."""
  jac = np.asarray(jac, np.float64)
  k = jac.shape[0]
  pref = np.ones(k) if pref is None else np.asarray(pref, np.float64)
  if not np.any(jac):
    return np.zeros(jac.shape[1])
  u, s, vt = np.linalg.svd(jac, full_matrices=False)
  keep = s > s.max() * 1e-6
  u, s, vt = u[:, keep], s[keep], vt[keep]
  if scale_mode == "min":
    sigma = s.min()
  elif scale_mode == "median":
    sigma = np.sort(s)[(len(s) - 1) // 2]
  else:
    sigma = np.sqrt(np.mean(s ** 2))
  aligned = sigma * u @ vt
  return aligned.T @ pref


def graddrop_rep(rep_grads: np.ndarray, rep: np.ndarray, noise: np.ndarray,
                 leak: float = 0.0) -> np.ndarray:
  """GradDrop with the batch-reduced purity (LibMTL's representation form),
  with explicit loops: rep_grads, rep [K, B, F], noise [F]; returns the
  masked per-slot gradients [K, B, F]."""
  rep_grads = np.asarray(rep_grads, np.float64)
  k, b, f = rep_grads.shape
  out = np.zeros_like(rep_grads)
  for c in range(f):
    signed = [sum(np.sign(rep[i, e, c]) * rep_grads[i, e, c] for e in range(b))
              for i in range(k)]
    mass = sum(abs(x) for x in signed)
    purity = 0.5 * (1 + (sum(signed) / mass if mass > 0 else 0.0))
    for i in range(k):
      keep = (purity > noise[c] and signed[i] > 0) or (
          purity < noise[c] and signed[i] < 0)
      out[i, :, c] = (leak + (1 - leak) * float(keep)) * rep_grads[i, :, c]
  return out

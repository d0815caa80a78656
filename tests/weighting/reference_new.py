"""Independent NumPy/SciPy references for FairGrad, ConFIG, MoDo, SDMGrad,
CR-MOGM, STCH and Aligned-MTL's scale modes.

Each is written a different way from the JAX code in `mtrec_jax.weighting`:

* FairGrad: torchjd's formulation (SciPy ``least_squares`` on
  ``G w - w^(-1/alpha)`` over ``w >= 0``, from ``1/K``) and a trust-region
  method in ``log w`` where it stops short, polished by hybrid-Powell root
  finding in ``log w``, instead of line-searched Newton steps in ``w``.  The JAX code's ridge ``reg_eps`` on the trace-normalised
  Gramian is reproduced, so that cases without an exact solution (a zero row,
  zero in the convex hull) have a defined answer.
* ConFIG: the direction from LAPACK's least-squares solver (``lstsq``, SVD
  of the unit rows, minimum-norm solution) instead of a QR factorisation.
* MoDo / SDMGrad: explicit Python loops, with the simplex projection found by
  bisection on its threshold instead of Michelot's algorithm.
* CR-MOGM: an explicit exponential moving average over a sequence of
  Gramians, with the inner weights from `reference.py`.
* STCH: the weights as central finite differences of LibMTL's scalarised
  loss (log-sum-exp written with explicit loops), instead of its closed-form
  gradient.
* Aligned-MTL: the SVD of the Jacobian itself (``J = U S V^T``, update
  ``sigma_s V U^T w``) instead of the eigendecomposition of its Gramian.

Every function takes float64 NumPy arrays and returns the [P] update (or the
[K] weights where said).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import optimize


def _as64(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float64)


def project_simplex_bisect(v: np.ndarray, iters: int = 200) -> np.ndarray:
  """Euclidean projection onto the simplex: ``max(v - theta, 0)`` with the
  threshold ``theta`` found by bisection on ``sum(max(v - theta, 0)) = 1``."""
  v = _as64(v)
  lo, hi = np.min(v) - 1.0, np.max(v)
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    if np.sum(np.maximum(v - mid, 0.0)) > 1.0:
      lo = mid
    else:
      hi = mid
  w = np.maximum(v - 0.5 * (lo + hi), 0.0)
  return w / np.sum(w)


# --------------------------------------------------------------------------
# FairGrad.
# --------------------------------------------------------------------------


def fairgrad_weights(gram: np.ndarray, alpha: float = 1.0,
                     reg_eps: float = 1e-10) -> np.ndarray:
  """``w > 0`` with ``(G / s + reg_eps I) w' = w'^(-1/alpha)``, ``s =
  trace(G)`` (1 for an all-zero G), returned as ``w = s^(-a/(a+1)) w'``.

  Candidates: torchjd's ``least_squares`` on the residual from ``1/K``, and,
  unless that one reaches a backward error below 1e-10, a trust-region
  Newton method (exact Hessian, SciPy's ``trust-exact``) in ``y = log w'``
  on the potential whose stationarity is the equation, continued from the
  ridge 1e-4 down to ``reg_eps`` (the weights of conflicting directions must
  grow to about ``reg_eps^(-a/(a+1))``); each polished by hybrid-Powell root
  finding in ``y``.  The candidate with the smallest backward error
  ``max_i |A w' - w'^(-1/a)|_i / (|A| w' + w'^(-1/a))_i`` is returned;
  raises unless it is below 1e-8.
  """
  gram = _as64(gram)
  k = gram.shape[0]
  if alpha == 0:
    return np.full(k, 1.0 / k)
  tr = np.trace(gram)
  s = tr if tr > 0 else 1.0
  base = gram / s
  a = base + reg_eps * np.eye(k)
  p = 1.0 - 1.0 / alpha

  def backward_error(x):
    with np.errstate(over="ignore", invalid="ignore"):
      t = x ** (-1.0 / alpha)
      err = np.max(np.abs(a @ x - t) / (np.abs(a) @ x + t))
    return err if np.isfinite(err) else np.inf

  def polish(y0):
    def fun(y):
      x = np.exp(y)
      return (a @ x) * x ** (1.0 / alpha) - 1.0
    with np.errstate(over="ignore", invalid="ignore"):
      root = optimize.root(fun, y0, method="hybr", tol=1e-15)
    return min((y0, root.x), key=lambda y: backward_error(np.exp(y)))

  def trust_region(y0, m):
    def potential(y):
      x = np.exp(y)
      h = -np.sum(y) if alpha == 1 else -np.sum(x ** p) / p
      return 0.5 * x @ m @ x + h

    def grad(y):
      x = np.exp(y)
      return x * (m @ x - x ** (-1.0 / alpha))

    def hess(y):
      x = np.exp(y)
      inner = m + np.diag(x ** (-1.0 / alpha - 1.0) / alpha)
      return x[:, None] * inner * x[None, :] + np.diag(grad(y))

    with np.errstate(over="ignore"):
      return optimize.minimize(potential, y0, jac=grad, hess=hess,
                               method="trust-exact",
                               options={"gtol": 1e-14, "maxiter": 5000}).x

  res = optimize.least_squares(lambda x: a @ x - x ** (-1.0 / alpha),
                               np.full(k, 1.0 / k), bounds=(0, np.inf),
                               xtol=1e-15, ftol=1e-15, gtol=1e-15,
                               max_nfev=500)
  cands = [polish(np.log(np.maximum(res.x, 1e-300)))]
  if not backward_error(np.exp(cands[0])) < 1e-10:
    ridges = np.geomspace(max(reg_eps, 1e-4), reg_eps,
                          max(1, int(round(np.log10(1e-4 / reg_eps))) + 1))
    y = np.log(np.diag(base + ridges[0] * np.eye(k)) **
               (-alpha / (alpha + 1.0)))
    for r in ridges:
      y = trust_region(y, base + r * np.eye(k))
    cands.append(polish(y))
  y = min(cands, key=lambda y: backward_error(np.exp(y)))
  err = backward_error(np.exp(y))
  if not err < 1e-8:
    raise ValueError(f"FairGrad reference did not converge (backward error "
                     f"{err})")
  return np.exp(y) * s ** (-alpha / (alpha + 1.0))


def fairgrad(jac, alpha: float = 1.0, reg_eps: float = 1e-10) -> np.ndarray:
  """FairGrad (Ban & Ji, ICML 2024): ``J^T w``."""
  jac = _as64(jac)
  return fairgrad_weights(jac @ jac.T, alpha, reg_eps) @ jac


# --------------------------------------------------------------------------
# ConFIG.
# --------------------------------------------------------------------------


def config(jac, pref_vector: Optional[Sequence[float]] = None,
           rtol: Optional[float] = None) -> np.ndarray:
  """ConFIG (Liu et al., 2024), torchjd's form: ``d = pinv(U) w`` for the
  unit rows U (zero rows stay zero), ``u = d / ||d||``, update
  ``sum_i (g_i . u) u``.  ``rtol``: singular values below ``rtol * s_max``
  count as zero (default ``eps * max(K, P)``, torch.linalg.pinv's)."""
  jac = _as64(jac)
  k, p = jac.shape
  w = np.ones(k) if pref_vector is None else _as64(pref_vector)
  norms = np.linalg.norm(jac, axis=1)
  units = np.zeros_like(jac)
  for i in range(k):
    if norms[i] > 0:
      units[i] = jac[i] / norms[i]
  if rtol is None:
    rtol = np.finfo(np.float64).eps * max(k, p)
  d = np.linalg.lstsq(units, w, rcond=rtol)[0]
  n = np.linalg.norm(d)
  if n == 0:
    return np.zeros(p)
  u = d / n
  length = sum(jac[i] @ u for i in range(k))
  return length * u


# --------------------------------------------------------------------------
# MoDo and SDMGrad (one step from a fresh state).
# --------------------------------------------------------------------------


def modo_weights(gram: np.ndarray, gamma: float = 0.1, rho: float = 0.1,
                 lam: Optional[np.ndarray] = None) -> np.ndarray:
  """One MoDo update of the weights from ``lam`` (default 1/K):
  ``proj(lam - gamma (G lam + rho lam))``."""
  gram = _as64(gram)
  k = gram.shape[0]
  lam = np.full(k, 1.0 / k) if lam is None else _as64(lam)
  step = np.zeros(k)
  for i in range(k):
    step[i] = sum(gram[i, j] * lam[j] for j in range(k)) + rho * lam[i]
  return project_simplex_bisect(lam - gamma * step)


def modo(jac, gamma: float = 0.1, rho: float = 0.1) -> np.ndarray:
  """MoDo (Chen et al., NeurIPS 2023) on the one Gramian ``J J^T``."""
  jac = _as64(jac)
  return modo_weights(jac @ jac.T, gamma, rho) @ jac


def sdmgrad_weights(gram: np.ndarray, lr: float = 10.0, momentum: float = 0.5,
                    n_iter: int = 20, lam: float = 0.3,
                    pref: Optional[np.ndarray] = None,
                    w: Optional[np.ndarray] = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """One SDMGrad call: returns ``(applied weights, new inner state w)``."""
  gram = _as64(gram)
  k = gram.shape[0]
  pref = np.full(k, 1.0 / k) if pref is None else _as64(pref)
  w = np.full(k, 1.0 / k) if w is None else _as64(w).copy()
  diag = np.array([max(gram[i, i], 0.0) for i in range(k)])
  scale = np.mean(np.sqrt(diag))
  a = gram / (scale ** 2 + 1e-8)
  velocity = None
  for _ in range(n_iter):
    grad = a @ w + lam * (a @ pref)
    velocity = grad if velocity is None else momentum * velocity + grad
    w = project_simplex_bisect(w - lr * velocity)
  return (w + lam * pref) / (1.0 + lam), w


def sdmgrad(jac, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20,
            lam: float = 0.3) -> np.ndarray:
  """SDMGrad (Xiao et al., NeurIPS 2023) on the one Gramian ``J J^T``."""
  jac = _as64(jac)
  weights, _ = sdmgrad_weights(jac @ jac.T, lr, momentum, n_iter, lam)
  return weights @ jac


# --------------------------------------------------------------------------
# CR-MOGM.
# --------------------------------------------------------------------------


def cr_mogm_weights(inner_weights: Sequence[np.ndarray], alpha: float = 0.9,
                    initial: Optional[np.ndarray] = None) -> list[np.ndarray]:
  """The smoothed weights ``l_t = alpha l_{t-1} + (1 - alpha) w_t`` for a
  sequence of inner weights ``w_t``, ``l_0 = initial`` or ``w_1``."""
  out = []
  prev = None if initial is None else _as64(initial)
  for w in inner_weights:
    w = _as64(w)
    if prev is None:
      prev = w
    prev = alpha * prev + (1.0 - alpha) * w
    out.append(prev)
  return out


# --------------------------------------------------------------------------
# STCH.
# --------------------------------------------------------------------------


def stch_loss(losses: np.ndarray, nadir: Optional[np.ndarray],
              mu: float = 1.0) -> float:
  """LibMTL's scalarised loss: ``sum_k log(L_k + 1e-20)`` without a nadir
  vector (warm-up), else ``K mu log sum_k exp(log(L_k / z_k + 1e-20) / mu)``
  (evaluated with its max subtracted, as LibMTL)."""
  losses = _as64(losses)
  k = losses.shape[0]
  if nadir is None:
    return float(sum(np.log(losses[i] + 1e-20) for i in range(k)))
  terms = [np.log(losses[i] / nadir[i] + 1e-20) / mu for i in range(k)]
  m = max(terms)
  return float(k * mu * (np.log(sum(np.exp(t - m) for t in terms)) + m))


def stch_weights(losses, nadir=None, mu: float = 1.0,
                 rel_step: float = 1e-6) -> np.ndarray:
  """The gradient of `stch_loss` w.r.t. the losses, by central differences."""
  losses = _as64(losses)
  out = np.zeros_like(losses)
  for i in range(len(losses)):
    h = rel_step * losses[i]
    up, down = losses.copy(), losses.copy()
    up[i] += h
    down[i] -= h
    out[i] = (stch_loss(up, nadir, mu) - stch_loss(down, nadir, mu)) / (2 * h)
  return out


# --------------------------------------------------------------------------
# Aligned-MTL.
# --------------------------------------------------------------------------


def aligned_mtl(jac, pref_vector: Optional[Sequence[float]] = None,
                scale_mode: str = "min") -> np.ndarray:
  """Aligned-MTL from the SVD of J: the aligned Jacobian ``sigma_s U V^T``
  (singular values above ``sqrt(max(S^2) K eps)`` kept) and the update
  ``(sigma_s U V^T)^T w``; ``sigma_s^2`` is the smallest ("min"), the lower
  median ("median") or the mean ("rmse") of the kept ``S^2``.  ``w`` defaults
  to ones (the project's default; torchjd's is 1/K)."""
  jac = _as64(jac)
  k = jac.shape[0]
  w = np.ones(k) if pref_vector is None else _as64(pref_vector)
  u, s, vt = np.linalg.svd(jac, full_matrices=False)
  lam = s ** 2
  if lam.size == 0 or np.max(lam) <= 0:
    return w @ jac  # torchjd: B = I for a zero Gramian.
  tol = np.max(lam) * k * np.finfo(np.float64).eps
  keep = lam > tol
  lam_k = np.sort(lam[keep])
  if scale_mode == "min":
    sq = lam_k[0]
  elif scale_mode == "median":
    sq = lam_k[(len(lam_k) - 1) // 2]
  elif scale_mode == "rmse":
    sq = np.mean(lam_k)
  else:
    raise ValueError(scale_mode)
  aligned = np.sqrt(sq) * u[:, keep] @ vt[keep]
  return aligned.T @ w

"""Independent NumPy/SciPy references for the Gramian-based strategies.

Each function maps a [K, P] Jacobian (float64 NumPy) to the [P] update, and is
written a different way from the JAX code in `mtrec_jax.weighting`:

* MGDA: exhaustive enumeration of the faces of the simplex (exact for small K)
  instead of projected Newton.
* UPGrad / DualProj: each projection onto the dual cone solved in the PRIMAL
  (``min ||y - x||^2 s.t. J y >= 0`` in R^P, SciPy SLSQP) instead of the
  K-dimensional dual QP.  torchjd's ridge ``reg_eps * I`` on the normalised
  Gramian is reproduced exactly by appending ``sqrt(reg_eps) I`` columns to the
  normalised Jacobian (the Gramian of ``[J, sqrt(r) I]`` is ``G + r I``).
* CAGrad: the PRIMAL problem
  ``max_d min_i g_i^T d  s.t.  ||d - g_0|| <= c ||g_0||`` (SLSQP on (d, t))
  instead of the dual over the simplex.
* Nash-MTL: the potential minimised by L-BFGS-B, then ``G alpha = 1 / alpha``
  polished as a root-finding problem in ``log alpha`` (hybrid Powell),
  instead of damped Newton.
"""
from __future__ import annotations

import itertools
from typing import Optional

import numpy as np
from scipy import optimize


def _as64(jac) -> np.ndarray:
  return np.asarray(jac, dtype=np.float64)


# --------------------------------------------------------------------------
# MGDA.
# --------------------------------------------------------------------------


def min_norm_weights_enum(gram: np.ndarray, tol: float = 1e-12) -> np.ndarray:
  """Min-norm weights on the simplex by enumerating every face.

  On the face spanned by an affinely independent set S, the min-norm point of
  the affine hull solves ``[G_SS 1; 1^T 0] [w; nu] = [0; 1]``; it is a
  candidate when ``w >= 0``.  The global optimum is the best candidate.
  """
  gram = np.asarray(gram, np.float64)
  k = gram.shape[0]
  best, best_val = None, np.inf
  for size in range(1, k + 1):
    for s in itertools.combinations(range(k), size):
      s = list(s)
      m = np.zeros((size + 1, size + 1))
      m[:size, :size] = gram[np.ix_(s, s)]
      m[:size, size] = 1.0
      m[size, :size] = 1.0
      rhs = np.zeros(size + 1)
      rhs[size] = 1.0
      if np.linalg.cond(m) > 1e12:  # affinely dependent: a smaller face
        continue                     # (Caratheodory) holds the optimum.
      ws = np.linalg.solve(m, rhs)[:size]
      if np.any(ws < -tol):
        continue
      w = np.zeros(k)
      w[s] = np.clip(ws, 0.0, None)
      w /= w.sum()
      val = w @ gram @ w
      if best is None or val < best_val:
        best, best_val = w, val
  return best


def mgda(jac, normalization: str = "none", losses=None,
         weights_on: str = "normalized") -> np.ndarray:
  """MGDA (Sener & Koltun, 2018) update with LibMTL's gradient normalisers."""
  jac = _as64(jac)
  k = jac.shape[0]
  losses = np.ones(k) if losses is None else np.asarray(losses, np.float64)
  norms = np.linalg.norm(jac, axis=1)
  gn = {"none": np.ones(k), "l2": norms, "loss": losses,
        "loss+": losses * norms}[normalization]
  gn = np.maximum(gn, 1e-30)
  jn = jac / gn[:, None]
  w = min_norm_weights_enum(jn @ jn.T)
  if weights_on == "normalized":
    return w @ jn
  return w @ jac


def mgda_two(g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
  """Closed form for two vectors: ``gam g1 + (1 - gam) g2`` with
  ``gam = clip((g2 - g1) . g2 / ||g1 - g2||^2, 0, 1)``."""
  diff = g1 - g2
  den = diff @ diff
  gam = 0.5 if den == 0 else np.clip((g2 - g1) @ g2 / den, 0.0, 1.0)
  return gam * g1 + (1 - gam) * g2


# --------------------------------------------------------------------------
# UPGrad / DualProj.
# --------------------------------------------------------------------------


def project_dual_cone(jac: np.ndarray, x: np.ndarray) -> np.ndarray:
  """``argmin_y ||y - x||^2 s.t. J y >= 0`` (SLSQP in the primal)."""
  scale = max(np.linalg.norm(x), 1e-300)
  xs = x / scale
  res = optimize.minimize(
      lambda y: 0.5 * np.sum((y - xs) ** 2), xs, jac=lambda y: y - xs,
      constraints=[{"type": "ineq", "fun": lambda y: jac @ y,
                    "jac": lambda y: jac}],
      method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
  return res.x * scale


def _augmented(jac: np.ndarray, norm_eps: float, reg_eps: float):
  """``[J / sqrt(tr G), sqrt(reg_eps) I]`` (torchjd's normalise + regularise),
  or None when torchjd's normalisation zeroes the Gramian."""
  k = jac.shape[0]
  tr = np.sum(jac * jac)
  if tr < norm_eps:
    return None
  return np.concatenate([jac / np.sqrt(tr), np.sqrt(reg_eps) * np.eye(k)], 1)


def upgrad(jac, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> np.ndarray:
  """UPGrad (Quinton & Rey, 2024): mean of each row's projection onto the
  dual cone of the rows, with torchjd's normalisation and ridge."""
  jac = _as64(jac)
  k, p = jac.shape
  aug = _augmented(jac, norm_eps, reg_eps)
  if aug is None:
    return jac.mean(0)
  # J'^T v where the first P coordinates are J_n^T v; rescale to J^T v.
  scale = np.sqrt(np.sum(jac * jac))
  out = np.zeros(p)
  for i in range(k):
    y = project_dual_cone(aug, aug[i] / k)
    out += y[:p]
  return out * scale


def dualproj(jac, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> np.ndarray:
  """DualProj: the projection of the mean gradient onto the dual cone."""
  jac = _as64(jac)
  k, p = jac.shape
  aug = _augmented(jac, norm_eps, reg_eps)
  if aug is None:
    return jac.mean(0)
  scale = np.sqrt(np.sum(jac * jac))
  return project_dual_cone(aug, aug.mean(0))[:p] * scale


# --------------------------------------------------------------------------
# CAGrad.
# --------------------------------------------------------------------------


def cagrad(jac, c: float = 0.4, rescale: int = 1) -> np.ndarray:
  """CAGrad (Liu et al., 2021) from its primal problem
  ``max_{d, t} t  s.t.  J d >= t,  ||d - g_0||^2 <= (c ||g_0||)^2``."""
  jac = _as64(jac)
  k, p = jac.shape
  scale = np.sqrt(np.sum(jac * jac))
  if scale == 0:
    return np.zeros(p)
  jn = jac / scale
  g0 = jn.mean(0)
  phi = c * np.linalg.norm(g0)

  def ball(z):
    return phi**2 - np.sum((z[:p] - g0) ** 2)

  def ball_jac(z):
    out = np.zeros(p + 1)
    out[:p] = -2.0 * (z[:p] - g0)
    return out

  lin = np.concatenate([jn, -np.ones((k, 1))], 1)
  z0 = np.concatenate([g0, [np.min(jn @ g0)]])
  res = optimize.minimize(
      lambda z: -z[p], z0, jac=lambda z: -np.eye(p + 1)[p],
      constraints=[{"type": "ineq", "fun": lambda z: lin @ z,
                    "jac": lambda z: lin},
                   {"type": "ineq", "fun": ball, "jac": ball_jac}],
      method="SLSQP", options={"ftol": 1e-15, "maxiter": 2000})
  d = res.x[:p]
  if abs(res.x[p]) < 1e-9 * np.linalg.norm(jn):
    # Best worst-case improvement 0 (a Pareto-stationary point): every d in
    # the ball with J d >= 0 is a maximiser; take the one closest to g_0.
    res = optimize.minimize(
        lambda y: 0.5 * np.sum((y - g0) ** 2), d, jac=lambda y: y - g0,
        constraints=[{"type": "ineq", "fun": lambda y: jn @ y,
                      "jac": lambda y: jn}],
        method="SLSQP", options={"ftol": 1e-15, "maxiter": 2000})
    d = res.x
  divisor = {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]
  return d * scale / divisor


# --------------------------------------------------------------------------
# Nash-MTL.
# --------------------------------------------------------------------------


def nash_alpha(gram: np.ndarray) -> np.ndarray:
  """``alpha > 0`` with ``G alpha = 1 / alpha``.

  L-BFGS-B on ``1/2 a^T G a - sum(log a)`` over ``a > 0`` (the Frobenius-
  normalised Gramian), polished by root finding on ``a * (G a) - 1`` in
  ``log a`` (hybrid Powell).  Raises if no accurate solution is found (there
  is none when zero lies in the convex hull of the gradients).
  """
  gram = np.asarray(gram, np.float64)
  fro = np.linalg.norm(gram)
  gn = gram / fro
  k = gram.shape[0]

  def potential(a):
    return 0.5 * a @ gn @ a - np.sum(np.log(a)), gn @ a - 1.0 / a

  start = 1.0 / np.sqrt(np.diag(gn))
  res = optimize.minimize(potential, start, jac=True, method="L-BFGS-B",
                          bounds=[(1e-12, None)] * k,
                          options={"ftol": 1e-15, "gtol": 1e-12,
                                   "maxiter": 10000})

  def fun(y):
    a = np.exp(y)
    return a * (gn @ a) - 1.0

  def jac(y):
    a = np.exp(y)
    return np.diag(a * (gn @ a)) + a[:, None] * gn * a[None, :]

  # Trust-region Newton on the potential in y = log(a), where the
  # start's scale no longer matters (the solution can be ~1e5 times the
  # start when a ridge keeps it finite); then the root polish.
  def pot_y(y):
    a = np.exp(y)
    return 0.5 * a @ gn @ a - np.sum(y)

  def hess_y(y):
    a = np.exp(y)
    return np.diag(a * (gn @ a)) + a[:, None] * gn * a[None, :]

  tr = optimize.minimize(pot_y, np.log(res.x), jac=fun, hess=hess_y,
                         method="trust-exact",
                         options={"gtol": 1e-13, "maxiter": 10000})
  root = optimize.root(fun, tr.x, jac=jac, method="hybr", tol=1e-15)
  alpha = np.exp(root.x)
  resid = np.max(np.abs(alpha * (gn @ alpha) - 1.0))
  if not resid < 1e-6:
    raise ValueError(f"no Nash bargaining solution found (residual {resid})")
  return alpha / np.sqrt(fro)


def nash_mtl(jac, max_norm: float = 1.0,
             reg_eps: Optional[float] = None) -> np.ndarray:
  """Nash-MTL (Navon et al., 2022): ``J^T alpha``, clipped to ``max_norm``.

  With ``reg_eps``, the bargaining is solved for the augmented Jacobian
  ``[J / sqrt(||G||_F), sqrt(reg_eps) I]`` (whose Gramian is the ridged,
  Frobenius-normalised ``G / ||G||_F + reg_eps I`` of our solver): every task
  gets a private coordinate, so a solution exists even where zero lies in the
  convex hull of the gradients (a zero gradient, exact opposites, K > P),
  where the exact problem (``reg_eps=None``) has none and this raises.  The
  update is the first P coordinates, rescaled to J.
  """
  jac = _as64(jac)
  k, p = jac.shape
  if reg_eps is None:
    alpha = nash_alpha(jac @ jac.T)
    d = alpha @ jac
  else:
    fro = np.linalg.norm(jac @ jac.T)
    if fro == 0:
      return np.zeros(p)
    aug = np.concatenate([jac / np.sqrt(fro), np.sqrt(reg_eps) * np.eye(k)],
                         1)
    beta = nash_alpha(aug @ aug.T)
    d = (beta @ aug)[:p] * np.sqrt(fro)
  norm = np.linalg.norm(d)
  if max_norm > 0 and norm > max_norm:
    d = d * max_norm / norm
  return d


REFERENCES = {
    "mgda": mgda,
    "upgrad": upgrad,
    "dualproj": dualproj,
    "cagrad": cagrad,
    "nash_mtl": nash_mtl,
}

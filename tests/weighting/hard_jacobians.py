"""A fixed, named corpus of hard [K, P] Jacobians for aggregator tests.

Every case is float64 and drawn from its own seeded generator, so the corpus
is identical on every machine and a case keeps its values when cases are
added.  Use it as::

  from tests.weighting.hard_jacobians import CORPUS   # [(name, array), ...]
  for name, jac in CORPUS: ...

or ``JACOBIANS[name]`` (a dict of the same).  The families (the prefix of each
name) are the degenerate inputs of the project standards: random, K > P,
conflicting pairs, exact opposites, one row x100, rows scaled 0.1/1/10,
identical rows, a zero row, orthogonal rows, rank deficient, nearly parallel
and all zero.  ``PARETO_STATIONARY`` names the cases where zero lies in the
convex hull of the rows (some convex combination of the gradients vanishes),
checked numerically by `is_pareto_stationary`; there MGDA's update is zero and
Nash-MTL's bargaining problem has no solution.
"""
from __future__ import annotations

import numpy as np
from scipy import optimize


def _rng(i: int) -> np.random.Generator:
  return np.random.default_rng(1300 + i)


def _build() -> list[tuple[str, np.ndarray]]:
  out: list[tuple[str, np.ndarray]] = []

  def add(name, jac):
    jac = np.asarray(jac, np.float64)
    assert jac.ndim == 2, name
    out.append((name, jac))

  i = iter(range(1000))
  # Random Gaussian rows, K <= P.
  for k, p in [(2, 5), (3, 10), (4, 10), (5, 20), (6, 30), (3, 3)]:
    add(f"random_k{k}_p{p}", _rng(next(i)).normal(size=(k, p)))
  # K > P: rank P Gramians (zero may or may not lie in the hull).
  for k, p in [(3, 2), (4, 2), (4, 3), (5, 3), (6, 4), (8, 5), (5, 1)]:
    add(f"k_gt_p_k{k}_p{p}", _rng(next(i)).normal(size=(k, p)))
  # Conflicting pairs: g2 = -0.8 g1 + noise (cosine about -0.8), others random.
  for k in (2, 3, 4):
    rng = _rng(next(i))
    jac = rng.normal(size=(k, 8))
    jac[1] = -0.8 * jac[0] + 0.4 * rng.normal(size=8)
    add(f"conflicting_k{k}", jac)
  # Exact opposites.
  rng = _rng(next(i))
  g = rng.normal(size=6)
  add("opposite_k2", np.stack([g, -g]))
  rng = _rng(next(i))
  jac = rng.normal(size=(3, 6))
  jac[1] = -jac[0]
  add("opposite_k3", jac)
  rng = _rng(next(i))
  jac = rng.normal(size=(4, 6))
  jac[2] = -3.0 * jac[0]
  add("opposite_scaled_k4", jac)
  # One row 100x the others.
  for k in (2, 3, 4):
    jac = _rng(next(i)).normal(size=(k, 10))
    jac[0] *= 100.0
    add(f"one_row_x100_k{k}", jac)
  jac = _rng(next(i)).normal(size=(5, 3))
  jac[1] *= 100.0
  add("one_row_x100_k5_p3", jac)
  # Rows scaled 0.1 / 1 / 10.
  for seed in range(2):
    jac = _rng(next(i)).normal(size=(3, 12))
    add(f"scaled_0.1_1_10_s{seed}", jac * np.array([[0.1], [1.0], [10.0]]))
  jac = _rng(next(i)).normal(size=(4, 3)) * np.array([[0.1], [1.0], [10.0],
                                                       [1.0]])
  add("scaled_0.1_1_10_k4_p3", jac)
  # Identical rows.
  jac = _rng(next(i)).normal(size=(3, 7))
  jac[2] = jac[0]
  add("identical_k3", jac)
  g = _rng(next(i)).normal(size=7)
  add("identical_all_k3", np.stack([g, g, g]))
  jac = _rng(next(i)).normal(size=(4, 5))
  jac[1] = jac[0]
  jac[3] = 2.0 * jac[2]
  add("parallel_pairs_k4", jac)
  # A zero row.
  for k in (2, 3, 4):
    jac = _rng(next(i)).normal(size=(k, 9))
    jac[k - 1] = 0.0
    add(f"zero_row_k{k}", jac)
  jac = _rng(next(i)).normal(size=(5, 3))
  jac[0] = 0.0
  add("zero_row_k5_p3", jac)
  # Orthogonal rows.
  add("orthogonal_equal", np.eye(3, 6))
  add("orthogonal_scaled", np.diag([0.5, 2.0, 8.0]) @ np.eye(3, 6))
  q, _ = np.linalg.qr(_rng(next(i)).normal(size=(10, 4)))
  add("orthogonal_rotated_k4", (q * np.array([1.0, 3.0, 0.2, 1.5])).T)
  # Rank deficient with K <= P.
  rng = _rng(next(i))
  add("rank2_k4_p10", rng.normal(size=(4, 2)) @ rng.normal(size=(2, 10)))
  rng = _rng(next(i))
  g = rng.normal(size=8)
  add("rank1_positive_k3", np.outer([1.0, 2.0, 0.5], g))
  # Nearly parallel rows (tiny angles) and a tiny row.
  rng = _rng(next(i))
  g = rng.normal(size=10)
  add("nearly_parallel_k3", g + 1e-3 * rng.normal(size=(3, 10)))
  jac = _rng(next(i)).normal(size=(3, 10))
  jac[2] *= 1e-3
  add("one_row_x0.001_k3", jac)
  # All zero.
  add("all_zero_k3", np.zeros((3, 5)))
  return out


CORPUS: list[tuple[str, np.ndarray]] = _build()
JACOBIANS: dict[str, np.ndarray] = dict(CORPUS)
assert len(JACOBIANS) == len(CORPUS), "duplicate case names"


def is_pareto_stationary(jac: np.ndarray, tol: float = 1e-9) -> bool:
  """Whether zero lies in the convex hull of J's rows: the min-norm point of
  the hull (SLSQP over the simplex) has norm below ``tol`` times the largest
  row norm.  An independent check of the labels below."""
  jac = np.asarray(jac, np.float64)
  k = jac.shape[0]
  scale = np.max(np.linalg.norm(jac, axis=1))
  if scale == 0:
    return True
  jn = jac / scale
  gram = jn @ jn.T
  res = optimize.minimize(
      lambda w: w @ gram @ w, np.full(k, 1.0 / k), jac=lambda w: 2 * gram @ w,
      bounds=[(0.0, 1.0)] * k,
      constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0}],
      method="SLSQP", options={"ftol": 1e-20, "maxiter": 1000})
  return bool(np.sqrt(max(res.fun, 0.0)) < np.sqrt(tol))


PARETO_STATIONARY: frozenset[str] = frozenset(
    name for name, jac in CORPUS if is_pareto_stationary(jac))

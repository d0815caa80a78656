"""Tests of the fixed-iteration JAX solvers in `mtrec_jax.weighting.solvers`.

Each solver is compiled once per dtype and run on a batch of problems
(`jax.vmap`), so the compile cost stays small.  References are exhaustive
enumerations of active sets (exact for small K) and SciPy.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from mtrec_jax.weighting import solvers

K = 4
P = 6



def _jit(fn, *args):
  """Runs ``jax.jit(fn)(*args)``, compiled at XLA backend optimisation level 0
  (~40% faster to compile than the default; same semantics)."""
  compiled = jax.jit(fn).lower(*args).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  return compiled(*args)


def _jacobians(seed: int = 0) -> np.ndarray:
  """[N, K, P] Jacobians: random ones (some with row norms spread over four
  orders of magnitude) and degenerate ones."""
  rng = np.random.default_rng(seed)
  out = [rng.normal(size=(K, P)) for _ in range(6)]
  out += [rng.normal(size=(K, P)) * np.exp(2 * rng.normal(size=(K, 1)))
          for _ in range(3)]
  j = rng.normal(size=(K, P))
  j[1] = j[0]
  out.append(j)                                   # identical rows
  j = rng.normal(size=(K, P))
  j[1] = -j[0]
  out.append(j)                                   # opposite rows
  j = rng.normal(size=(K, P))
  j[2] = 0.0
  out.append(j)                                   # a zero row
  out.append(rng.normal(size=(K, 2)) @ rng.normal(size=(2, P)))  # rank 2
  out.append(np.ones((K, P)) + 0.1 * rng.normal(size=(K, P)))    # aligned
  return np.stack(out)


def _enum_simplex_min_norm(gram: np.ndarray) -> np.ndarray:
  """Exact min-norm weights on the simplex by enumerating faces."""
  k = gram.shape[0]
  best, best_val = None, np.inf
  for size in range(1, k + 1):
    for s in itertools.combinations(range(k), size):
      s = list(s)
      m = np.zeros((size + 1, size + 1))
      m[:size, :size] = gram[np.ix_(s, s)]
      m[:size, size] = m[size, :size] = 1.0
      if np.linalg.cond(m) > 1e12:
        continue
      rhs = np.zeros(size + 1)
      rhs[size] = 1.0
      ws = np.linalg.solve(m, rhs)[:size]
      if np.any(ws < -1e-12):
        continue
      w = np.zeros(k)
      w[s] = np.maximum(ws, 0.0)
      w /= w.sum()
      if best is None or w @ gram @ w < best_val:
        best, best_val = w, w @ gram @ w
  return best


def _enum_nonneg_qp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Exact ``argmin_{x >= 0} 1/2 x^T A x + b^T x`` by enumerating free sets."""
  k = a.shape[0]
  for size in range(k + 1):
    for s in itertools.combinations(range(k), size):
      s = list(s)
      x = np.zeros(k)
      if s:
        x[s] = np.linalg.solve(a[np.ix_(s, s)], -b[s])
      g = a @ x + b
      scale = 1e-9 * (1.0 + np.abs(b).max())
      if np.all(x >= -scale) and np.all(g >= -scale):
        return np.maximum(x, 0.0)
  raise AssertionError("no KKT point found")


# --------------------------------------------------------------------------
# Simplex projection.
# --------------------------------------------------------------------------


def test_project_simplex_matches_bisection():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(50, 5)) * np.exp(rng.normal(size=(50, 1)))
  got = np.asarray(_jit(solvers.project_simplex, jnp.asarray(v)))
  for row, out in zip(v, got):
    lo, hi = row.min() - 1.0, row.max()
    for _ in range(200):  # sum(max(v - theta, 0)) = 1 by bisection.
      mid = 0.5 * (lo + hi)
      lo, hi = (mid, hi) if np.maximum(row - mid, 0).sum() > 1 else (lo, mid)
    np.testing.assert_allclose(out, np.maximum(row - lo, 0.0), atol=1e-6)
  assert np.all(got >= 0)
  np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)
  # Points of the simplex are fixed points.
  again = np.asarray(solvers.project_simplex(jnp.asarray(got)))
  np.testing.assert_allclose(again, got, atol=1e-6)


# --------------------------------------------------------------------------
# Min-norm point (MGDA).
# --------------------------------------------------------------------------


def test_min_norm_weights_matches_enumeration_and_kkt(dtype):
  jacs = _jacobians()
  grams = np.einsum("nkp,nlp->nkl", jacs, jacs)
  ws = np.asarray(_jit(jax.vmap(solvers.min_norm_weights),
                       jnp.asarray(grams, dtype)), np.float64)
  tol = 1e-4 if dtype == jnp.float32 else 1e-7
  for jac, gram, w in zip(jacs, grams, ws):
    ref = _enum_simplex_min_norm(gram)
    scale = np.linalg.norm(jac)  # ||J||_F
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
    # The update J^T w matches the exact min-norm point.
    assert np.linalg.norm((w - ref) @ jac) <= tol * scale
    # KKT: g . g_k >= ||g||^2 for all k, with equality on the support.
    d = w @ jac
    dots = jac @ d
    assert np.all(dots >= d @ d - tol * scale**2)
    support = w > 1e-3
    np.testing.assert_allclose(dots[support], d @ d, atol=tol * scale**2)


def test_min_norm_iterations_are_enough():
  """The default iteration count reaches the fixed point: more iterations do
  not change the answer (K = 8, singular and regular Gramians)."""
  rng = np.random.default_rng(2)
  k = 8
  jacs = [rng.normal(size=(k, 5)) @ rng.normal(size=(5, 20))  # rank 5 < K
          * np.exp(rng.normal(size=(k, 1))) for _ in range(6)]
  jacs += [rng.normal(size=(k, 20)) for _ in range(6)]
  grams = jnp.asarray(np.einsum("nkp,nlp->nkl", jacs, jacs), jnp.float32)
  default, longer = _jit(lambda g: (
      jax.vmap(solvers.min_norm_weights)(g),
      jax.vmap(lambda x: solvers.min_norm_weights(x, num_iters=100))(g)),
                         grams)
  for jac, w1, w2 in zip(jacs, np.asarray(default), np.asarray(longer)):
    assert np.linalg.norm((w1 - w2) @ jac) <= 1e-5 * np.linalg.norm(jac)


# --------------------------------------------------------------------------
# Non-negative QP and the dual-cone projection (UPGrad / DualProj).
# --------------------------------------------------------------------------


def test_nonneg_qp_matches_enumeration():
  rng = np.random.default_rng(3)
  n = 12
  mats = rng.normal(size=(n, K, K + 1))
  a = np.einsum("nkp,nlp->nkl", mats, mats) + 1e-3 * np.eye(K)
  b = rng.normal(size=(n, K))
  b[0] = np.abs(b[0])  # solution 0
  b[1] = -np.abs(b[1])  # maybe interior
  with jax.enable_x64(True):
    xs = np.asarray(_jit(jax.vmap(solvers.nonneg_qp), jnp.asarray(a),
                         jnp.asarray(b)))
  tol = 1e-8
  for ai, bi, x in zip(a, b, xs):
    ref = _enum_nonneg_qp(ai, bi)
    assert np.all(x >= 0)
    np.testing.assert_allclose(x, ref, atol=tol * (1 + np.abs(ref).max()))


def test_dual_cone_weights_project_onto_the_dual_cone():
  """In float32 (float64 is covered by `test_nonneg_qp_matches_enumeration`
  and by UPGrad / DualProj against their references)."""
  dtype = jnp.float32
  jacs = _jacobians(4)
  scale = np.sqrt(np.einsum("nkp,nkp->n", jacs, jacs))
  jacs = jacs / scale[:, None, None]
  grams = np.einsum("nkp,nlp->nkl", jacs, jacs) + 1e-4 * np.eye(K)
  rng = np.random.default_rng(5)
  us = rng.uniform(0.0, 1.0, size=(len(jacs), K))
  vs = np.asarray(_jit(jax.vmap(solvers.dual_cone_weights),
                       jnp.asarray(grams, dtype), jnp.asarray(us, dtype)),
                  np.float64)
  tol = 1e-4
  for gram, u, v in zip(grams, us, vs):
    gv = gram @ v
    assert np.all(v >= u - tol)                 # primal feasibility
    assert np.all(gv >= -tol)                   # in the dual cone
    np.testing.assert_allclose((v - u) * gv, 0.0, atol=tol)  # complementarity


# --------------------------------------------------------------------------
# CAGrad's dual.
# --------------------------------------------------------------------------


def _cagrad_dual_objective(gram, w, c):
  k = gram.shape[0]
  u = np.full(k, 1.0 / k)
  return w @ gram @ u + c * np.sqrt(u @ gram @ u) * np.sqrt(
      max(w @ gram @ w, 0.0))


def test_cagrad_weights_minimise_the_dual():
  jacs = _jacobians(6)[:9]  # the regular ones
  grams = np.einsum("nkp,nlp->nkl", jacs, jacs)
  grams /= np.trace(grams, axis1=1, axis2=2)[:, None, None]
  c = 0.4
  with jax.enable_x64(True):
    ws, lams = _jit(jax.vmap(lambda g: solvers.cagrad_weights(g, c)),
                    jnp.asarray(grams))
    ws, lams = np.asarray(ws), np.asarray(lams)
  for gram, w, lam in zip(grams, ws, lams):
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-9
    res = optimize.minimize(
        lambda x: _cagrad_dual_objective(gram, x, c), np.full(K, 1.0 / K),
        bounds=[(0, 1)] * K, method="SLSQP",
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
        options={"ftol": 1e-14, "maxiter": 500})
    assert (_cagrad_dual_objective(gram, w, c)
            <= _cagrad_dual_objective(gram, res.x, c) + 1e-9)
    u = np.full(K, 1.0 / K)
    np.testing.assert_allclose(
        lam, c * np.sqrt(u @ gram @ u) / np.sqrt(w @ gram @ w), rtol=1e-6)


# --------------------------------------------------------------------------
# Nash bargaining.
# --------------------------------------------------------------------------


def test_nash_bargaining():
  """Solves G alpha = 1 / alpha; scale equivariance; warm starts; finite on
  degenerate Gramians.  One batch (one compilation), in float64 (float32 is
  covered through `nash_mtl` in test_gramian_strategies / test_harness)."""
  with jax.enable_x64(True):
    _check_nash_bargaining(jnp.float64)


def _check_nash_bargaining(dtype):
  jacs = _jacobians(7)
  grams = np.einsum("nkp,nlp->nkl", jacs, jacs)
  g0 = grams[0]
  starts = np.stack([[10.0, 0.1, 1.0, 3.0], np.full(K, 1e3),
                     np.full(K, 1e-3)])
  cold = np.zeros((len(grams) + 1, K))  # not positive: ignored.
  alphas = np.asarray(_jit(
      jax.vmap(lambda g, a0: solvers.nash_bargaining(g, alpha0=a0)),
      jnp.asarray(np.concatenate([grams, [9.0 * g0], [g0] * 3]), dtype),
      jnp.asarray(np.concatenate([cold, starts]), dtype)), np.float64)
  n = len(grams)
  tol = 1e-6
  assert np.all(np.isfinite(alphas)) and np.all(alphas > 0)
  # Zero is not in the convex hull of the first nine (random) Jacobians' rows,
  # so the bargaining equation has a solution; the degenerate ones (identical,
  # opposite, zero rows, rank 2, aligned) only need finite weights.
  for gram, alpha in zip(grams[:9], alphas[:9]):
    np.testing.assert_allclose(alpha * (gram @ alpha), 1.0, atol=tol)
  # G -> c^2 G gives alpha -> alpha / c.
  np.testing.assert_allclose(alphas[n], alphas[0] / 3.0, rtol=10 * tol)
  # Poor warm starts converge to the same point.
  np.testing.assert_allclose(alphas[n + 1:], np.stack([alphas[0]] * 3),
                             rtol=10 * tol)


# --------------------------------------------------------------------------
# Compilation: fixed iterations, no host round-trip.
# --------------------------------------------------------------------------


def test_solvers_have_no_host_callbacks():
  gram = jnp.eye(3) + 0.5
  fns = {
      "min_norm_weights": lambda g: solvers.min_norm_weights(g),
      "dual_cone_weights": lambda g: solvers.dual_cone_weights(
          g, jnp.eye(3) / 3),
      "cagrad_weights": lambda g: solvers.cagrad_weights(g, 0.4),
      "nash_bargaining": lambda g: solvers.nash_bargaining(g),
  }
  for name, fn in fns.items():
    text = str(jax.make_jaxpr(fn)(gram))
    assert "callback" not in text, name
    assert "scan" in text or "while" in text, name  # one static loop

"""Jittable solvers for the small K x K problems of gradient weighting.

Every Gramian-based weighting method reduces to a tiny optimisation problem
over K task weights, posed on the Gramian ``G = J J^T`` of the [K, P] task
Jacobian.  The solvers below run a FIXED number of iterations (one static
loop: no host round-trip, no data-dependent control flow), work in float32
and float64 (the Gramian's dtype, at least float32) and, once converged, are
exact up to the linear algebra: about 1e-6 relative in float32 and 1e-12 in
float64 on well-posed problems (the ridge below aside).

* `project_simplex`: Euclidean projection onto the probability simplex.
* `minimize_on_simplex`: projected Newton (Bertsekas, 1982) for a smooth
  convex function over the simplex.  Each iteration takes two Newton steps on
  faces of the simplex (the current support, and the support plus the one
  zero weight whose gradient most wants to enter, as in Wolfe's min-norm-point
  method), each as a projected arc of step lengths 1, 1/2, ... and as the
  longest feasible step (the ratio test of an active-set method), plus
  projected-gradient steps of several lengths, and keeps the best candidate by
  the exact change of the objective.  The objective never increases, and the
  iterates land on the optimum once its face is found (within about K
  iterations for K <= 10 in our tests; the default is ``2 K + 10``).
* `min_norm_weights`: the min-norm point of the convex hull of K vectors (the
  MGDA sub-problem of Sener & Koltun, NeurIPS 2018), by `minimize_on_simplex`.
* `nonneg_qp`: ``argmin_{x >= 0} 1/2 x^T A x + b^T x`` (the same method on
  the non-negative orthant), and `dual_cone_weights`: the dual of the
  projection onto the dual cone of J's rows used by UPGrad and DualProj
  (Quinton & Rey, 2024, Proposition 1).
* `cagrad_weights`: the dual problem of CAGrad (Liu et al., NeurIPS 2021).
* `nash_bargaining`: the Nash bargaining solution of Nash-MTL (Navon et al.,
  ICML 2022), ``G alpha = 1 / alpha`` with ``alpha > 0``, by damped Newton on a
  self-concordant potential.

Conditioning.  The solvers work on the Gramian divided by a scale (its trace,
or its Frobenius norm for Nash-MTL) so that its entries are O(1), and add a
ridge ``reg_eps * I`` to the normalised matrix (default 1e-10: uniqueness and
boundedness when tasks have identical, opposite or zero gradients, or when
K > P; it perturbs the solution by about ``reg_eps / lambda_min``).  The
Newton systems are further damped by a few ulps of the trace, which keeps
their solutions bounded in float32 on near-singular faces without moving the
fixed point.

Cost: each iteration is one or two (K+1) x (K+1) solves plus O(K^2) work per
candidate, so the step time is independent of the number of parameters P.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

Array = jax.Array

# Newton step lengths 1, 1/2, ..., 2^-(N-1) and projected-gradient step
# lengths 2^j / L tried at every iteration (L bounds the curvature).
_NEWTON_STEPS = 8
_PG_STEPS = tuple(range(-4, 4))
# Levenberg-Marquardt damping of the Newton systems, in ulps of the trace.
_DAMPING_ULPS = 16.0


def _float(x: Array) -> Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _tiny(dtype) -> Array:
  return jnp.asarray(jnp.finfo(dtype).tiny, dtype)


def default_iterations(num_tasks: int) -> int:
  """Default iteration count of the projected-Newton solvers for K tasks.

  Projected Newton finds the active face of these K-dimensional problems in
  at most a few sweeps; ``2 K + 10`` leaves a wide margin (each iteration is
  one (K+1) x (K+1) solve).
  """
  return 2 * num_tasks + 10


def normalize_gram(gram: Array, scale: Optional[Array] = None
                   ) -> tuple[Array, Array]:
  """Returns ``(G / s, s)`` with ``s`` the trace of G (or the given scale).

  A Gramian whose scale is zero, not positive or not finite is divided by 1
  (it is then all zeros, or already invalid).
  """
  gram = _float(gram)
  if scale is None:
    scale = jnp.trace(gram)
  ok = (scale > _tiny(gram.dtype)) & jnp.isfinite(scale)
  scale = jnp.where(ok, scale, jnp.ones_like(scale))
  return gram / scale, scale


def regularize(gram: Array, reg_eps: float) -> Array:
  """``G + reg_eps * I``."""
  return gram + reg_eps * jnp.eye(gram.shape[-1], dtype=gram.dtype)


# --------------------------------------------------------------------------
# Simplex projection and the projected-Newton method on the simplex.
# --------------------------------------------------------------------------


def project_simplex(v: Array) -> Array:
  """Euclidean projection of ``v`` (last axis) onto the probability simplex.

  The projection is ``max(v - theta, 0)`` with the threshold ``theta`` that
  makes it sum to one.  Michelot's (1986) algorithm finds ``theta`` exactly
  in at most K rounds without sorting: start with every coordinate active,
  set ``theta = (sum of the active v - 1) / #active``, drop the coordinates
  with ``v <= theta``, repeat (``theta`` only increases).  Batched over
  leading axes; the K - 1 rounds are unrolled (elementwise work that XLA
  fuses, with no loop or sort, so it stays cheap inside the solvers' loops on
  accelerators).
  """
  v = _float(v)
  k = v.shape[-1]
  theta = (jnp.sum(v, axis=-1, keepdims=True) - 1.0) / k
  for _ in range(k - 1):
    active = (v > theta).astype(v.dtype)
    count = jnp.maximum(jnp.sum(active, axis=-1, keepdims=True), 1.0)
    theta = (jnp.sum(v * active, axis=-1, keepdims=True) - 1.0) / count
  return jnp.maximum(v - theta, 0.0)


def minimize_on_simplex(
    grad_hess: Callable[[Array], tuple[Array, Array]],
    change: Callable[[Array, Array], Array],
    w0: Array,
    num_iters: int,
) -> Array:
  """Minimises a smooth convex function f over the probability simplex.

  Projected Newton with an epsilon-active set (Bertsekas, 1982), one entering
  weight at a time and a ratio test (as in an active-set method), safeguarded
  by keeping the best of a fan of candidates at every iteration (see the
  module docstring).

  Args:
    grad_hess: ``w -> (grad f(w), hess f(w))``, shapes [K] and [K, K]; the
      Hessian must be positive definite on ``{d : sum(d) = 0}``.
    change: ``(w, d) -> f(w + d) - f(w)`` for ``w + d`` on the simplex,
      computed without cancellation (it decides between candidates near the
      optimum, where ``f`` is flat): e.g. centre the gradient, since terms
      proportional to ``sum(d) = 0`` are pure rounding.
    w0: a starting point on the simplex.
    num_iters: the fixed number of iterations.

  Returns:
    The minimiser, on the simplex.
  """
  w0 = _float(w0)
  k = w0.shape[-1]
  dtype = w0.dtype
  newton_steps = 2.0 ** -jnp.arange(_NEWTON_STEPS, dtype=dtype)
  pg_steps = 2.0 ** jnp.asarray(_PG_STEPS, dtype=dtype)
  tiny = _tiny(dtype)
  eye = jnp.eye(k, dtype=dtype)

  def face_newton(w, g, h, free):
    """Newton steps on the faces ``{w_i = 0 : i not free[j]}`` (free: [F, K])
    : the weights off a face go to zero and the free ones absorb their mass.
    The Hessian is damped by a few ulps of its trace so that near-singular
    faces (identical or affinely dependent gradients) give bounded steps in
    float32."""
    f = free.astype(dtype)                                    # [F, K]
    damping = _DAMPING_ULPS * jnp.finfo(dtype).eps * jnp.trace(h)
    hf = (h * f[:, :, None] * f[:, None, :]
          + eye * (damping * f + (1.0 - f))[:, None, :])     # [F, K, K]
    n = f.shape[0]
    kkt = jnp.concatenate([
        jnp.concatenate([hf, f[:, :, None]], axis=2),
        jnp.concatenate([f, jnp.zeros((n, 1), dtype)], axis=1)[:, None, :]],
                          axis=1)                             # [F, K+1, K+1]
    rhs = jnp.concatenate([jnp.where(free, -g, -w),
                           jnp.sum(jnp.where(free, 0.0, w), axis=1,
                                   keepdims=True)], axis=1)   # [F, K+1]
    d = jnp.linalg.solve(kkt, rhs[..., None])[:, :k, 0]
    return jnp.where(jnp.isfinite(d), d, 0.0)

  def body(_, w):
    g, h = grad_hess(w)
    lip = jnp.maximum(jnp.trace(h), tiny)  # >= the largest eigenvalue
    nu = jnp.dot(w, g)  # the multiplier of sum(w) = 1 at the optimum
    # Epsilon from the complementarity residual min(w, (g - nu) / lip),
    # which vanishes at the optimum; below 0.1 / K < max(w), so the support
    # is never empty.
    resid = jnp.max(jnp.abs(jnp.minimum(w, (g - nu) / lip)))
    eps = jnp.minimum(0.1 / k, resid)
    support = w > eps
    # Two Newton steps: on the current support, and with the zero weight
    # whose gradient is the most below nu entering (one at a time, as in
    # Wolfe's min-norm-point method).
    viol = jnp.where(support, jnp.inf, g - nu)
    enter = (jnp.arange(k) == jnp.argmin(viol)) & (jnp.min(viol) < 0)
    frees = jnp.stack([support, support | enter])
    d = face_newton(w, g, h, frees)  # [2, K]
    # For each: the projected Newton arc, and the longest feasible step in
    # [0, 1] along d (the ratio test of a primal active-set method, which
    # drops a blocking weight without leaving the face).
    # One batched projection for the Newton arcs and the gradient steps.
    raw = jnp.concatenate([
        (w + newton_steps[None, :, None] * d[:, None, :]).reshape(-1, k),
        w - (pg_steps / lip)[:, None] * g[None, :]], axis=0)
    proj = project_simplex(raw)
    arc, pg = proj[:2 * _NEWTON_STEPS], proj[2 * _NEWTON_STEPS:]
    neg = d < 0
    ratio = jnp.min(jnp.where(neg, w / jnp.where(neg, -d, 1.0), 1.0), axis=1)
    blocked = jnp.maximum(w + jnp.minimum(ratio, 1.0)[:, None] * d, 0.0)
    blocked = blocked / jnp.maximum(jnp.sum(blocked, axis=1, keepdims=True),
                                    tiny)
    # Newton candidates first, then staying put, so ties favour Newton.
    cands = jnp.concatenate([arc, blocked, w[None, :], pg], axis=0)
    deltas = jax.vmap(lambda c: change(w, c - w))(cands)
    deltas = jnp.where(jnp.isfinite(deltas), deltas, jnp.inf)
    return cands[jnp.argmin(deltas)]

  return jax.lax.fori_loop(0, num_iters, body, w0)


def min_norm_weights(gram: Array, *, reg_eps: float = 1e-10,
                     num_iters: Optional[int] = None,
                     w0: Optional[Array] = None) -> Array:
  """Weights of the min-norm point in the convex hull of K vectors.

  ``argmin_{w in simplex} w^T G w`` (the MGDA sub-problem; Sener & Koltun,
  NeurIPS 2018, solve it by Frank-Wolfe), solved here by `minimize_on_simplex`
  on ``G / trace(G) + reg_eps * I``.

  Args:
    gram: [K, K] Gramian of the vectors.
    reg_eps: ridge added to the trace-normalised Gramian.
    num_iters: iterations (default `default_iterations(K)`).
    w0: starting weights (default uniform).

  Returns:
    [K] weights on the simplex.
  """
  gram, _ = normalize_gram(gram)
  k = gram.shape[-1]
  a = regularize(gram, reg_eps)
  if w0 is None:
    w0 = jnp.full((k,), 1.0 / k, a.dtype)
  if num_iters is None:
    num_iters = default_iterations(k)

  def grad_hess(w):
    return a @ w, a

  def change(w, d):
    # sum(d) = 0 on the simplex: centring the gradient removes the rounding
    # of its common part, which would swamp the change near the optimum.
    aw = a @ w
    return jnp.dot(d, aw - jnp.dot(w, aw)) + 0.5 * jnp.dot(d, a @ d)

  return minimize_on_simplex(grad_hess, change, w0.astype(a.dtype), num_iters)


# --------------------------------------------------------------------------
# Non-negative QP (UPGrad / DualProj).
# --------------------------------------------------------------------------


def nonneg_qp(a: Array, b: Array, *, num_iters: Optional[int] = None,
              x0: Optional[Array] = None) -> Array:
  """``argmin_{x >= 0} 1/2 x^T A x + b^T x`` for a positive definite A.

  Projected Newton on the non-negative orthant (Bertsekas, 1982): Newton
  steps on the current support and on Bertsekas' free set (support plus the
  zero coordinates with a negative gradient), as projected arcs and as
  ratio-test steps, with the best-of-candidates safeguard of
  `minimize_on_simplex`.  ``b`` may carry leading batch axes (one problem per
  row, sharing A).

  Args:
    a: [K, K] symmetric positive definite matrix.
    b: [..., K] linear terms.
    num_iters: iterations (default `default_iterations(K)`).
    x0: starting point(s) (default ``max(-b / diag(A), 0)``).

  Returns:
    [..., K] minimisers.
  """
  a = _float(a)
  b = b.astype(a.dtype)
  k = a.shape[-1]
  if num_iters is None:
    num_iters = default_iterations(k)
  if b.ndim > 1:
    lead = b.shape[:-1]
    flat_b = b.reshape(-1, k)
    flat_x0 = None if x0 is None else jnp.broadcast_to(x0, b.shape).reshape(
        -1, k)
    if flat_x0 is None:
      out = jax.vmap(lambda bb: nonneg_qp(a, bb, num_iters=num_iters))(flat_b)
    else:
      out = jax.vmap(lambda bb, xx: nonneg_qp(a, bb, num_iters=num_iters,
                                               x0=xx))(flat_b, flat_x0)
    return out.reshape(lead + (k,))

  dtype = a.dtype
  tiny = _tiny(dtype)
  diag = jnp.maximum(jnp.diag(a), tiny)
  if x0 is None:
    x0 = jnp.maximum(-b / diag, 0.0)
  x0 = x0.astype(dtype)
  lip = jnp.maximum(jnp.trace(a), tiny)
  newton_steps = 2.0 ** -jnp.arange(_NEWTON_STEPS, dtype=dtype)
  pg_steps = 2.0 ** jnp.asarray(_PG_STEPS, dtype=dtype)
  eye = jnp.eye(k, dtype=dtype)
  damping = _DAMPING_ULPS * jnp.finfo(dtype).eps * lip

  def change(x, d):
    return jnp.dot(d, a @ x + b) + 0.5 * jnp.dot(d, a @ d)

  def face_newton(x, g, free):
    """Newton steps on the faces ``{x_i = 0 : i not free[j]}`` (free:
    [F, K]), damped by a few ulps of the trace as in `minimize_on_simplex`."""
    f = free.astype(dtype)
    af = (a * f[:, :, None] * f[:, None, :]
          + eye * (damping * f + (1.0 - f))[:, None, :])
    d = jnp.linalg.solve(af, jnp.where(free, -g, -x)[..., None])[..., 0]
    return jnp.where(jnp.isfinite(d), d, 0.0)

  def body(_, x):
    g = a @ x + b
    resid = jnp.max(jnp.abs(jnp.minimum(x, g / lip)))
    eps = jnp.minimum(1e-3 * jnp.max(jnp.abs(x)), resid)
    support = x > eps
    # Two Newton steps: on the current support, and on Bertsekas' free set
    # (the support plus the zero coordinates whose gradient is negative).
    frees = jnp.stack([support, support | (g < 0)])
    d = face_newton(x, g, frees)  # [2, K]
    arc = jnp.maximum(
        x + newton_steps[None, :, None] * d[:, None, :], 0.0).reshape(-1, k)
    # The longest feasible step in [0, 1] along each d (ratio test).
    neg = d < 0
    ratio = jnp.min(jnp.where(neg, x / jnp.where(neg, -d, 1.0), 1.0), axis=1)
    blocked = jnp.maximum(x + jnp.minimum(ratio, 1.0)[:, None] * d, 0.0)
    pg = jnp.maximum(x[None, :] - (pg_steps / lip)[:, None] * g[None, :], 0.0)
    cands = jnp.concatenate([arc, blocked, x[None, :], pg], axis=0)
    deltas = jax.vmap(lambda c: change(x, c - x))(cands)
    deltas = jnp.where(jnp.isfinite(deltas), deltas, jnp.inf)
    return cands[jnp.argmin(deltas)]

  return jax.lax.fori_loop(0, num_iters, body, x0)


def dual_cone_weights(gram: Array, u: Array, *,
                      num_iters: Optional[int] = None) -> Array:
  """Weights of the projection of ``J^T u`` onto the dual cone of J's rows.

  By Proposition 1 of Quinton & Rey (2024, "Jacobian Descent for
  Multi-Objective Optimization"), the projection of ``J^T u`` onto
  ``{x : J x >= 0}`` is ``J^T v`` with ``v = argmin_{v >= u} v^T G v``.  With
  ``v = u + z`` this is the non-negative QP
  ``min_{z >= 0} 1/2 z^T G z + (G u)^T z``, solved by `nonneg_qp`.

  Args:
    gram: [K, K] positive definite Gramian (regularise it first).
    u: [..., K] weights of the vectors to project (batched over leading axes).
    num_iters: iterations of `nonneg_qp`.

  Returns:
    [..., K] weights ``v >= u``.
  """
  gram = _float(gram)
  u = u.astype(gram.dtype)
  z = nonneg_qp(gram, u @ gram, num_iters=num_iters)  # G symmetric.
  return u + z


# --------------------------------------------------------------------------
# CAGrad.
# --------------------------------------------------------------------------


def cagrad_weights(gram: Array, c: float, *, reg_eps: float = 1e-10,
                   norm_eps: float = 1e-4, num_iters: Optional[int] = None
                   ) -> tuple[Array, Array]:
  """Solves the dual problem of CAGrad (Liu et al., NeurIPS 2021, Eq. 4).

  ``w* = argmin_{w in simplex} g_w^T g_0 + c ||g_0|| ||g_w||`` with
  ``g_w = J^T w`` and ``g_0 = J^T 1/K``; the CAGrad update is then
  ``g_0 + (c ||g_0|| / ||g_w*||) g_w*``, i.e. the weights
  ``1/K + lam w*`` with ``lam = c ||g_0|| / ||g_w*||``.

  The objective is convex and, with the ridge, smooth on the simplex; it is
  minimised by `minimize_on_simplex` on the trace-normalised Gramian (the
  ridge enters only the norm term ``||g_w||``).

  Args:
    gram: [K, K] Gramian.
    c: the radius coefficient, >= 0.
    reg_eps: ridge added to the trace-normalised Gramian inside ``||g_w||``.
    norm_eps: ``||g_w*||`` below ``norm_eps * ||J||_F`` counts as zero (as
      torchjd's ``norm_eps``).
    num_iters: iterations (default `default_iterations(K)`).

  Returns:
    ``(w*, lam)``: the dual weights on the simplex and the multiplier
    ``c ||g_0|| / ||g_w*||`` (0 where ``||g_w*||`` counts as zero).
  """
  gram, _ = normalize_gram(gram)
  k = gram.shape[-1]
  dtype = gram.dtype
  a = regularize(gram, reg_eps)
  u = jnp.full((k,), 1.0 / k, dtype)
  b = gram @ u
  g0_norm = jnp.sqrt(jnp.maximum(jnp.dot(u, b), 0.0))
  phi = c * g0_norm
  if num_iters is None:
    num_iters = default_iterations(k)

  def norm(w):
    return jnp.sqrt(jnp.maximum(jnp.dot(w, a @ w), _tiny(dtype)))

  def grad_hess(w):
    aw = a @ w
    s = norm(w)
    grad = b + phi * aw / s
    hess = (phi / s) * (a - jnp.outer(aw, aw) / s**2)
    # A tiny multiple of A keeps the KKT system regular when phi = 0.
    hess = hess + 1e-12 * a
    return grad, hess

  def change(w, d):
    # F(w + d) - F(w) without cancellation: the norm difference as
    # (s1^2 - s0^2) / (s1 + s0), and both linear parts centred (sum(d) = 0).
    aw = a @ w
    s0 = norm(w)
    s1 = norm(w + d)
    dsq = 2.0 * jnp.dot(d, aw - jnp.dot(w, aw)) + jnp.dot(d, a @ d)
    return jnp.dot(d, b - jnp.dot(w, b)) + phi * dsq / (s0 + s1)

  w = minimize_on_simplex(grad_hess, change, u, num_iters)
  gw_norm = jnp.sqrt(jnp.maximum(jnp.dot(w, gram @ w), 0.0))
  small = ~(gw_norm > norm_eps)  # The Gramian has unit trace here.
  lam = jnp.where(small, 0.0, phi / jnp.where(small, 1.0, gw_norm))
  return w, lam


# --------------------------------------------------------------------------
# Nash bargaining (Nash-MTL).
# --------------------------------------------------------------------------


def nash_bargaining(gram: Array, *, reg_eps: float = 1e-10,
                    num_iters: int = 20,
                    alpha0: Optional[Array] = None) -> Array:
  """The Nash bargaining weights: ``alpha > 0`` with ``G alpha = 1 / alpha``.

  Navon et al. (ICML 2022) characterise the Nash-MTL update ``J^T alpha`` by
  ``alpha_i (G alpha)_i = 1`` for every task.  This is the stationarity
  condition of the strictly convex, self-concordant potential
  ``f(alpha) = 1/2 alpha^T G alpha - sum_i log alpha_i``, which is minimised
  here by damped Newton (Nesterov & Nemirovskii): the step
  ``-H^-1 grad / (1 + lambda)`` (``lambda`` the Newton decrement) keeps
  ``alpha > 0`` and converges globally, quadratically near the solution.

  The Gramian is normalised by its Frobenius norm (as in the official code)
  and regularised by ``reg_eps * I``, which bounds the solution when zero lies
  in the convex hull of the gradients (then no exact solution exists).  The
  start is the diagonal solution ``1 / sqrt(G_ii)`` or ``alpha0``, whichever
  has the lower potential once rescaled to the best multiple along its ray;
  from there, 10 steps reached rounding level on random problems with K <= 10
  and row norms spread over e^+-4 (the default 20 leaves a margin).

  Args:
    gram: [K, K] Gramian.
    reg_eps: ridge added to the normalised Gramian.
    num_iters: fixed number of Newton steps.
    alpha0: optional warm start (weights for the un-normalised Gramian;
      ignored unless all positive and finite).

  Returns:
    [K] weights ``alpha > 0`` for the un-normalised Gramian (its update
    ``J^T alpha`` has squared norm K, up to the ridge).
  """
  gram = _float(gram)
  dtype = gram.dtype
  k = gram.shape[-1]
  tiny = _tiny(dtype)
  fro = jnp.sqrt(jnp.sum(gram * gram))
  a, fro = normalize_gram(gram, fro)
  a = regularize(a, reg_eps)
  root = jnp.sqrt(fro)

  def on_ray(beta):
    # The best multiple t * beta: t^2 beta^T A beta = K, where the potential
    # is K / 2 - sum(log(t beta)).
    return beta * jnp.sqrt(k / jnp.maximum(beta @ a @ beta, tiny))

  beta = on_ray(1.0 / jnp.sqrt(jnp.diag(a)))
  if alpha0 is not None:
    warm = jnp.asarray(alpha0, dtype) * root
    ok = jnp.all(warm > 0) & jnp.all(jnp.isfinite(warm))
    warm = on_ray(jnp.where(ok, warm, beta))
    better = jnp.sum(jnp.log(warm)) > jnp.sum(jnp.log(beta))
    beta = jnp.where(better, warm, beta)

  def body(_, beta):
    grad = a @ beta - 1.0 / beta
    hess = a + jnp.diag(1.0 / beta**2)
    d = -jnp.linalg.solve(hess, grad)
    dec = jnp.sqrt(jnp.maximum(-jnp.dot(grad, d), 0.0))
    step = jnp.where(dec < 0.25, 1.0, 1.0 / (1.0 + dec))
    new = beta + step * d
    new = jnp.where(jnp.isfinite(new), new, beta)
    return jnp.maximum(new, 1e-3 * beta)  # Positivity despite rounding.

  beta = jax.lax.fori_loop(0, num_iters, body, beta)
  return beta / root

"""FairGrad: task weights from alpha-fair resource allocation.

Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024
(arXiv:2402.15638).  Treating each task's improvement ``g_i^T d`` as a
utility, the alpha-fair update ``d = J^T w`` has weights ``w > 0`` with

  G w = w^(-1/alpha)      (elementwise; G = J J^T),

their Equation 4 (alpha = 1 is proportional fairness, the Nash bargaining
solution of Nash-MTL; alpha -> infinity approaches max-min fairness, and
alpha = 0 is linear scalarisation, the mean gradient).  The official code,
LibMTL and torchjd solve the equation with SciPy's ``least_squares`` on the
host, from ``w = 1/K``, within its default evaluation budget.

Here `fairgrad_weights` solves it inside the jitted step: ``G w = w^(-1/a)``
is the stationarity condition of the strictly convex potential

  f(w) = 1/2 w^T G w + sum_i h(w_i),   h'(x) = -x^(-1/a)

(``h = -log`` for a = 1, ``h(x) = -x^p / p`` with ``p = 1 - 1/a`` otherwise),
minimised by Newton steps whose length is chosen by the exact change of f.
Differences from the reference: (1) the solution is exact up to the linear
algebra instead of ``least_squares``' tolerances and budget; (2) a ridge
``reg_eps`` on the trace-normalised Gramian (1e-10 in float64, 1e-5 in
float32, whose rounding would swamp a smaller one) keeps the weights finite
where no
solution exists (a zero row: its weight grows like ``reg_eps^(-a/(a+1))``
but multiplies a zero gradient; zero in the convex hull of the gradients, e.g.
two opposite gradients: the update tends to FairGrad on the components
orthogonal to the conflicting directions, where ``least_squares`` stops
wherever its budget ends).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode
from mtrec_jax.weighting.solvers import normalize_gram, regularize

# Newton step lengths 2^j tried at every iteration: shorter steps for
# safety far from the solution, longer ones to let weights of (nearly) null
# directions grow quickly (they double per full step).
_STEPS = tuple(range(-8, 7))


def _h_change(x: jax.Array, d: jax.Array, alpha: float) -> jax.Array:
  """``h(x + d) - h(x)`` elementwise, without cancellation."""
  r = jnp.log1p(d / x)
  if alpha == 1.0:
    return -r
  p = 1.0 - 1.0 / alpha
  return -(x ** p / p) * jnp.expm1(p * r)


def default_reg_eps(dtype) -> float:
  """The default ridge: 1e-10 in float64, 1e-5 in float32 and narrower.

  Where no exact solution exists the weights of the conflicting directions
  grow like ``reg_eps^(-alpha/(alpha+1))`` until the ridge balances them; the
  ridge must stay above the rounding of ``A w`` (about ``K eps``) for that
  balance to be computable, so float32 needs a larger one.
  """
  return 1e-10 if jnp.finfo(dtype).eps < 1e-10 else 1e-5


def fairgrad_weights(gram: jax.Array, alpha: float, *,
                     reg_eps: Optional[float] = None,
                     num_iters: int = 30) -> jax.Array:
  """The FairGrad weights ``w > 0`` with ``G w = w^(-1/alpha)``.

  Solved on ``A = G / trace(G) + reg_eps I`` (the solution for ``G`` is the
  one for ``A`` times ``trace(G)^(-alpha / (alpha + 1))``), by Newton on the
  convex potential of the module docstring, from the diagonal solution
  ``A_ii^(-alpha/(alpha+1))`` rescaled to the best multiple along its ray.
  Each step tries the lengths ``2^j`` (j in -8..6) along the Newton
  direction, and stays put if none lowers the potential (the change is
  computed without cancellation, so the iterates settle at rounding level).
  From there, 30 steps reached rounding level on random problems with K <= 8
  and row norms spread over 1e-3..1e2, and on the degenerate cases of
  `tests/weighting/hard_jacobians.py`.

  Args:
    gram: [K, K] Gramian.
    alpha: the fairness parameter, > 0.
    reg_eps: ridge added to the trace-normalised Gramian (default
      `default_reg_eps` of the Gramian's dtype).
    num_iters: fixed number of Newton steps.

  Returns:
    [K] positive weights for the un-normalised Gramian.
  """
  gram = gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
  dtype = gram.dtype
  k = gram.shape[-1]
  a, scale = normalize_gram(gram)
  if reg_eps is None:
    reg_eps = default_reg_eps(dtype)
  a = regularize(a, reg_eps)
  expo = -1.0 / alpha
  p = 1.0 - 1.0 / alpha
  steps = 2.0 ** jnp.asarray(_STEPS, dtype)

  def change(x, d):
    ax = a @ x
    out = jnp.dot(d, ax) + 0.5 * jnp.dot(d, a @ d) + jnp.sum(
        _h_change(x, d, alpha))
    ok = jnp.all(x + d > 0) & jnp.isfinite(out)
    return jnp.where(ok, out, jnp.inf)

  # Start: the diagonal solution, then the best multiple t x along its ray,
  # where d f(t x) / dt = 0: t^(1 + 1/a) = sum(x^p) / x^T A x.
  x = jnp.diag(a) ** (-alpha / (alpha + 1.0))
  t = (jnp.sum(x ** p) / (x @ a @ x)) ** (alpha / (alpha + 1.0))
  x = x * t

  def body(_, x):
    grad = a @ x - x ** expo
    hess = a + jnp.diag(x ** (expo - 1.0) / alpha)
    d = -jnp.linalg.solve(hess, grad)
    d = jnp.where(jnp.isfinite(d), d, 0.0)
    cands = steps[:, None] * d[None, :]
    deltas = jax.vmap(lambda c: change(x, c))(cands)
    best = jnp.argmin(deltas)
    return jnp.where(deltas[best] < 0, x + cands[best], x)

  x = jax.lax.fori_loop(0, num_iters, body, x)
  return x * scale ** (-alpha / (alpha + 1.0))


@STRATEGIES.register("fairgrad")
def fairgrad(alpha: float = 1.0, reg_eps: Optional[float] = None,
             num_iters: int = 30,
             mode: Optional[str] = None) -> Strategy:
  """FairGrad (Ban & Ji, ICML 2024): weights ``w`` with ``G w = w^(-1/alpha)``.

  Defaults: torchjd's ``FairGrad`` has no default ``alpha`` (it must be
  given); ``alpha = 1.0`` is LibMTL's ``FairGrad_alpha`` default (the paper
  tunes alpha per benchmark; 1.0 gives the Nash-MTL weights without
  Nash-MTL's clipping).  ``alpha = 0`` gives the uniform weights ``1/K``, as
  torchjd.

  Scale: neither sum- nor mean-like, and no normalisation, as torchjd and
  LibMTL: ``w^T G w = sum_i w_i^(1 - 1/alpha)``; for ``alpha = 1`` the update
  has norm ``sqrt(K)`` whatever the gradients' scale, and scaling every
  gradient by ``c`` scales the update by ``c^((1 - alpha) / (1 + alpha))``.

  Args:
    alpha: fairness parameter, >= 0.
    reg_eps: ridge added to the trace-normalised Gramian (see the module
      docstring); None: 1e-10 in float64, 1e-5 in float32.
    num_iters: Newton steps of `fairgrad_weights`.
    mode: 'params' (default) or 'rep' (LibMTL does not support FairGrad in
      representation mode; here the Gramian is then the representation's).
  """
  name = "fairgrad"
  if not alpha >= 0:
    raise ValueError(f"strategy {name!r}: alpha must be >= 0 (0 is the mean "
                     f"gradient, 1 proportional fairness), got {alpha}")
  if reg_eps is not None and not reg_eps > 0:
    raise ValueError(f"strategy {name!r}: reg_eps must be > 0 (it bounds the "
                     f"weights when no exact solution exists), got {reg_eps}")
  if int(num_iters) != num_iters or num_iters < 1:
    raise ValueError(f"strategy {name!r}: num_iters must be a positive "
                     f"integer, got {num_iters}")
  alpha = float(alpha)
  mode = resolve_mode(name, mode, "params")

  def init(num_tasks: int):
    del num_tasks
    return ()

  def weigh(state, *, gramian, losses, step, key):
    del losses, step, key
    gram = jax.lax.stop_gradient(gramian)
    gram = gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
    k = gram.shape[0]
    if alpha == 0.0:
      return Weighting(jnp.full((k,), 1.0 / k, gram.dtype), state, {})
    w = fairgrad_weights(gram, alpha, reg_eps=reg_eps,
                         num_iters=int(num_iters))
    # Relative residual of G w = w^(-1/alpha), for monitoring.
    target = w ** (-1.0 / alpha)
    resid = jnp.max(jnp.abs(gram @ w - target) / target)
    return Weighting(w, state, {"fairgrad_residual": resid})

  return Strategy(name=name, kind="gramian", init=init, weigh=weigh,
                  default_mode=mode,
                  hparams={"alpha": alpha, "reg_eps": reg_eps,
                           "num_iters": int(num_iters), "mode": mode})

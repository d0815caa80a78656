"""SDMGrad: stochastic direction-oriented multi-objective gradient descent.

Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and
Provable Stochastic Algorithms", NeurIPS 2023 (arXiv:2305.18409).  The update
``J^T (w + lam w~) / (1 + lam)`` pulls the MGDA-like direction ``J^T w``
towards a preference direction ``J^T w~`` (the mean gradient by default),
with ``w`` from a few projected SGD steps (with momentum) on
``1/2 ||J^T (w + lam w~)||^2`` over the simplex.  The stochastic algorithm
(SDMGrad, the paper's Algorithm 1) estimates the Gramian from two
independent samples xi, xi' (``J_xi J_xi'^T``) for the ``w`` steps and
combines the gradients of a third sample zeta.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode
from mtrec_jax.weighting.sampling import (DoubleSampledStrategy,
                                         check_flag)
from mtrec_jax.weighting.solvers import project_simplex


def sdmgrad_step(gram: jax.Array, w: jax.Array, pref: jax.Array, *, lr: float,
                 momentum: float, n_iter: int, lambda_: float
                 ) -> tuple[jax.Array, jax.Array]:
  """One SDMGrad call: ``(applied weights, new inner weights w)``.

  ``gram`` may be a cross matrix ``J_1 J_2^T`` (not symmetric; its diagonal
  can be negative, hence the clamp).  The matrix is divided by
  ``mean_i sqrt(max(G_ii, 0))^2 + 1e-8`` (LibMTL and torchjd; the official
  code divides by ``mean_i sqrt(G_ii + 1e-4)^2``), then ``n_iter`` steps of
  ``v <- momentum v + A (w + lambda_ pref)`` (``v`` starts at the first
  gradient, as torch's SGD), ``w <- proj_simplex(w - lr v)``.
  """
  diag = jnp.maximum(jnp.diag(gram), 0.0)
  scale = jnp.mean(jnp.sqrt(diag))
  a = gram / (scale ** 2 + 1e-8)
  target = a @ pref

  def body(i, carry):
    w, v = carry
    grad = a @ w + lambda_ * target
    v = jnp.where(i == 0, grad, momentum * v + grad)
    return project_simplex(w - lr * v), v

  w, _ = jax.lax.fori_loop(0, n_iter, body, (w, jnp.zeros_like(w)))
  return (w + lambda_ * pref) / (1.0 + lambda_), w


@STRATEGIES.register("sdmgrad")
def sdmgrad(lambda_: float = 0.3, lr: float = 10.0, momentum: float = 0.5,
            n_iter: int = 20, pref_vector: Optional[Sequence[float]] = None,
            mode: Optional[str] = None,
            independent_batches: bool = True) -> Strategy:
  """SDMGrad (Xiao et al., NeurIPS 2023).

  The inner weights ``w`` live in the strategy state (warm-started from the
  previous step, as in the references).

  Batches (`independent_batches=True`, the default): in the train step
  (params mode) the ``w`` steps use the cross Gramian ``J_xi J_xi'^T`` of
  two extra training batches, and the weights combine the Jacobian of the
  step's own batch (the paper's zeta); see `mtrec_jax.weighting.sampling`.
  As in the official code (zeta from the training loader, xi and xi' from a
  second, independently shuffled loader), zeta is the run's usual training
  batch and xi, xi' come from a second shuffle of the training split, here
  two consecutive batches of it per step (the loop feeds them as
  ``sample1:*`` / ``sample2:*``; the official code takes the first batch of
  a fresh iterator each time).  LibMTL's trainer instead draws the three as
  consecutive batches of its one loader.  (The official nyuv2 code's
  ``[torch.Tensor(...)] * 3`` makes its three gradient buffers one tensor,
  so there all three end up holding xi' -- we follow the paper and LibMTL.)
  Cost: two more forward passes and 2K backward passes per step (one pass,
  vmapped over the two batches).  Task-specific parameters (the towers) get
  their own task's gradient on zeta (the official code and LibMTL add the
  towers' gradients of all three batches).  `independent_batches=False`
  (and rep mode, where the per-example representation rows of two batches
  share no coordinates, and ``aggregate`` / ``as_optax``) uses the Gramian
  ``J J^T`` of the one batch given; ``aggregate`` acts once from the fresh
  state ``w = 1/K``.  The census rows stored before double sampling existed
  ran with one batch.

  Defaults match torchjd 0.18 (``SDMGradWeighting``): ``lambda_ = 0.3``
  (LibMTL's ``SDMGrad_lamda``; the official class default is 0.6, its
  experiments use 0.3), ``n_iter = 20`` (LibMTL's ``SDMGrad_niter``),
  ``momentum = 0.5``, ``lr = 10`` (LibMTL hard-codes ``lr = 5``) and the
  preference ``w~ = 1/K`` (the mean gradient).

  Scale: mean-like (``(w + lambda_ w~) / (1 + lambda_)`` is on the simplex
  for the default preference).

  Args:
    lambda_: pull towards the preference direction, >= 0.
    lr: step size of the inner SGD, > 0.
    momentum: momentum of the inner SGD, in [0, 1).
    n_iter: inner SGD steps per call, >= 1.
    pref_vector: [K] preference ``w~`` (default 1/K each).
    mode: 'params' (default) or 'rep' (LibMTL does not support SDMGrad in
      representation mode; here the Gramian is then the representation's,
      of the one batch).
    independent_batches: the paper's independent samples in training (see
      above); False: the one batch's Gramian.
  """
  name = "sdmgrad"
  check_flag(name, "independent_batches", independent_batches)
  if not lambda_ >= 0:
    raise ValueError(f"strategy {name!r}: lambda_ must be >= 0, got "
                     f"{lambda_}")
  if not lr > 0:
    raise ValueError(f"strategy {name!r}: lr must be > 0, got {lr}")
  if not 0 <= momentum < 1:
    raise ValueError(f"strategy {name!r}: momentum must be in [0, 1), got "
                     f"{momentum}")
  if int(n_iter) != n_iter or n_iter < 1:
    raise ValueError(f"strategy {name!r}: n_iter must be a positive integer, "
                     f"got {n_iter}")
  pref = None if pref_vector is None else tuple(float(x) for x in pref_vector)
  mode = resolve_mode(name, mode, "params")

  def check(k: int):
    if pref is not None and len(pref) != k:
      raise ValueError(f"strategy {name!r}: {len(pref)} preference weights "
                       f"given for {k} tasks; give one per task")

  def init(num_tasks: int):
    check(num_tasks)
    return {"w": jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)}

  def weigh(state, *, gramian, losses, step, key):
    del losses, step, key
    gram = jax.lax.stop_gradient(gramian)
    gram = gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
    k = gram.shape[0]
    check(k)
    u = (jnp.full((k,), 1.0 / k, gram.dtype) if pref is None
         else jnp.asarray(pref, gram.dtype))
    weights, w = sdmgrad_step(gram, state["w"].astype(gram.dtype), u, lr=lr,
                              momentum=momentum, n_iter=int(n_iter),
                              lambda_=lambda_)
    return Weighting(weights, {"w": w.astype(state["w"].dtype)}, {})

  cls = DoubleSampledStrategy if independent_batches else Strategy
  return cls(name=name, kind="gramian", init=init, weigh=weigh,
             default_mode=mode,
             hparams={"lambda_": lambda_, "lr": lr, "momentum": momentum,
                      "n_iter": int(n_iter),
                      "pref_vector": None if pref is None else list(pref),
                      "mode": mode,
                      "independent_batches": bool(independent_batches)})

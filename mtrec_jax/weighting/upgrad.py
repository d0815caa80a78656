"""UPGrad and DualProj: projections onto the dual cone of the task gradients.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024
(arXiv:2406.16232), and their library torchjd.  The dual cone of the rows of
J is ``{x : J x >= 0}``, the directions that do not increase any task loss to
first order.  By their Proposition 1, the projection of ``J^T u`` onto it is
``J^T v`` with ``v = argmin_{v >= u} v^T G v``, a K-dimensional QP on the
Gramian only (`solvers.dual_cone_weights`).

Both strategies reproduce torchjd's conventions: the Gramian is divided by its
trace (torchjd's ``normalize``; when the trace is below ``norm_eps`` the
Gramian is treated as zero, so the weights are the preference vector) and
``reg_eps * I`` is added (torchjd's ``regularize``) before solving.  torchjd
solves the QP with quadprog on the host; here a fixed-iteration projected
Newton method runs inside the jitted step.

NOTE: ``norm_eps`` is an absolute threshold on ``trace(G) = ||J||_F^2``: with
the default 1e-4, gradients whose total squared norm falls below 1e-4 (small
gradients late in training, or in 'rep' mode) get the plain ``J^T u`` update
with no projection, exactly as torchjd.  Pass ``norm_eps=0`` to always
project.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode
from mtrec_jax.weighting.solvers import dual_cone_weights, regularize


def _torchjd_gramian(gram: jax.Array, norm_eps: float, reg_eps: float
                     ) -> jax.Array:
  """torchjd's ``regularize(normalize(G, norm_eps), reg_eps)``."""
  gram = gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
  trace = jnp.trace(gram)
  small = ~(trace >= norm_eps)  # also catches a NaN trace.
  gram = jnp.where(small, jnp.zeros_like(gram),
                   gram / jnp.where(small, 1.0, trace))
  return regularize(gram, reg_eps)


def _pref(pref_vector: Optional[Sequence[float]], k: int, dtype) -> jax.Array:
  if pref_vector is None:
    return jnp.full((k,), 1.0 / k, dtype)
  u = jnp.asarray(pref_vector, dtype)
  if u.shape != (k,):
    raise ValueError(f"pref_vector has {u.size} entries for {k} tasks; give "
                     f"one per task (in the experiment's task order)")
  return u


def _check(name: str, norm_eps: float, reg_eps: float) -> None:
  if reg_eps <= 0:
    raise ValueError(f"strategy {name!r}: reg_eps must be > 0 (it makes the "
                     f"Gramian positive definite), got {reg_eps}")
  if norm_eps < 0:
    raise ValueError(f"strategy {name!r}: norm_eps must be >= 0, got "
                     f"{norm_eps}")


def _dual_cone_strategy(name: str, pref_vector, norm_eps: float,
                        reg_eps: float, num_iters, mode,
                        weights_fn) -> Strategy:
  """The shared shell of UPGrad and DualProj: torchjd's Gramian
  normalisation, the preference vector, and `weights_fn(gram, u)`."""
  _check(name, norm_eps, reg_eps)
  mode = resolve_mode(name, mode, "params")

  def init(num_tasks: int):
    _pref(pref_vector, num_tasks, jnp.float32)
    return ()

  def weigh(state, *, gramian, losses, step, key):
    del losses, step, key
    gram = _torchjd_gramian(gramian, norm_eps, reg_eps)
    u = _pref(pref_vector, gram.shape[0], gram.dtype)
    return Weighting(weights_fn(gram, u), state, {})

  return Strategy(
      name=name, kind="gramian", init=init, weigh=weigh, default_mode=mode,
      hparams={"pref_vector": None if pref_vector is None else list(
          pref_vector), "norm_eps": norm_eps, "reg_eps": reg_eps,
               "num_iters": num_iters, "mode": mode})


@STRATEGIES.register("upgrad")
def upgrad(pref_vector: Optional[Sequence[float]] = None,
           norm_eps: float = 1e-4, reg_eps: float = 1e-4,
           num_iters: Optional[int] = None,
           mode: Optional[str] = None) -> Strategy:
  """UPGrad (Quinton & Rey, 2024): the weighted sum of every task gradient's
  projection onto the dual cone of all task gradients.

  ``update = sum_i u_i pi_J(g_i)`` with ``pi_J`` the projection onto
  ``{x : J x >= 0}``; as weights, ``w = sum_i v_i`` with
  ``v_i = argmin_{v >= u_i e_i} v^T G v``.  The update does not conflict
  with any task: ``(J update)_k >= -reg_eps trace(G) w_k`` (zero without the
  ridge, which relaxes the constraints of tasks whose squared gradient norm is
  below about ``reg_eps trace(G)``, as in torchjd), and it equals ``J^T u``
  when no two gradients conflict.

  Defaults match torchjd (``UPGrad()``): ``pref_vector`` = 1/K each,
  ``norm_eps = reg_eps = 1e-4``.  Scale: mean-like (with the default
  preference, the mean of the projected gradients; the plain mean when no
  gradients conflict).

  Args:
    pref_vector: [K] weights ``u`` combining the projected gradients
      (default 1/K each).
    norm_eps: Gramians with a trace below this are treated as zero (then the
      update is ``J^T u``), as in torchjd.
    reg_eps: ridge added to the trace-normalised Gramian.
    num_iters: solver iterations (default ``2 K + 10``).
    mode: 'params' (default) or 'rep'.
  """
  return _dual_cone_strategy(
      "upgrad", pref_vector, norm_eps, reg_eps, num_iters, mode,
      # Project every row u_k e_k, then sum the projections' weights.
      lambda gram, u: jnp.sum(dual_cone_weights(gram, jnp.diag(u),
                                                num_iters=num_iters), axis=0))


@STRATEGIES.register("dualproj")
def dualproj(pref_vector: Optional[Sequence[float]] = None,
             norm_eps: float = 1e-4, reg_eps: float = 1e-4,
             num_iters: Optional[int] = None,
             mode: Optional[str] = None) -> Strategy:
  """DualProj (Quinton & Rey, 2024; the projection of GEM, Lopez-Paz &
  Ranzato, 2017): the projection of ``J^T u`` onto the dual cone of the task
  gradients.

  Weights ``v = argmin_{v >= u} v^T G v``.  The update does not conflict
  with any task: ``(J update)_k >= -reg_eps trace(G) v_k`` (zero without the
  ridge; see `upgrad`).

  Defaults match torchjd (``DualProj()``): ``pref_vector`` = 1/K each (the
  mean gradient is projected), ``norm_eps = reg_eps = 1e-4``.  Scale:
  mean-like (the projected mean gradient).

  Args:
    pref_vector: [K] weights ``u`` of the vector to project (default 1/K).
    norm_eps: Gramians with a trace below this are treated as zero (then the
      update is ``J^T u``), as in torchjd.
    reg_eps: ridge added to the trace-normalised Gramian.
    num_iters: solver iterations (default ``2 K + 10``).
    mode: 'params' (default) or 'rep'.
  """
  return _dual_cone_strategy(
      "dualproj", pref_vector, norm_eps, reg_eps, num_iters, mode,
      lambda gram, u: dual_cone_weights(gram, u, num_iters=num_iters))

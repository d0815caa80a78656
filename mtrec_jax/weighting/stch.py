"""STCH: smooth Tchebycheff scalarisation of the task losses.

Xi Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective
Optimization", ICML 2024.  The
Tchebycheff scalarisation ``max_k (L_k - z_k)`` is smoothed by a
log-sum-exp of temperature ``mu``; for multi-task learning the official code
and LibMTL apply it to the log losses relative to a nadir vector ``z``
averaged over one epoch after a warm-up on ``sum_k log L_k``:

  warm-up:   sum_k log(L_k + 1e-20),
  then:      K mu log sum_k exp(log(L_k / z_k + 1e-20) / mu).

As a "loss" strategy this is the weight vector ``d(scalarised) / d L`` (the
train step back-propagates ``sum_k w_k L_k``, whose gradient is the same).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode

_EPS = 1e-20  # LibMTL's guard inside the logs.


def stch_weights(losses: jax.Array, nadir: Optional[jax.Array],
                 mu: float) -> jax.Array:
  """The gradient of LibMTL's STCH loss w.r.t. the losses.

  Without a nadir vector (warm-up): ``1 / (L_k + 1e-20)``.  With it:
  ``K softmax_k(l / mu) / (L_k + 1e-20 z_k)`` with
  ``l_k = log(L_k / z_k + 1e-20)``.
  """
  k = losses.shape[0]
  if nadir is None:
    return 1.0 / (losses + _EPS)
  logs = jnp.log(losses / nadir + _EPS)
  return k * jax.nn.softmax(logs / mu) / (losses + _EPS * nadir)


@STRATEGIES.register("stch")
def stch(mu: float = 1.0, warmup_epochs: int = 4, steps_per_epoch: int = 1,
         mode: Optional[str] = None) -> Strategy:
  """Smooth Tchebycheff scalarisation (Lin et al., ICML 2024), as LibMTL.

  Schedule, counted in this strategy's own calls (kept in its state):
  calls ``0 .. W - 1`` with ``W = warmup_epochs * steps_per_epoch`` use the
  log-loss weights; the next ``steps_per_epoch`` calls use them too and
  average the losses into the nadir vector ``z`` (LibMTL's epoch number
  ``warmup_epoch``); every later call uses the smooth Tchebycheff weights
  (see `stch_weights`).  LibMTL counts epochs; the strategy does not know the
  epoch length, so ``steps_per_epoch`` maps epochs to steps: set it to the
  loader's steps per epoch to reproduce LibMTL (the default 1 makes the
  warm-up 4 steps and the nadir one step's losses).

  Defaults match LibMTL (``STCH_mu = 1.0``, ``STCH_warmup_epoch = 4``);
  torchjd has no STCH.  The losses must be positive (they enter logs); a
  zero nadir entry is replaced by 1e-20 (LibMTL would divide by zero).

  Scale: neither sum- nor mean-like: warm-up weights ``1 / L_k``, then
  ``K softmax / L``-shaped weights (the gradient of LibMTL's loss, which
  multiplies the log-sum-exp by K).

  Args:
    mu: smoothing temperature, > 0 (small: close to the max of the log loss
      ratios; large: close to their mean).
    warmup_epochs: LibMTL's ``STCH_warmup_epoch``, >= 0.
    steps_per_epoch: steps per epoch, >= 1 (the nadir averaging window).
    mode: accepted for interface uniformity; ignored (loss strategy).
  """
  name = "stch"
  if not mu > 0:
    raise ValueError(f"strategy {name!r}: mu must be > 0, got {mu}")
  for key, value, low in (("warmup_epochs", warmup_epochs, 0),
                          ("steps_per_epoch", steps_per_epoch, 1)):
    if int(value) != value or value < low:
      raise ValueError(f"strategy {name!r}: {key} must be an integer >= "
                       f"{low}, got {value}")
  warmup = int(warmup_epochs) * int(steps_per_epoch)
  window = int(steps_per_epoch)

  def init(num_tasks: int):
    return {"sum": jnp.zeros((num_tasks,), jnp.float32),
            "nadir": jnp.ones((num_tasks,), jnp.float32),
            "calls": jnp.zeros((), jnp.int32)}

  def weigh(state, *, losses, step, key):
    del step, key
    losses = jax.lax.stop_gradient(losses)
    losses = losses.astype(jnp.promote_types(losses.dtype, jnp.float32))
    calls = state["calls"]
    accumulating = (calls >= warmup) & (calls < warmup + window)
    total = state["sum"] + jnp.where(accumulating, losses, 0.0).astype(
        state["sum"].dtype)
    # The nadir vector is fixed by the last accumulating call.
    done = calls == warmup + window - 1
    nadir = jnp.where(done, total / window, state["nadir"])
    nadir = jnp.maximum(nadir, _EPS).astype(state["nadir"].dtype)
    active = calls >= warmup + window
    w = jnp.where(active,
                  stch_weights(losses, nadir.astype(losses.dtype), mu),
                  stch_weights(losses, None, mu))
    new_state = {"sum": total, "nadir": nadir,
                 "calls": jnp.minimum(calls + 1, warmup + window)}
    return Weighting(w, new_state, {"stch_active": active.astype(jnp.int32)})

  return Strategy(name=name, kind="loss", init=init, weigh=weigh,
                  default_mode=resolve_mode(name, mode, "params"),
                  hparams={"mu": mu, "warmup_epochs": int(warmup_epochs),
                           "steps_per_epoch": window, "mode": mode})

"""Static loss weightings: `static` (given weights), `mean` and `sum`."""
from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting


def _fixed(name: str, weights_for_k, hparams: dict) -> Strategy:
  def init(num_tasks: int):
    w = jnp.asarray(weights_for_k(num_tasks), jnp.float32)
    if w.shape != (num_tasks,):
      raise ValueError(f"strategy {name!r}: {w.shape[0] if w.ndim else 0} "
                       f"weights given for {num_tasks} tasks; give one per task "
                       f"(in the experiment's task order)")
    return {"weights": w}

  def weigh(state, *, losses, step, key):
    del losses, step, key
    return Weighting(state["weights"], state, {})

  return Strategy(name=name, kind="loss", init=init, weigh=weigh,
                  hparams=hparams)


@STRATEGIES.register("static")
def static(weights: Optional[Sequence[float]] = None) -> Strategy:
  """Fixed, user-given task weights: L = sum_k w_k L_k (sum-like scale).

  Without `weights`, every weight is 1 (the plain sum of task losses).
  """
  def weights_for_k(k):
    return [1.0] * k if weights is None else list(weights)
  return _fixed("static", weights_for_k,
                {"weights": None if weights is None else list(weights)})


@STRATEGIES.register("sum")
def sum_() -> Strategy:
  """Equal weights of 1: L = sum_k L_k (sum-like scale)."""
  return _fixed("sum", lambda k: [1.0] * k, {})


@STRATEGIES.register("mean")
def mean() -> Strategy:
  """Equal weights of 1/K: L = (1/K) sum_k L_k (mean-like scale; LibMTL's EW
  uses weights of 1, i.e. K times this update)."""
  return _fixed("mean", lambda k: [1.0 / k] * k, {})

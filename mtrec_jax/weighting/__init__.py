"""Task-weighting strategies: registry, optax wrapper and the pure aggregator.

Every module in this package registers its strategies in
`mtrec_jax.registry.STRATEGIES`; importing the package imports them all.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mtrec_jax import _autoimport
from mtrec_jax import config as config_lib
from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import (OptaxStrategyState, Strategy, Weighting,
                                      apply_strategy, as_optax, combine_tree,
                                      cosines, gramian, gramian_of_tree,
                                      row_template, tree_size)

_autoimport.import_submodules(__name__, __path__)


def build(name: str, **hparams) -> Strategy:
  """Builds the strategy registered as `name` with the given hyper-parameters."""
  return STRATEGIES.get(name)(**hparams)


_AGGREGATORS: dict = {}  # (name, frozen hparams) -> jitted aggregator


def _jitted_aggregate(name: str, hparams: dict):
  """One jitted aggregator per (strategy, hyper-parameters), so repeated
  `aggregate` calls on same-shaped inputs compile once."""
  try:
    cache_key = (name, config_lib.freeze(hparams))
    hash(cache_key)
  except TypeError:  # unhashable hyper-parameters: build without caching
    cache_key = None
  if cache_key is not None and cache_key in _AGGREGATORS:
    return _AGGREGATORS[cache_key]
  strategy = build(name, **hparams)

  def run(jacobian, losses, key):
    state = strategy.init_state(jacobian.shape[0], row=jacobian.shape[1])
    update, _ = apply_strategy(strategy, state,
                               losses=losses, stacked_grads=jacobian, step=0,
                               key=key)
    return update
  fn = jax.jit(run)
  if cache_key is not None:
    _AGGREGATORS[cache_key] = fn
  return fn


def aggregate(name: str, jacobian: jax.Array, *, key=None, losses=None,
              **hparams) -> jax.Array:
  """Maps a [K, P] Jacobian to the combined [P] update of strategy `name`.

  Stateful strategies start from a fresh state; `losses` defaults to ones.
  Strategies with a random task order use `key`, or the fixed order 0..K-1
  when `key` is None.  Compiled once per strategy, hyper-parameters and shape.
  """
  jacobian = jnp.asarray(jacobian)
  if jacobian.ndim != 2:
    raise ValueError(f"aggregate: jacobian must be [K, P], got {jacobian.shape}")
  k = jacobian.shape[0]
  losses = jnp.ones((k,), jacobian.dtype) if losses is None else jnp.asarray(losses)
  return _jitted_aggregate(name, hparams)(jacobian, losses, key)


__all__ = ["Strategy", "Weighting", "OptaxStrategyState", "STRATEGIES",
           "aggregate", "apply_strategy", "as_optax", "build", "combine_tree",
           "cosines", "gramian", "gramian_of_tree", "row_template", "tree_size"]

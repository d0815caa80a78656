"""The train state: one pytree, so it is jitted, checkpointed and sharded whole."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: updates applied so far
  params: Any                # {'shared': ..., 'towers': {task: ...}}
  opt_state: Any             # the optax optimizer's state
  strategy_state: Any        # the weighting strategy's state
  rng: jax.Array             # base PRNG key; step keys are folded in from it
  diverged_step: jax.Array   # int32: first step with a non-finite loss, -1 if none


def create(params, optimizer, strategy, num_tasks: int, rng,
           strategy_row=None) -> TrainState:
  """`strategy_row`: one Jacobian row's shape, for strategies with
  per-parameter state (`Strategy.row_state`); None means params mode's
  rows, ``params['shared']``.  Rep mode passes one example's flattened
  representation size (see `loop.strategy_row`)."""
  if strategy_row is None and strategy.row_state:
    strategy_row = params["shared"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    strategy_state=strategy.init_state(num_tasks, strategy_row),
                    rng=rng,
                    diverged_step=jnp.full((), -1, jnp.int32))

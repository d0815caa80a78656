"""The named vmap axis of population training, for code that skips work.

Why: `train/population.py` trains the members of a population (the seeds
of a grid point) as one program, vmapped over this axis.  Under `vmap`, a
`lax.cond` or `lax.switch` whose predicate or index differs per member
becomes a `select` over every branch's result: the work a branch exists
to skip is done for every member.  Code that skips work that way (the
fused softmax's padding chunks, `tasks.catalogue_softmax`; the real-row
attention's buckets, `models.causal_attention`) takes one decision for
the whole population instead, `population_max` of its per-member
decisions, which is unbatched, so the cond stays a cond.  That decision
must be one every member can take without changing its result (e.g. "do
the work if any member needs it" where the work is exact either way).

Here, not in `train/`, so that the task and model code can read it
without importing the trainer (tests/test_layering.py).
"""
from __future__ import annotations

import jax

POPULATION_AXIS = "population_members"


def population_max(x: jax.Array) -> jax.Array:
  """`x`'s maximum over the population's members when inside its vmap
  (unbatched there), else `x` itself: a solo run, or a vmap of another
  name."""
  try:
    return jax.lax.pmax(x, POPULATION_AXIS)
  except NameError:  # the population's axis is not bound
    return x

"""The id hashing of hashed features (`FeatureSpec.hash_buckets`).

The feature declarations themselves (`FeatureSpec`, `validate_features`,
`table_owner`) live in `mtrec_jax.specs`, shared with the data side; they are
re-exported here for code that imported them from this module.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtrec_jax.specs import KINDS, FeatureSpec, table_owner, validate_features

__all__ = ["KINDS", "FeatureSpec", "hash_ids", "table_owner",
           "validate_features"]


def hash_ids(ids, num_buckets: int) -> jax.Array:
  """Maps integer ids to buckets 1..num_buckets-1, keeping 0 as padding.

  A fixed integer mixer (no salt), so the mapping is the same on every host
  and run; works on numpy or jax int arrays and inside jit.
  """
  ids = jnp.asarray(ids)
  x = ids.astype(jnp.uint32)
  mult = np.uint32(0x45D9F3B)
  x = (x ^ (x >> 16)) * mult
  x = (x ^ (x >> 16)) * mult
  x = x ^ (x >> 16)
  buckets = (x % np.uint32(num_buckets - 1)).astype(jnp.int32) + 1
  return jnp.where(ids == 0, 0, buckets)

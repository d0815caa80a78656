"""Matrix factorisation as a connection module: the classic rating baseline.

`biased_mf` (Koren, Bell & Volinsky, IEEE Computer 2009): the rating of
user u for item i is mu + b_u + b_i + p_u . q_i.  Here the model reads two
embeddings of equal width E + 1 (a user feature and an item feature, e.g.
`model.features = ('user', 'cand_item')`): their first E coordinates are the
factors p_u, q_i and their last one the biases b_u, b_i, so the connection
outputs s = p_u . q_i + b_u + b_i as a [K, B, 1] representation.  With
`tower_hidden = ()` each task's tower is the linear map w s + mu, which is
biased MF exactly (with a learned scale w, 1 at the optimum up to the
factors' scale).  It trains in the same harness as every other model: same
data pipeline, optimizer (weight decay = the usual L2 penalty), selection
and metrics.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from mtrec_jax.models.sharing import Connection
from mtrec_jax.registry import MODELS


@MODELS.register("biased_mf")
class BiasedMF(Connection):
  """s = p_u . q_i + b_u + b_i from the user and item embeddings [p|b]."""

  @property
  def output_dim(self) -> int:
    return 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    width = x.shape[-1]
    if width % 2 or width < 4:
      raise ValueError(
          f"biased_mf reads two embeddings of equal width E + 1 >= 2 (user, "
          f"item) and nothing else, got an input of width {width}; set "
          f"model.features to the user and item features")
    user, item = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    score = (jnp.sum(user[:, :-1] * item[:, :-1], axis=-1)
             + user[:, -1] + item[:, -1])
    return jnp.stack([score[:, None]] * self.num_tasks).astype(self.dtype)

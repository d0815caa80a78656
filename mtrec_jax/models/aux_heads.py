"""The Flax heads of the auxiliary tasks (`mtrec_jax.tasks.auxiliary`).

Each auxiliary task names its private head with a `tasks.auxiliary.HeadSpec`
(a name registered here and the constructor's arguments); `AuxHeads` builds
them inside the model, one per task name, so their parameters sit at
``params['aux'][name]`` and get only that task's gradient.  The task logic
(targets, losses, scores) stays in `tasks/` and never imports Flax.

Heads:
  ``item_prediction``  `ItemPredictionHead`, BERT4Rec's output layer (mim,
                       next_all with head='mlp'),
  ``position_tower``   `PositionTower`, a task tower at every position
                       (rating_all, like_all, genre_all),
  ``kg_scorer``        `KGScorer`, MKR's tail prediction (kg).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtrec_jax.models.towers import MLP
from mtrec_jax.registry import Registry
from mtrec_jax.tasks.auxiliary import AuxTask, HeadSpec

Dtype = Any

AUX_HEADS: Registry = Registry("auxiliary head")


@AUX_HEADS.register("item_prediction")
class ItemPredictionHead(nn.Module):
  """BERT4Rec's output layer: Dense + GELU + LayerNorm to the embedding width,
  then scores against the (shared) item table plus a per-item bias.

  `items` None scores every row of `table` ([..., V]); an [S] vector scores
  those S items at every position ([..., S]); an array shaped like
  ``h[..., 0]`` scores one item per position ([...]), e.g. the targets.
  ``vectors=True`` returns what is scored instead: ([..., embed_dim] float32
  vectors, [num_items] bias), for a loss that does its own scoring
  (`tasks.catalogue_softmax`)."""
  embed_dim: int
  num_items: int

  @nn.compact
  def __call__(self, h: jax.Array, table: jax.Array,
               items: jax.Array | None = None, *, vectors: bool = False):
    x = nn.LayerNorm()(nn.gelu(nn.Dense(self.embed_dim)(h)))
    x = x.astype(jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.num_items,),
                      jnp.float32)
    if vectors:
      return x, bias
    if items is None:
      return x @ table.T + bias
    if items.ndim == 1:
      return x @ table[items].T + bias[items]
    return jnp.sum(x * table[items], axis=-1) + bias[items]


@AUX_HEADS.register("position_tower")
class PositionTower(nn.Module):
  """A task tower applied at every position: [B, L, D] (concatenated with the
  candidate item's embedding [B, L, E] when given) -> [B, L, out_dim]."""
  hidden: tuple[int, ...]
  out_dim: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, h: jax.Array, candidate: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    x = h if candidate is None else jnp.concatenate(
        [h, candidate.astype(h.dtype)], axis=-1)
    return MLP(self.hidden, self.out_dim, self.dropout_rate)(
        x, train=train).astype(jnp.float32)


@AUX_HEADS.register("kg_scorer")
class KGScorer(nn.Module):
  """(head vectors [B, D], relation ids [B]) -> entity logits [B, E].

  MKR's tail prediction: t_hat = MLP([h; r]) (ReLU hidden layers of widths
  `hidden`, then a linear map to `dim`), and every entity e is scored by
  t_hat . e (+ a per-entity bias).  The default hidden=() is a single layer,
  like MKR's released code for MovieLens (H = 1 high layer, dim 8).  That
  code also passes tail embeddings through an MLP and squashes t_hat with a
  sigmoid; on a free entity table the tail MLP adds no expressive power, and
  a linear t_hat lets the softmax of `kg_loss` rank freely.

  Parameters: `relation_embed` [R, dim], `entity_embed` [E, dim],
  `entity_bias` [E] (when use_bias), the Dense layers.  Head vectors are
  inputs (the caller's shared item embeddings; their width D may differ from
  `dim`).  Out-of-range relation ids look up NaN, so bad ids show.
  """
  num_relations: int
  num_entities: int
  dim: int
  hidden: tuple[int, ...] = ()
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.num_relations < 1 or self.num_entities < 1 or self.dim < 1:
      raise ValueError(f"KGScorer needs num_relations, num_entities and dim "
                       f">= 1, got {self.num_relations}, {self.num_entities}, "
                       f"{self.dim}")
    init = nn.initializers.normal(stddev=self.dim ** -0.5)
    self.relation_embed = self.param("relation_embed", init,
                                     (self.num_relations, self.dim),
                                     jnp.float32)
    self.entity_embed = self.param("entity_embed", init,
                                   (self.num_entities, self.dim), jnp.float32)
    if self.use_bias:
      self.entity_bias = self.param("entity_bias", nn.initializers.zeros,
                                    (self.num_entities,), jnp.float32)
    self.hidden_layers = [nn.Dense(width, dtype=self.dtype)
                          for width in self.hidden]
    self.tail = nn.Dense(self.dim, dtype=self.dtype)

  def predict_tail(self, heads, relation_ids) -> jax.Array:
    """t_hat [B, dim] for each (head, relation)."""
    heads = jnp.asarray(heads)
    relation_ids = jnp.asarray(relation_ids)
    if heads.ndim != 2 or relation_ids.shape != heads.shape[:1]:
      raise ValueError(f"KGScorer: heads must be [B, D] and relation_ids "
                       f"[B], got {heads.shape} and {relation_ids.shape}")
    relations = jnp.take(self.relation_embed, relation_ids.astype(jnp.int32),
                         axis=0, mode="fill", fill_value=jnp.nan)
    x = jnp.concatenate([heads.astype(self.dtype),
                         relations.astype(self.dtype)], axis=-1)
    for layer in self.hidden_layers:
      x = nn.relu(layer(x))
    return self.tail(x)

  def __call__(self, heads, relation_ids) -> jax.Array:
    t_hat = self.predict_tail(heads, relation_ids)
    logits = t_hat @ self.entity_embed.astype(self.dtype).T
    if self.use_bias:
      logits = logits + self.entity_bias.astype(self.dtype)
    return logits


def make_head(spec: HeadSpec | None, name: str) -> nn.Module | None:
  """The module `spec` names (None: the task has no private head)."""
  if spec is None:
    return None
  return AUX_HEADS.get(spec.kind)(**dict(spec.kwargs), name=name)


class AuxHeads(nn.Module):
  """The private modules of the auxiliary tasks, one per task name, so their
  parameters sit at ``params['aux'][name]``."""
  tasks: tuple[AuxTask, ...]

  @nn.compact
  def __call__(self, name: str, *args, **kwargs):
    task = next(t for t in self.tasks if t.name == name)
    return make_head(task.head_spec(), name)(*args, **kwargs)

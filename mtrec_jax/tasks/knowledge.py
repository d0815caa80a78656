"""An MKR-style knowledge-graph auxiliary task over item attributes.

MKR (Wang et al., "Multi-Task Feature Learning for Knowledge Graph Enhanced
Recommendation", WWW 2019) trains recommendation together with knowledge
graph embedding: the KG task takes an item as the head h of a triple
(h, r, t), predicts the tail vector t_hat = MLP([h; r]) and scores a tail t by
sigma(t . t_hat); sharing the item's representation between the two tasks is
what lets the graph help recommendation.  Here the graph is built from the
item attributes a dataset already has (MovieLens genres and release years),
and the shared head vectors come from the caller's item embeddings, so the
task plugs into any model that has an item table.

Pieces:

* `item_attribute_triples`: the graph as (item, relation, entity) triples,
  plus an [I, E] multi-hot of each item's entities for batched losses.
* the scorer, a Flax module mapping (head vector, relation id) to logits
  over every entity, is `mtrec_jax.models.aux_heads.KGScorer` (this module
  is the task logic and imports no Flax).
* `kg_loss`, `kg_metrics`: a per-relation softmax loss and hits@1.

Conventions: item ids follow the feature convention (row 0 of every per-item
table is the padding item, which has no triples); relation and entity ids are
numbered from 0.  Every entity belongs to exactly one relation (a genre is
only ever the tail of has_genre), so "the entities of relation r" is the set
{e : entity_relation[e] == r}.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

RELATIONS = ("has_genre", "released_in")
HAS_GENRE, RELEASED_IN = 0, 1


# ----------------------------------------------------------------------------
# The graph.


@dataclasses.dataclass(frozen=True, eq=False)
class KnowledgeGraph:
  """Item-attribute triples and the lookup tables the losses need.

  Arrays are read-only NumPy arrays (host data: gather `item_entities` rows
  for a batch of items and pass them to `kg_loss`).

  Attributes:
    triples: int32 [T, 3] rows (item id, relation id, entity id), sorted by
      item, then relation, then entity.
    relation_names: the R relation names, by relation id.
    entity_names: the E entity names, by entity id.
    entity_relation: int32 [E], the relation each entity is a tail of.
    item_entities: uint8 [I, E], 1 where (item, entity_relation[e], e) is a
      triple; row 0 (padding) is all zero.
  """
  triples: np.ndarray
  relation_names: tuple[str, ...]
  entity_names: tuple[str, ...]
  entity_relation: np.ndarray
  item_entities: np.ndarray

  @property
  def num_items(self) -> int:
    """Rows I of the per-item tables (item ids 0..I-1, 0 = padding)."""
    return int(self.item_entities.shape[0])

  @property
  def num_relations(self) -> int:
    return len(self.relation_names)

  @property
  def num_entities(self) -> int:
    return len(self.entity_names)

  def relation_entities(self) -> np.ndarray:
    """bool [R, E]: entity e is a tail of relation r."""
    return (self.entity_relation[None, :]
            == np.arange(self.num_relations)[:, None])

  def query_pairs(self) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, relation ids), int32 [N] each: every (item, relation) with
    at least one true entity, sorted; the rows a KG training epoch visits."""
    has = (self.item_entities.astype(bool)[:, None, :]
           & self.relation_entities()[None, :, :]).any(axis=2)
    items, relations = np.nonzero(has)
    return items.astype(np.int32), relations.astype(np.int32)


def _bucket_names(edges: tuple[int, ...]) -> tuple[str, ...]:
  if not edges:
    return ("any year",)
  inner = tuple(f"[{lo}, {hi})" for lo, hi in zip(edges[:-1], edges[1:]))
  return (f"<{edges[0]}",) + inner + (f">={edges[-1]}",)


def _read_only(array: np.ndarray) -> np.ndarray:
  array.setflags(write=False)
  return array


def item_attribute_triples(item_genres, item_year,
                           year_bucket_edges: Sequence[int], *,
                           genre_names: Sequence[str] | None = None,
                           year_bucket_names: Sequence[str] | None = None
                           ) -> KnowledgeGraph:
  """Builds the has_genre / released_in graph of a catalogue.

  Args:
    item_genres: [I, G] 0/1 genre multi-hot by item id (row 0 = padding).
    item_year: [I] int release years, 0 = unknown (no released_in triple).
    year_bucket_edges: strictly increasing years splitting release years
      into len(edges) + 1 buckets, as `np.digitize` does: year < edges[0] is
      bucket 0, edges[i-1] <= year < edges[i] bucket i, year >= edges[-1] the
      last.  E.g. `movielens.YEAR_EDGES` (decades 1940..2000).
    genre_names: G names (default 'genre_<g>'); e.g. a dataset's
      `genre_names`.
    year_bucket_names: len(edges) + 1 names (default '<1940', '[1940, 1950)',
      ..., '>=2000'); e.g. `movielens.YEAR_BUCKETS[1:]`.

  Entities are the G genres (ids 0..G-1) then the year buckets (ids G..),
  every one of them even if no item points at it, so entity ids do not
  depend on the data.  Relations are `RELATIONS`: 0 = has_genre (one triple
  per genre of an item), 1 = released_in (one triple per item with a known
  year).
  """
  genres = np.asarray(item_genres)
  years = np.asarray(item_year)
  if genres.ndim != 2:
    raise ValueError(f"item_genres must be an [I, G] 0/1 array, got shape "
                     f"{genres.shape}")
  if genres.size and not np.isin(genres, (0, 1)).all():
    raise ValueError("item_genres must hold only 0 and 1 (a genre "
                     "multi-hot)")
  if years.shape != (genres.shape[0],):
    raise ValueError(f"item_year must have shape [{genres.shape[0]}] (one "
                     f"year per item id, like item_genres), got "
                     f"{years.shape}")
  if years.size and (years.dtype.kind not in "iu" or (years < 0).any()):
    raise ValueError("item_year must hold non-negative integer years (0 = "
                     "unknown)")
  edges = tuple(int(e) for e in year_bucket_edges)
  if any(b <= a for a, b in zip(edges[:-1], edges[1:])):
    raise ValueError(f"year_bucket_edges must be strictly increasing, got "
                     f"{edges}")
  num_genres, num_buckets = genres.shape[1], len(edges) + 1
  genre_names = (tuple(f"genre_{g}" for g in range(num_genres))
                 if genre_names is None else tuple(genre_names))
  bucket_names = (_bucket_names(edges) if year_bucket_names is None
                  else tuple(year_bucket_names))
  if len(genre_names) != num_genres:
    raise ValueError(f"genre_names has {len(genre_names)} names for "
                     f"{num_genres} genre columns")
  if len(bucket_names) != num_buckets:
    raise ValueError(f"year_bucket_names has {len(bucket_names)} names for "
                     f"{num_buckets} buckets (len(year_bucket_edges) + 1)")
  entity_names = genre_names + bucket_names
  if len(set(entity_names)) != len(entity_names):
    raise ValueError(f"entity names must be distinct, got {entity_names}")

  num_items = genres.shape[0]
  item_entities = np.zeros((num_items, num_genres + num_buckets), np.uint8)
  item_entities[:, :num_genres] = genres
  known = years > 0
  bucket = np.digitize(years, edges) if edges else np.zeros_like(years)
  rows = np.flatnonzero(known)
  item_entities[rows, num_genres + bucket[rows]] = 1
  if num_items:
    item_entities[0] = 0  # the padding item has no triples

  entity_relation = np.repeat(np.asarray([HAS_GENRE, RELEASED_IN], np.int32),
                              (num_genres, num_buckets))
  # Entities are numbered relation by relation, so (item, entity) order is
  # (item, relation, entity) order.
  items, entities = np.nonzero(item_entities)
  triples = np.stack([items, entity_relation[entities], entities],
                     axis=1).astype(np.int32).reshape(-1, 3)
  return KnowledgeGraph(
      triples=_read_only(triples), relation_names=RELATIONS,
      entity_names=entity_names,
      entity_relation=_read_only(entity_relation),
      item_entities=_read_only(item_entities))


# ----------------------------------------------------------------------------
# Loss and metrics.


def _check_inputs(logits, rows, relation_ids, entity_relation, where: str):
  """As arrays, after checking the [B, E] / [B] / [E] shapes."""
  logits = jnp.asarray(logits)
  rows = jnp.asarray(rows)
  relation_ids = jnp.asarray(relation_ids)
  entity_relation = jnp.asarray(entity_relation)
  if logits.ndim != 2 or rows.shape != logits.shape:
    raise ValueError(f"{where}: logits and item_entities rows must both be "
                     f"[B, E], got {logits.shape} and {rows.shape}")
  if relation_ids.shape != logits.shape[:1]:
    raise ValueError(f"{where}: relation_ids must have shape "
                     f"[{logits.shape[0]}], got {relation_ids.shape}")
  if entity_relation.shape != logits.shape[1:]:
    raise ValueError(f"{where}: entity_relation must have shape "
                     f"[{logits.shape[1]}], got {entity_relation.shape}")
  return logits, rows, relation_ids, entity_relation


def _relation_view(logits, rows, relation_ids, entity_relation):
  """float32 logits, bool [B, E] 'entity of the row's relation', bool [B, E]
  positives (true entities of that relation)."""
  in_relation = entity_relation[None, :] == relation_ids[:, None]
  positive = in_relation & (rows > 0)
  return logits.astype(jnp.float32), in_relation, positive


def kg_loss(logits, item_entities_rows, relation_ids, entity_relation
            ) -> jax.Array:
  """Mean multi-positive softmax cross-entropy within each row's relation.

  For a row (item, relation r) with true entities P (of relation r), the
  logits are normalised over the entities of r only (other relations' are
  masked out) and the row's loss is -(1/|P|) sum_{p in P} log softmax_p.
  Rows with no positive for their relation (an item with no known year, the
  padding item) contribute 0 and are left out of the mean; with none left
  the loss is 0.

  Why a softmax rather than MKR's sigmoid scores: MKR scores sampled triples
  with sigma(t . t_hat) (its paper contrasts true triples with corrupted
  ones; its released code maximises the score of true triples only).  With a
  few dozen attribute entities every row can instead be scored against all
  of its relation's entities, with no negative sampling; released_in has
  exactly one true bucket, for which the softmax is the categorical
  likelihood; and every row weighs the same whatever its number of genres.
  The price: a row with k genres cannot get below log k, because the
  softmax splits probability among its positives; per-entity BCE would give
  calibrated "has this genre" probabilities if those are wanted.

  Args:
    logits: [B, E] entity scores (e.g. from `KGScorer`).
    item_entities_rows: [B, E] 0/1, `KnowledgeGraph.item_entities[items]`.
    relation_ids: int [B], the relation each row queries.
    entity_relation: int [E], `KnowledgeGraph.entity_relation`.
  """
  return _kg_loss(*_check_inputs(logits, item_entities_rows, relation_ids,
                                 entity_relation, "kg_loss"))


@jax.jit
def _kg_loss(logits, rows, relation_ids, entity_relation):
  logits, in_relation, positive = _relation_view(logits, rows, relation_ids,
                                                 entity_relation)
  log_norm = jax.nn.logsumexp(jnp.where(in_relation, logits, -jnp.inf),
                              axis=1, keepdims=True)
  # A relation id with no entities gives log_norm = -inf; such a row has no
  # positive either, and the where keeps -inf out of the sum.
  log_prob = jnp.where(positive, logits - jnp.where(
      jnp.isfinite(log_norm), log_norm, 0.0), 0.0)
  num_pos = jnp.sum(positive, axis=1)
  counted = num_pos > 0
  row_loss = -jnp.sum(log_prob, axis=1) / jnp.maximum(num_pos, 1)
  return (jnp.sum(jnp.where(counted, row_loss, 0.0))
          / jnp.maximum(jnp.sum(counted), 1))


def kg_metrics(logits, item_entities_rows, relation_ids, entity_relation,
               relation_names: Sequence[str] | None = None
               ) -> dict[str, jax.Array]:
  """hits@1 of the top-scored entity within each row's relation.

  A row's hits@1 is 1 when its best-scored entity of the queried relation is
  a true one; ties at the top count as a random pick among them (the fraction
  of tied entities that are true), so a constant scorer scores chance, not 1.
  Averaged over rows with at least one positive; NaN when there is none, or
  when a counted row has a non-finite logit in its relation (a diverged model
  gets no number).  Returns {'hits@1', 'rows'} and, given `relation_names`,
  'hits@1/<name>' per relation.  Jittable; values are scalar arrays.
  """
  names = tuple(relation_names or ())
  hits, rows, per_relation = _kg_metrics(
      *_check_inputs(logits, item_entities_rows, relation_ids,
                     entity_relation, "kg_metrics"), len(names))
  out = {"hits@1": hits, "rows": rows}
  for r, name in enumerate(names):
    out[f"hits@1/{name}"] = per_relation[r]
  return out


@functools.partial(jax.jit, static_argnums=4)
def _kg_metrics(logits, rows, relation_ids, entity_relation, num_relations):
  logits, in_relation, positive = _relation_view(logits, rows, relation_ids,
                                                 entity_relation)
  masked = jnp.where(in_relation, logits, -jnp.inf)
  top = jnp.max(masked, axis=1, keepdims=True)
  tied = in_relation & (logits == top)
  hit = (jnp.sum(tied & positive, axis=1)
         / jnp.maximum(jnp.sum(tied, axis=1), 1))
  finite = jnp.all(jnp.where(in_relation, jnp.isfinite(logits), True), axis=1)
  hit = jnp.where(finite, hit, jnp.nan)
  counted = jnp.any(positive, axis=1)

  def mean_over(selected):
    total = jnp.sum(selected)
    return jnp.where(total > 0,
                     jnp.sum(jnp.where(selected, hit, 0.0)) / total, jnp.nan)

  per_relation = jnp.stack(
      [mean_over(counted & (relation_ids == r)) for r in range(num_relations)]
      or [jnp.zeros(())])
  return mean_over(counted), jnp.sum(counted), per_relation

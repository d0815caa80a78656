"""Item-attribute knowledge graph, KGScorer (`models.aux_heads`), kg_loss and
kg_metrics."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtrec_jax.models.aux_heads import KGScorer
from mtrec_jax.tasks import knowledge as kg

# ----------------------------------------------------------------------------
# Graph construction.

# Item 0 is padding (its flags must be ignored).  Edges (1960, 1990, 2000):
# buckets 0 '<1960', 1 '[1960, 1990)', 2 '[1990, 2000)', 3 '>=2000'.
GENRES = np.array([
    [1, 1, 1],  # 0 padding
    [1, 0, 1],  # 1
    [0, 1, 0],  # 2
    [0, 0, 0],  # 3
    [1, 1, 0],  # 4
    [0, 0, 0],  # 5
    [0, 0, 0],  # 6
    [0, 0, 0],  # 7 no genre, no year: no triple
], np.uint8)
YEARS = np.array([1980, 1995, 0, 1955, 2003, 1990, 2000, 0], np.int32)
EDGES = (1960, 1990, 2000)


def tiny_graph():
  return kg.item_attribute_triples(GENRES, YEARS, EDGES,
                                   genre_names=("a", "b", "c"))


def test_tiny_table_gives_exactly_the_expected_triples():
  graph = tiny_graph()
  g = 3  # year bucket b is entity g + b
  expected = [
      (1, 0, 0), (1, 0, 2), (1, 1, g + 2),
      (2, 0, 1),
      (3, 1, g + 0),
      (4, 0, 0), (4, 0, 1), (4, 1, g + 3),
      (5, 1, g + 2),  # 1990 sits on an edge: the bucket it opens
      (6, 1, g + 3),  # 2000 likewise
  ]
  assert graph.triples.dtype == np.int32
  assert [tuple(t) for t in graph.triples.tolist()] == expected
  assert graph.relation_names == ("has_genre", "released_in")
  assert graph.entity_names == ("a", "b", "c", "<1960", "[1960, 1990)",
                                "[1990, 2000)", ">=2000")
  np.testing.assert_array_equal(graph.entity_relation, [0, 0, 0, 1, 1, 1, 1])
  assert (graph.num_items, graph.num_relations, graph.num_entities) == (8, 2,
                                                                        7)
  # item_entities is the multi-hot of the triples.
  multi_hot = np.zeros((8, 7), np.uint8)
  for item, _, entity in expected:
    multi_hot[item, entity] = 1
  np.testing.assert_array_equal(graph.item_entities, multi_hot)
  items, relations = graph.query_pairs()
  assert list(zip(items.tolist(), relations.tolist())) == [
      (1, 0), (1, 1), (2, 0), (3, 1), (4, 0), (4, 1), (5, 1), (6, 1)]
  np.testing.assert_array_equal(graph.relation_entities(),
                                [[1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1]])


def test_graph_arrays_are_read_only_and_names_default():
  graph = kg.item_attribute_triples(GENRES, YEARS, EDGES)
  assert graph.entity_names[:3] == ("genre_0", "genre_1", "genre_2")
  with pytest.raises(ValueError):
    graph.item_entities[1, 0] = 0
  with pytest.raises(AttributeError):
    graph.triples = None
  named = kg.item_attribute_triples(
      GENRES, YEARS, EDGES, year_bucket_names=("old", "mid", "90s", "new"))
  assert named.entity_names[3:] == ("old", "mid", "90s", "new")


@pytest.mark.parametrize("genres, years, edges, match", [
    (GENRES * 2, YEARS, EDGES, "0 and 1"),
    (GENRES[0], YEARS, EDGES, r"\[I, G\]"),
    (GENRES, YEARS[:-1], EDGES, "item_year must have shape"),
    (GENRES, YEARS - 2000, EDGES, "non-negative"),
    (GENRES, YEARS.astype(float), EDGES, "integer"),
    (GENRES, YEARS, (1990, 1960), "strictly increasing"),
])
def test_bad_tables_are_refused(genres, years, edges, match):
  with pytest.raises(ValueError, match=match):
    kg.item_attribute_triples(genres, years, edges)


def test_bad_names_are_refused():
  with pytest.raises(ValueError, match="genre_names"):
    kg.item_attribute_triples(GENRES, YEARS, EDGES, genre_names=("a",))
  with pytest.raises(ValueError, match="year_bucket_names"):
    kg.item_attribute_triples(GENRES, YEARS, EDGES, year_bucket_names=("x",))
  with pytest.raises(ValueError, match="distinct"):
    kg.item_attribute_triples(GENRES, YEARS, EDGES,
                              genre_names=("a", "a", "b"))


# ----------------------------------------------------------------------------
# kg_loss and kg_metrics against loops.


def brute_kg_loss(logits, rows, relation_ids, entity_relation):
  total, counted = 0.0, 0
  for b in range(len(logits)):
    entities = [e for e in range(logits.shape[1])
                if entity_relation[e] == relation_ids[b]]
    positives = [e for e in entities if rows[b, e]]
    if not positives:
      continue
    top = max(logits[b, e] for e in entities)
    log_z = top + math.log(sum(math.exp(logits[b, e] - top)
                               for e in entities))
    total += -sum(logits[b, p] - log_z for p in positives) / len(positives)
    counted += 1
  return total / counted if counted else 0.0


def brute_hits(logits, rows, relation_ids, entity_relation, only=None):
  hits = []
  for b in range(len(logits)):
    if only is not None and relation_ids[b] != only:
      continue
    entities = [e for e in range(logits.shape[1])
                if entity_relation[e] == relation_ids[b]]
    if not any(rows[b, e] for e in entities):
      continue
    top = max(logits[b, e] for e in entities)
    tied = [e for e in entities if logits[b, e] == top]
    hits.append(sum(rows[b, e] for e in tied) / len(tied))
  return sum(hits) / len(hits) if hits else float("nan")


def random_case(seed, batch=32, ties=False):
  rng = np.random.default_rng(seed)
  entity_relation = np.array([0] * 5 + [1] * 3 + [2] * 2, np.int32)
  logits = rng.normal(size=(batch, len(entity_relation))).astype(np.float32)
  if ties:
    logits = np.round(logits).astype(np.float32)  # many exact ties
  rows = (rng.random(logits.shape) < 0.3).astype(np.uint8)
  relation_ids = rng.integers(0, 3, batch).astype(np.int32)
  return logits, rows, relation_ids, entity_relation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kg_loss_matches_brute_force(seed):
  case = random_case(seed)
  got = float(kg.kg_loss(*case))
  assert got == pytest.approx(brute_kg_loss(*case), rel=1e-5)


def test_kg_loss_edge_cases_and_gradient():
  logits, rows, relation_ids, entity_relation = random_case(3)
  empty = np.zeros_like(rows)
  assert float(kg.kg_loss(logits, empty, relation_ids, entity_relation)) == 0
  # Positives of another relation do not count.
  other = np.zeros_like(rows)
  other[:, entity_relation != 0] = 1
  zeros = np.zeros_like(relation_ids)
  assert float(kg.kg_loss(logits, other, zeros, entity_relation)) == 0
  # Shifting a row's logits changes nothing (the softmax is per row).
  shifted = logits + np.arange(len(logits), dtype=np.float32)[:, None]
  assert float(kg.kg_loss(shifted, rows, relation_ids,
                          entity_relation)) == pytest.approx(
                              float(kg.kg_loss(logits, rows, relation_ids,
                                               entity_relation)), rel=1e-5)
  grad = jax.grad(kg.kg_loss)(jnp.asarray(logits), rows, relation_ids,
                              entity_relation)
  grad = np.asarray(grad)
  assert np.isfinite(grad).all()
  # No gradient leaks to other relations' entities.
  outside = entity_relation[None, :] != relation_ids[:, None]
  np.testing.assert_array_equal(grad[outside], 0.0)
  with pytest.raises(ValueError, match="relation_ids"):
    kg.kg_loss(logits, rows, relation_ids[:-1], entity_relation)


@pytest.mark.parametrize("ties", [False, True])
def test_kg_metrics_match_brute_force(ties):
  logits, rows, relation_ids, entity_relation = random_case(4, ties=ties)
  names = ("x", "y", "z")
  got = kg.kg_metrics(logits, rows, relation_ids, entity_relation, names)
  assert float(got["hits@1"]) == pytest.approx(
      brute_hits(logits, rows, relation_ids, entity_relation), rel=1e-6)
  for r, name in enumerate(names):
    assert float(got[f"hits@1/{name}"]) == pytest.approx(
        brute_hits(logits, rows, relation_ids, entity_relation, only=r),
        rel=1e-6)
  counted = [(rows[b] * (entity_relation == relation_ids[b])).any()
             for b in range(len(rows))]
  assert int(got["rows"]) == sum(counted)


def test_kg_metrics_constant_scores_get_chance_and_nan_is_loud():
  logits, rows, relation_ids, entity_relation = random_case(5)
  flat = np.zeros_like(logits)
  got = float(kg.kg_metrics(flat, rows, relation_ids,
                            entity_relation)["hits@1"])
  assert got == pytest.approx(
      brute_hits(flat, rows, relation_ids, entity_relation), rel=1e-6)
  assert got < 0.6
  counted = np.flatnonzero([(rows[b] * (entity_relation
                                        == relation_ids[b])).any()
                            for b in range(len(rows))])
  bad = logits.copy()
  bad[counted[0], entity_relation == relation_ids[counted[0]]] = np.nan
  assert math.isnan(float(kg.kg_metrics(bad, rows, relation_ids,
                                        entity_relation)["hits@1"]))


# ----------------------------------------------------------------------------
# KGScorer.


def test_kg_scorer_shapes_and_parameters():
  scorer = KGScorer(num_relations=2, num_entities=7, dim=8, hidden=(16,))
  heads = jnp.ones((4, 5))
  relations = jnp.array([0, 1, 1, 0])
  params = jax.jit(scorer.init)(jax.random.key(0), heads,
                                relations)["params"]
  shapes = jax.tree_util.tree_map(lambda x: x.shape, params)
  assert shapes["relation_embed"] == (2, 8)
  assert shapes["entity_embed"] == (7, 8)
  assert shapes["entity_bias"] == (7,)
  assert shapes["hidden_layers_0"]["kernel"] == (5 + 8, 16)
  assert shapes["tail"]["kernel"] == (16, 8)
  logits = scorer.apply({"params": params}, heads, relations)
  assert logits.shape == (4, 7) and logits.dtype == jnp.float32
  t_hat = scorer.apply({"params": params}, heads, relations,
                       method=KGScorer.predict_tail)
  np.testing.assert_allclose(
      logits, t_hat @ params["entity_embed"].T + params["entity_bias"],
      rtol=1e-5, atol=1e-6)
  bad = scorer.apply({"params": params}, heads, jnp.array([0, 1, 2, 0]))
  assert np.isnan(np.asarray(bad[2])).all()  # unknown relation id is loud
  plain = KGScorer(num_relations=2, num_entities=7, dim=8, use_bias=False)
  shapes = jax.eval_shape(plain.init, jax.random.key(0), heads, relations)
  assert "entity_bias" not in shapes["params"]


def test_kg_task_learns_a_toy_graph():
  """Item embeddings + KGScorer trained with Adam reach high hits@1.

  60 items with random genres (6) and years (4 decade buckets): the only way
  to score well is to learn each item's attributes into its embedding, so a
  broken loss, mask or gradient path leaves hits@1 near chance.
  """
  rng = np.random.default_rng(0)
  num_items = 61
  genres = (rng.random((num_items, 6)) < 0.3).astype(np.uint8)
  years = rng.integers(1960, 2000, num_items).astype(np.int32)
  graph = kg.item_attribute_triples(genres, years, (1970, 1980, 1990))
  items, relations = graph.query_pairs()
  rows = graph.item_entities[items]
  entity_relation = graph.entity_relation

  scorer = KGScorer(graph.num_relations, graph.num_entities, dim=16)
  opt = optax.adam(0.03)

  def logits_of(p):
    return scorer.apply({"params": p["scorer"]}, p["items"][items], relations)

  def loss_fn(p):
    return kg.kg_loss(logits_of(p), rows, relations, entity_relation)

  def step(carry, _):
    p, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, state = opt.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), loss

  @jax.jit
  def run(key):  # one program: initialise, measure, train 300 steps, measure
    key_items, key_scorer = jax.random.split(key)
    p = {"items": 0.1 * jax.random.normal(key_items, (num_items, 16)),
         "scorer": scorer.init(key_scorer, jnp.zeros((1, 16)),
                               jnp.zeros((1,), jnp.int32))["params"]}
    before = kg.kg_metrics(logits_of(p), rows, relations, entity_relation)
    (p, _), losses = jax.lax.scan(step, (p, opt.init(p)), None, length=300)
    after = kg.kg_metrics(logits_of(p), rows, relations, entity_relation,
                          graph.relation_names)
    return before["hits@1"], after, losses

  before, after, losses = run(jax.random.key(0))
  assert float(losses[-1]) < 0.5 * float(losses[0])
  assert float(before) < 0.6
  assert float(after["hits@1"]) > 0.95, after
  assert float(after["hits@1/released_in"]) > 0.95, after

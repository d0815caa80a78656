"""Held-out items of a cold-start split in the item-scoring training losses
(next_all's softmax 'full' and 'fused', sampled softmax, bce with either
sampler; mim): their id rows and head biases get exactly zero gradient, as
the padding item's, where leaving them in trains them as negatives; the
fused softmax still equals the full one; evaluation still scores them."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.data import movielens as ml
from mtrec_jax.models.build import build_model
from mtrec_jax.tasks import auxiliary

try:
  from tests.models.test_models_all_positions import model_cfg, random_movielens
except ImportError:  # tests/ not importable as a package.
  from test_models_all_positions import (model_cfg,  # type: ignore
                                         random_movielens)

NEXT_ALL = {
    "softmax_full": {"loss": "softmax", "softmax_impl": "full"},
    "softmax_fused": {"loss": "softmax", "softmax_impl": "fused"},
    "sampled_softmax": {"loss": "sampled_softmax", "num_negatives": 60},
    "bce_uniform": {"loss": "bce", "negatives": "uniform"},
    "bce_unseen": {"loss": "bce", "negatives": "unseen"},
}


def dataset_of(tmp_path_factory, fraction):
  folder = tmp_path_factory.mktemp("ml") / "ml-100k"
  random_movielens(folder, seed=3)
  raw = ml.read_movielens(folder, "100k", strict_counts=False)
  return ml.movielens_dataset(raw, max_len=6, embed_dim=8,
                              train_examples="sequences",
                              cold_start_items=fraction)


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
  return dataset_of(tmp_path_factory, 0.5)


def build_task(ds, name, over):
  aux = auxiliary.default_aux_config()
  aux["tasks"] = (name,)
  aux[name] = {**aux[name], **over}
  return auxiliary.build_aux_tasks(aux, ds, model_cfg().to_dict())[0]


def item_rows_grads(ds, task):
  """(the gradient of the task's loss, flattened leaves with the catalogue
  as their first axis: the id table [V, E] and the head's bias [V])."""
  cfg = model_cfg()
  model = build_model(cfg, ds.features, (), (task,))
  batch = {k: jnp.asarray(v) for k, v in ds.splits["train"].items()}
  params = model.init(jax.random.PRNGKey(0), batch, jax.random.PRNGKey(1),
                      method="init_all")["params"]

  def loss(p):
    return model.apply({"params": p}, batch, jax.random.PRNGKey(2),
                       train=False, method="aux_losses")[0]
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)
            if g.ndim >= 1 and g.shape[0] == task.num_items]
  return float(value), leaves


def test_builders_read_the_split(cold, tmp_path_factory):
  held = tuple(cold.info["cold_start"]["items"])
  assert held and auxiliary.held_out_items(cold) == held
  assert build_task(cold, "next_all", {}).held_out == held
  assert build_task(cold, "mim", {}).held_out == held
  warm = dataset_of(tmp_path_factory, 0.0)
  assert auxiliary.held_out_items(warm) == ()
  assert build_task(warm, "next_all", {}).held_out == ()


@pytest.mark.parametrize("name,over",
                         [("next_all", v) for v in NEXT_ALL.values()]
                         + [("mim", {"mask_prob": 0.5})],
                         ids=list(NEXT_ALL) + ["mim"])
def test_held_out_rows_get_no_gradient(cold, name, over):
  task = build_task(cold, name, over)
  held = np.asarray(task.held_out)
  value, leaves = item_rows_grads(cold, task)
  assert np.isfinite(value) and leaves
  for g in leaves:
    assert not np.any(g[held]), "a held-out item was trained"
    assert not np.any(g[0]), "the padding item was trained"
    assert np.any(g[1:]), "no item was trained at all"
  # Left in the catalogue, the same loss trains them (as negatives).
  _, open_leaves = item_rows_grads(cold, dataclasses.replace(task,
                                                             held_out=()))
  assert any(np.any(g[held]) for g in open_leaves)


@pytest.mark.parametrize("head", ["mlp", "dot"])
def test_fused_equals_full_with_held_out_items(cold, head):
  full = build_task(cold, "next_all", {"softmax_impl": "full", "head": head})
  fused = build_task(cold, "next_all", {"softmax_impl": "fused",
                                        "head": head})
  v_full, g_full = item_rows_grads(cold, full)
  v_fused, g_fused = item_rows_grads(cold, fused)
  np.testing.assert_allclose(v_fused, v_full, rtol=1e-6)
  for a, b in zip(g_full, g_fused):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("negatives", ["uniform", "unseen"])
def test_bce_samplers_never_draw_held_out_items(cold, negatives):
  task = build_task(cold, "next_all", {"loss": "bce",
                                       "negatives": negatives})
  batch = {k: jnp.asarray(v) for k, v in cold.splits["train"].items()}
  targets = batch["seq_targets"]
  for seed in range(20):
    drawn = np.asarray(task.bce_negatives(jax.random.PRNGKey(seed), targets,
                                          batch))
    assert drawn.min() >= 1 and drawn.max() < task.num_items
    assert not np.isin(drawn, task.held_out).any()
    assert not np.any(drawn == np.asarray(targets))


def test_evaluation_still_ranks_held_out_items(cold):
  """`scores` (what the test metrics rank) leaves the held-out columns as
  they are: only padding gets -1e9."""
  task = build_task(cold, "next_all", {"softmax_impl": "fused"})
  model = build_model(model_cfg(), cold.features, (), (task,))
  batch = {k: jnp.asarray(v) for k, v in cold.splits["test"].items()}
  params = model.init(jax.random.PRNGKey(0), batch, jax.random.PRNGKey(1),
                      method="init_all")["params"]
  outputs = model.apply({"params": params}, batch, method="aux_scores")
  scores = np.asarray(outputs["next_all"])
  assert np.all(scores[:, 0] == -1e9)
  assert np.all(np.abs(scores[:, list(task.held_out)]) < 1e3)


def test_held_out_items_are_checked(cold):
  task = build_task(cold, "next_all", {"loss": "bce",
                                       "negatives": "unseen"})
  v = task.num_items
  with pytest.raises(ValueError, match=r"held_out must be item ids in "
                                       rf"\[1, {v}\)"):
    dataclasses.replace(task, held_out=(0, 2))
  with pytest.raises(ValueError, match="fewer than 2 of the"):
    dataclasses.replace(task, held_out=tuple(range(2, v)))
  # A user whose every item but one is seen: holding that one out leaves
  # the 'unseen' sampler nothing to draw for them.
  seen = task.seen_items.copy()
  seen[1, :] = True
  seen[1, 5] = False
  with pytest.raises(ValueError, match="neither seen nor held out"):
    dataclasses.replace(task, seen_items=seen, held_out=(5,))
  assert dataclasses.replace(task, seen_items=seen, held_out=(6,))

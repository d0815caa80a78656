"""next_all's softmax_impl='fused' against 'full' ([B, L, V] logits) in the
model: the same loss and parameter gradients (float tolerance), with rows
that are all padding and rows of one real position, for both heads and
with dropout on (the same masks: the encoder is called the same way)."""
from __future__ import annotations

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


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  folder = tmp_path_factory.mktemp("ml") / "ml-100k"
  random_movielens(folder, seed=1)
  raw = ml.read_movielens(folder, "100k", strict_counts=False)
  return ml.movielens_dataset(raw, max_len=5, embed_dim=8,
                              train_examples="sequences")


def edge_batch(ds):
  """The training rows plus an all-padding row and a one-position row."""
  batch = {k: np.array(v) for k, v in ds.splits["train"].items()}
  ids, targets = batch["hist_items"], batch["seq_targets"]
  ids[0], targets[0] = 0, 0  # all padding: no real position
  ids[1, :-1], targets[1, :-1] = 0, 0  # length 1: the last position only
  assert targets[1, -1] != 0 and ids[1, -1] != 0
  return {k: jnp.asarray(v) for k, v in batch.items()}


def loss_and_grads(ds, impl, head, dropout, batch):
  cfg = model_cfg()
  cfg.encoder.dropout = dropout
  cfg.encoder.attention_dropout = dropout
  aux = auxiliary.default_aux_config()
  aux["tasks"] = ("next_all",)
  aux["next_all"] = {**aux["next_all"], "softmax_impl": impl, "head": head}
  tasks = auxiliary.build_aux_tasks(aux, ds, cfg.to_dict())
  assert tasks[0].softmax_impl == impl
  model = build_model(cfg, ds.features, (), tasks)
  params = model.init(jax.random.PRNGKey(0), batch, jax.random.PRNGKey(1),
                      method="init_all")["params"]

  def loss(p):
    return model.apply({"params": p}, batch, jax.random.PRNGKey(2),
                       train=dropout > 0, rngs={"dropout": jax.random.PRNGKey(3)},
                       method="aux_losses")[0]
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("head,dropout", [("mlp", 0.0), ("dot", 0.0),
                                          ("mlp", 0.3)])
def test_fused_equals_full(dataset, head, dropout):
  batch = edge_batch(dataset)
  full, full_grads = loss_and_grads(dataset, "full", head, dropout, batch)
  fused, fused_grads = loss_and_grads(dataset, "fused", head, dropout, batch)
  assert np.isfinite(float(full))
  np.testing.assert_allclose(fused, full, rtol=1e-6)
  paths = jax.tree_util.tree_leaves_with_path(full_grads)
  for (path, a), b in zip(paths, jax.tree_util.tree_leaves(fused_grads)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))
  assert any(np.any(np.asarray(g)) for g in jax.tree_util.tree_leaves(
      fused_grads))


def test_softmax_impl_is_checked(dataset):
  aux = auxiliary.default_aux_config()
  assert aux["next_all"]["softmax_impl"] == "full"  # what stored runs used
  aux["tasks"] = ("next_all",)
  aux["next_all"] = {**aux["next_all"], "softmax_impl": "chunky"}
  with pytest.raises(ValueError, match="softmax_impl must be one of"):
    auxiliary.build_aux_tasks(aux, dataset, model_cfg().to_dict())

"""Auxiliary tasks (masked items, contrastive, knowledge graph) on the shared
encoder: parameters, losses, gradients and the train-step integration."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtrec_jax import weighting
from mtrec_jax.data.dataset import Dataset
from mtrec_jax.tasks import auxiliary
from mtrec_jax.models.build import build_model, default_model_config
from mtrec_jax.models.features import FeatureSpec
from mtrec_jax.tasks.spec import TaskSpec
from mtrec_jax.train import state as state_lib
from mtrec_jax.train.step import aux_jacobian, make_train_step, task_losses

ITEMS, LEN, GENRES = 30, 6, 4


def tiny_dataset(n: int = 64, seed: int = 0) -> Dataset:
  rng = np.random.default_rng(seed)
  hist = rng.integers(1, ITEMS, size=(n, LEN)).astype(np.int32)
  lengths = rng.integers(0, LEN + 1, size=n)
  hist[np.arange(LEN)[None, :] < (LEN - lengths)[:, None]] = 0  # left pad
  split = {"hist_items": hist,
           "user": rng.integers(1, 10, size=n).astype(np.int32),
           "like": rng.integers(0, 2, size=n).astype(np.float32)}
  features = (
      FeatureSpec("user", "categorical", vocab_size=10, embed_dim=8),
      FeatureSpec("hist_items", "sequence", vocab_size=ITEMS, max_len=LEN,
                  embed_dim=8))
  genre_ids = [[]] + [sorted(rng.choice(GENRES, size=rng.integers(1, 3),
                                        replace=False).tolist())
                      for _ in range(ITEMS - 1)]
  years = [0] + rng.integers(1930, 2001, size=ITEMS - 1).tolist()
  info = {"item_genre_ids": genre_ids, "item_year": years,
          "num_genres": GENRES, "genre_names": [f"g{i}" for i in range(GENRES)]}
  return Dataset(name="tiny_seq", splits={"train": split, "val": split,
                                          "test": split},
                 features=features,
                 tasks=(TaskSpec("like", "like", "binary"),), info=info)


def aux_config(*names, **changes):
  cfg = auxiliary.default_aux_config()
  cfg["tasks"] = names
  cfg["kg"] = {**cfg["kg"], "batch_items": 16, "dim": 8}
  for key, value in changes.items():
    cfg[key] = {**cfg[key], **value}
  return cfg


def build(dataset, aux_names=("mim", "cl", "kg"), tasks=True, pooling="last"):
  cfg = default_model_config()
  cfg.bottom_hidden = (8,)
  cfg.tower_hidden = (4,)
  cfg.encoder.hidden_dim = 8
  cfg.encoder.mlp_dim = 8
  cfg.encoder.dropout = 0.0
  cfg.encoder.attention_dropout = 0.0
  cfg.encoder.pooling = pooling
  aux = auxiliary.build_aux_tasks(aux_config(*aux_names), dataset)
  dims = tuple((t.name, t.out_dim) for t in dataset.tasks) if tasks else ()
  return build_model(cfg, dataset.features, dims, aux)


def init(model, batch):
  return model.init(jax.random.PRNGKey(0), batch, jax.random.PRNGKey(1),
                    method="init_all")["params"]


@pytest.fixture(scope="module")
def data():
  ds = tiny_dataset()
  return ds, {k: jnp.asarray(v) for k, v in ds.splits["train"].items()}


def test_parameters_of_the_auxiliary_heads(data):
  ds, batch = data
  model = build(ds)
  params = init(model, batch)
  assert set(params) == {"shared", "towers", "aux"}
  assert set(params["aux"]) == {"mim", "kg"}  # cl has no private parameters
  assert params["shared"]["feature_encoder"]["mask_hist_items"].shape == (8,)
  assert params["aux"]["mim"]["bias"].shape == (ITEMS,)
  graph = model.aux_tasks[2].graph
  assert params["aux"]["kg"]["entity_embed"].shape == (graph.num_entities, 8)


def test_aux_losses_are_finite_and_keyed(data):
  ds, batch = data
  model = build(ds)
  params = init(model, batch)
  run = jax.jit(lambda p, k: model.apply({"params": p}, batch, k,
                                         method="aux_losses"))
  a = np.asarray(run(params, jax.random.PRNGKey(3)))
  b = np.asarray(run(params, jax.random.PRNGKey(3)))
  c = np.asarray(run(params, jax.random.PRNGKey(4)))
  assert a.shape == (3,) and np.all(np.isfinite(a))
  np.testing.assert_array_equal(a, b)
  assert np.all(a != c)  # new masks, views and KG queries
  # At initialisation every loss is near its chance level: log(#items) for
  # masked items, log(2B - 1) for NT-Xent with near-equal similarities.
  assert abs(a[0] - np.log(ITEMS)) < 1.0
  valid = int(np.sum(np.any(np.asarray(batch["hist_items"]) != 0, axis=1)))
  assert abs(a[1] - np.log(2 * valid - 1)) < 1.5


@pytest.mark.parametrize("pooling", ["last", "mean", "cls"])
def test_encode_positions_then_pool_is_the_pooled_feature(data, pooling):
  ds, batch = data
  model = build(ds, pooling=pooling)
  params = init(model, batch)

  def both(module, b):
    enc = module.shared.feature_encoder
    h, real = enc.encode_positions("hist_items", b["hist_items"])
    return enc.pool(h, real), enc(b, names=("hist_items",))

  pooled, direct = model.apply({"params": params}, batch, method=both)
  np.testing.assert_allclose(pooled, direct, rtol=1e-6, atol=1e-6)


def test_masked_positions_use_the_mask_vector(data):
  ds, batch = data
  model = build(ds)
  params = init(model, batch)
  ids = batch["hist_items"]

  def encode(module, masked):
    return module.shared.feature_encoder.encode_positions(
        "hist_items", ids, masked=masked)[0]

  none = jnp.zeros(ids.shape, bool)
  plain = model.apply({"params": params}, None, method=lambda m, _: encode(
      m, None))
  np.testing.assert_allclose(
      model.apply({"params": params}, None,
                  method=lambda m, _: encode(m, none)), plain, atol=1e-6)
  # Masking every item = every real position sees only the mask vector, so
  # two rows with the same length but different items encode identically.
  full = model.apply({"params": params}, None,
                     method=lambda m, _: encode(m, ids != 0))
  lengths = np.sum(np.asarray(ids) != 0, axis=1)
  rows = np.flatnonzero(lengths == lengths.max())[:2]
  assert len(rows) == 2
  assert not np.allclose(plain[rows[0]], plain[rows[1]], atol=1e-4)
  np.testing.assert_allclose(full[rows[0]], full[rows[1]], atol=1e-5)


def test_knowledge_loss_reaches_only_sampled_item_rows(data):
  ds, batch = data
  model = build(ds, aux_names=("kg",))
  params = init(model, batch)
  key = jax.random.PRNGKey(5)
  grads = jax.grad(lambda p: model.apply({"params": p}, batch, key,
                                         method="aux_losses")[0])(params)
  table = np.asarray(grads["shared"]["feature_encoder"]["embed_hist_items"])
  touched = np.flatnonzero(np.abs(table).sum(axis=1) > 0)
  # The queried items: redraw them exactly as the task does.
  task = model.aux_tasks[0]
  items, _ = task.graph.query_pairs()
  k_task = jax.random.split(key, 1)[0]
  pick = np.asarray(jax.random.randint(k_task, (task.batch_items,), 0,
                                       items.size))
  np.testing.assert_array_equal(touched, np.unique(items[pick]))
  # Nothing else in the encoder (positions, transformer) is used.
  assert np.all(np.asarray(
      grads["shared"]["feature_encoder"]["pos_hist_items"]) == 0)


def test_aux_jacobian_rows_are_the_per_task_gradients(data):
  ds, batch = data
  model = build(ds)
  params = init(model, batch)
  key = jax.random.PRNGKey(2)
  fn = lambda p: model.apply({"params": p}, batch, key, method="aux_losses")
  for engine in ("vmap", "unrolled"):
    losses, own, jac = aux_jacobian(fn, params, model.aux_names, engine)
    for i, name in enumerate(model.aux_names):
      g = jax.grad(lambda p: fn(p)[i])(params)
      jax.tree_util.tree_map(
          lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-4,
                                                  atol=1e-6),
          jac["shared"], g["shared"])
      if name in own:
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4,
                                                    atol=1e-6),
            own[name], g["aux"][name])
    np.testing.assert_allclose(losses, fn(params), rtol=1e-6)


def _step_setup(ds, batch, strategy_name, aux_names=("mim", "cl", "kg"),
                tasks=True):
  model = build(ds, aux_names=aux_names, tasks=tasks)
  params = init(model, batch)
  strategy = weighting.build(strategy_name)
  opt = optax.sgd(1.0)
  task_specs = ds.tasks if tasks else ()
  k = len(task_specs) + len(aux_names)
  state = state_lib.create(params, opt, strategy, k, jax.random.PRNGKey(9))
  return model, task_specs, strategy, opt, state


@pytest.mark.parametrize("strategy_name,mode", [("sum", ""),
                                                ("mgda", "params")])
def test_train_step_with_auxiliary_tasks_matches_autodiff(data,
                                                          strategy_name, mode):
  """With SGD(1) the parameter change is minus the combined gradient; for
  `sum` it must equal jax.grad of the summed K + A losses, and for MGDA the
  same with MGDA's weights (reported) on the shared parameters."""
  ds, batch = data
  model, tasks, strategy, opt, state = _step_setup(ds, batch, strategy_name)
  step = jax.jit(make_train_step(model, tasks, strategy, opt, mode,
                                 jacobian="unrolled"))
  new, metrics = step(state, batch)
  names = ("like", "mim", "cl", "kg")
  assert {f"loss/{n}" for n in names} <= set(metrics)
  weights = np.asarray([metrics[f"weight/{n}"] for n in names])
  # Recompute the losses with the step's keys.
  rng = jax.random.fold_in(state.rng, state.step)
  rng, _ = jax.random.split(rng)
  r_main, r_drop, r_aux = jax.random.split(rng, 3)

  def losses(p):
    out = model.apply({"params": p}, batch, train=True,
                      rngs={"dropout": r_main})
    aux = model.apply({"params": p}, batch, r_aux, train=True,
                      rngs={"dropout": r_drop}, method="aux_losses")
    return jnp.concatenate([task_losses(out, batch, tasks), aux])

  np.testing.assert_allclose([metrics[f"loss/{n}"] for n in names],
                             losses(state.params), rtol=1e-5)
  grad = jax.grad(lambda p: jnp.dot(jnp.asarray(weights), losses(p)))(
      state.params)
  delta = jax.tree_util.tree_map(lambda a, b: a - b, new.params, state.params)
  jax.tree_util.tree_map(
      lambda d, g: np.testing.assert_allclose(-d, g, rtol=2e-3, atol=2e-6),
      delta["shared"], grad["shared"])
  if strategy_name == "sum":
    jax.tree_util.tree_map(
        lambda d, g: np.testing.assert_allclose(-d, g, rtol=2e-3, atol=2e-6),
        delta, grad)


def test_pretraining_with_auxiliary_tasks_only(data):
  ds, batch = data
  model, tasks, strategy, opt, state = _step_setup(
      ds, batch, "pcgrad", aux_names=("mim", "kg"), tasks=False)
  assert "towers" not in state.params
  step = jax.jit(make_train_step(model, tasks, strategy, opt, "params",
                                 jacobian="unrolled"))
  new, metrics = step(state, batch)
  assert set(k for k in metrics if k.startswith("loss/")) == {
      "loss/mim", "loss/kg", "loss/total"}
  assert int(new.diverged_step) < 0


def test_rep_mode_refuses_auxiliary_tasks(data):
  ds, batch = data
  model, tasks, strategy, opt, _ = _step_setup(ds, batch, "mgda")
  with pytest.raises(ValueError, match="strategy.mode=params"):
    make_train_step(model, tasks, strategy, opt, "rep")


def test_aux_config_errors(data):
  ds, _ = data
  with pytest.raises(Exception, match="mim"):
    auxiliary.build_aux_tasks(aux_config("mlm"), ds)
  with pytest.raises(ValueError, match="sequence feature"):
    auxiliary.build_aux_tasks(aux_config("mim", mim={"feature": "hist"}), ds)
  bare = Dataset(name="bare", splits=ds.splits, features=ds.features,
                 tasks=ds.tasks, info={})
  with pytest.raises(ValueError, match="item metadata"):
    auxiliary.build_aux_tasks(aux_config("kg"), bare)

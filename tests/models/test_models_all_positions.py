"""All-positions tasks on MovieLens-format data: `next_all` and the
`NextInteractionTask`s (rating_all, like_all, genre_all) against brute-force
numpy losses, their per-position labels against the raw ratings, causality
and evaluation on the last position."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.data import movielens as ml
from mtrec_jax.tasks import auxiliary
from mtrec_jax.models.build import build_model, default_model_config

NUM_ITEMS, GENRE_NAMES = 40, ("unknown", "Action", "Comedy", "Drama")
ALL_TASKS = ("next_all", "rating_all", "like_all", "genre_all")


def random_movielens(folder: Path, seed: int = 0):
  """Official-format u.* files of 8 users with unique items per user; returns
  the (user, item) -> stars map and the item genre flags."""
  rng = np.random.default_rng(seed)
  genres = rng.integers(0, 2, size=(NUM_ITEMS + 1, len(GENRE_NAMES)))
  stars = {}
  lines = []
  for user in range(1, 9):
    n = int(rng.integers(3, 14))
    for t, item in enumerate(rng.choice(NUM_ITEMS, n, replace=False) + 1):
      stars[user, int(item)] = int(rng.integers(1, 6))
      lines.append(f"{user}\t{item}\t{stars[user, int(item)]}\t{t}\n")
  folder.mkdir(parents=True)
  (folder / "u.data").write_text("".join(lines))
  (folder / "u.item").write_text("".join(
      f"{i}|Movie {i} (1990)|01-Jan-1990||http://x|"
      + "|".join(map(str, genres[i])) + "\n" for i in range(1, NUM_ITEMS + 1)))
  (folder / "u.user").write_text("".join(
      f"{u}|25|M|writer|12345\n" for u in range(1, 9)))
  (folder / "u.genre").write_text(
      "".join(f"{g}|{i}\n" for i, g in enumerate(GENRE_NAMES)) + "\n")
  (folder / "u.occupation").write_text("writer\n")
  return stars, genres


@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
  folder = tmp_path_factory.mktemp("ml") / "ml-100k"
  stars, genres = random_movielens(folder)
  raw = ml.read_movielens(folder, "100k", strict_counts=False)
  ds = ml.movielens_dataset(raw, max_len=5, embed_dim=8,
                            train_examples="sequences")
  return ds, stars, genres


def aux_cfg(*names):
  cfg = auxiliary.default_aux_config()
  cfg["tasks"] = names
  return cfg


def model_cfg(causal=True):
  cfg = default_model_config()
  cfg.tower_hidden = (6,)
  cfg.dropout = 0.0
  cfg.encoder.hidden_dim = 8
  cfg.encoder.mlp_dim = 8
  cfg.encoder.dropout = 0.0
  cfg.encoder.attention_dropout = 0.0
  cfg.encoder.causal = causal
  return cfg


def build(ds, names=ALL_TASKS, causal=True):
  cfg = model_cfg(causal)
  tasks = auxiliary.build_aux_tasks(aux_cfg(*names), ds, cfg.to_dict())
  model = build_model(cfg, ds.features, (), tasks)
  batch = {k: jnp.asarray(v) for k, v in ds.splits["train"].items()}
  params = model.init(jax.random.PRNGKey(0), batch, jax.random.PRNGKey(1),
                      method="init_all")["params"]
  return model, tasks, params, batch


def position_outputs(model, params, task, batch):
  """[B, L, out] outputs of `task` at every position."""
  def run(m, b):
    encoder = m.shared.feature_encoder
    if isinstance(task, auxiliary.NextItemSequenceTask):
      return task._logits(encoder, m._aux_head(task.name),
                          jnp.asarray(b[task.feature]), False)
    return task._outputs(encoder, m._aux_head(task.name), b, False)
  return np.asarray(model.apply({"params": params}, batch, method=run),
                    np.float64)


def real_positions(batch):
  ids, targets = np.asarray(batch["hist_items"]), np.asarray(
      batch["seq_targets"])
  return [(r, t) for r in range(ids.shape[0]) for t in range(ids.shape[1])
          if ids[r, t] != 0 and targets[r, t] != 0]


def test_position_labels_are_the_next_interactions(movielens):
  ds, stars, genres = movielens
  tasks = {t.name: t for t in auxiliary.build_aux_tasks(
      aux_cfg(*ALL_TASKS[1:]), ds, model_cfg().to_dict())}
  for split in ("train", "val", "test"):
    batch = ds.splits[split]
    labels = {n: np.asarray(t.position_labels(batch))
              for n, t in tasks.items()}
    positions = real_positions(batch)
    assert positions
    for r, t in positions:
      item = int(batch["seq_targets"][r, t])
      want = stars[int(batch["user"][r]), item]
      assert labels["rating_all"][r, t] == want
      assert labels["like_all"][r, t] == float(want >= 4)
      np.testing.assert_array_equal(labels["genre_all"][r, t], genres[item])
    # The last position is the row's own target and its labels.
    np.testing.assert_array_equal(labels["rating_all"][:, -1],
                                  batch["rating"])
    np.testing.assert_array_equal(labels["genre_all"][:, -1],
                                  batch["target_genres"])


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _bce(logit, label):
  return np.logaddexp(0.0, logit) - label * logit


def test_losses_match_brute_force_over_real_positions(movielens):
  ds, stars, genres = movielens
  model, tasks, params, batch = build(ds)
  losses = np.asarray(model.apply({"params": params}, batch,
                                  jax.random.PRNGKey(0), train=False,
                                  method="aux_losses"))
  positions = real_positions(batch)
  users = np.asarray(batch["user"])
  for i, task in enumerate(tasks):
    out = position_outputs(model, params, task, batch)
    per = []
    for r, t in positions:
      item = int(batch["seq_targets"][r, t])
      s = stars[int(users[r]), item]
      o = out[r, t]
      if task.name == "next_all":
        logits = o.copy()
        logits[0] = -1e9
        per.append(-_log_softmax(logits)[item])
      elif task.name == "rating_all":
        per.append((o[0] - s) ** 2)
      elif task.name == "like_all":
        per.append(_bce(o[0], float(s >= 4)))
      else:
        per.append(np.mean(_bce(o, genres[item])))
    np.testing.assert_allclose(losses[i], np.mean(per), rtol=2e-5,
                               err_msg=task.name)


def test_outputs_are_causal_and_scores_are_the_last_position(movielens):
  ds, _, _ = movielens
  model, tasks, params, batch = build(ds)
  changed = dict(batch)
  ids = np.asarray(batch["hist_items"]).copy()
  ids[:, -1] = np.where(ids[:, -1] == 1, 2, 1)  # a different last item
  changed["hist_items"] = jnp.asarray(ids)
  scores = model.apply({"params": params}, batch, method="aux_scores")
  real = np.asarray(batch["hist_items"])[:, :-1] != 0
  for task in tasks:
    before = position_outputs(model, params, task, batch)
    after = position_outputs(model, params, task, changed)
    # Every real position before the last is blind to the last item.
    np.testing.assert_allclose(before[:, :-1][real], after[:, :-1][real],
                               atol=1e-5, err_msg=task.name)
    assert not np.allclose(before[:, -1], after[:, -1])
    np.testing.assert_allclose(np.asarray(scores[task.name]), before[:, -1],
                               rtol=1e-5, atol=1e-5, err_msg=task.name)
    assert task.eval_task.name == task.name


def test_rating_and_like_read_the_next_item_genre_does_not(movielens):
  ds, _, _ = movielens
  model, tasks, params, batch = build(ds)
  changed = dict(batch)
  targets = np.asarray(batch["seq_targets"]).copy()
  targets[:, -1] = np.where(targets[:, -1] == 1, 2, 1)
  changed["seq_targets"] = jnp.asarray(targets)
  for task in tasks[1:]:
    before = position_outputs(model, params, task, batch)[:, -1]
    after = position_outputs(model, params, task, changed)[:, -1]
    assert np.allclose(before, after) == (task.name == "genre_all"), task.name


def test_all_positions_tasks_need_a_causal_encoder(movielens):
  ds, _, _ = movielens
  with pytest.raises(ValueError, match="causal=True"):
    build(ds, ("rating_all",), causal=False)


def test_builder_errors_name_what_is_missing(movielens):
  ds, _, _ = movielens
  no_rating = ds.__class__(
      name=ds.name, splits=ds.splits, features=ds.features,
      tasks=tuple(t for t in ds.tasks if t.name != "rating"), info=ds.info)
  with pytest.raises(ValueError, match="dataset task 'rating'"):
    auxiliary.build_aux_tasks(aux_cfg("rating_all"), no_rating)
  no_meta = ds.__class__(
      name=ds.name, splits=ds.splits, features=ds.features, tasks=ds.tasks,
      info={k: v for k, v in ds.info.items() if k != "item_genre_ids"})
  with pytest.raises(ValueError, match="item_genre_ids"):
    auxiliary.build_aux_tasks(aux_cfg("genre_all"), no_meta)
  with pytest.raises(Exception, match="rating_all"):
    auxiliary.build_aux_tasks(aux_cfg("rating_al"), ds)


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
def test_next_all_sampled_losses_match_brute_force(movielens, loss):
  """The sampled softmax (target against shared uniform negatives, hits
  dropped) and SASRec's binary loss, from the full logits in numpy."""
  ds, _, _ = movielens
  cfg = model_cfg()
  aux = aux_cfg("next_all")
  aux["next_all"] = {**aux["next_all"], "loss": loss, "num_negatives": 30}
  (task,) = auxiliary.build_aux_tasks(aux, ds, cfg.to_dict())
  model = build_model(cfg, ds.features, (), (task,))
  batch = {k: jnp.asarray(v) for k, v in ds.splits["train"].items()}
  params = model.init(jax.random.PRNGKey(0), batch, jax.random.PRNGKey(1),
                      method="init_all")["params"]
  key = jax.random.PRNGKey(3)
  got = float(model.apply({"params": params}, batch, key, train=False,
                          method="aux_losses")[0])
  task_key = jax.random.split(key, 1)[0]  # aux_losses' key of task 0
  logits = position_outputs(model, params, task, batch)  # [B, L, V]
  targets = np.asarray(batch["seq_targets"])
  if loss == "sampled_softmax":
    negatives = np.asarray(task.sampled_negatives(task_key))
    assert negatives.shape == (30,) and negatives.min() >= 1
    assert negatives.max() < NUM_ITEMS + 1
  else:
    vocab = logits.shape[-1]
    shift = np.asarray(jax.random.randint(task_key, targets.shape, 1,
                                          vocab - 1))
    bce_negatives = 1 + (np.maximum(targets, 1) - 1 + shift) % (vocab - 1)
  per, hits = [], 0
  for r, t in real_positions(batch):
    row, target = logits[r, t], targets[r, t]
    if loss == "sampled_softmax":
      keep = negatives != target
      hits += int((~keep).sum())
      candidates = np.concatenate([[row[target]], row[negatives[keep]]])
      per.append(-_log_softmax(candidates)[0])
    else:
      per.append(_bce(row[target], 1.0)
                 + _bce(row[bce_negatives[r, t]], 0.0))
  if loss == "sampled_softmax":
    assert hits > 0  # the test covers accidental hits
  np.testing.assert_allclose(got, np.mean(per), rtol=2e-5)


def test_next_all_rejects_bad_settings(movielens):
  ds, _, _ = movielens
  for change, match in (({"loss": "sampled"}, "loss must be one of"),
                        ({"num_negatives": 0}, "num_negatives")):
    aux = aux_cfg("next_all")
    aux["next_all"] = {**aux["next_all"], **change}
    with pytest.raises(ValueError, match=match):
      auxiliary.build_aux_tasks(aux, ds)


def build_shared(ds, names, shared, dropout=0.0, softmax_impl="full"):
  """`build` with aux.next_all.shared_pass = `shared` and encoder dropout
  `dropout` (the towers' dropout stays 0: only the encoder draws masks)."""
  cfg = model_cfg()
  cfg.encoder.dropout = dropout
  cfg.encoder.attention_dropout = dropout
  aux = aux_cfg(*names)
  aux["next_all"] = {**aux["next_all"], "softmax_impl": softmax_impl,
                    "shared_pass": shared}
  tasks = auxiliary.build_aux_tasks(aux, ds, cfg.to_dict())
  model = build_model(cfg, ds.features, (), tasks)
  batch = {k: jnp.asarray(v) for k, v in ds.splits["train"].items()}
  params = model.init(jax.random.PRNGKey(0), batch, jax.random.PRNGKey(1),
                      method="init_all")["params"]
  return model, params, batch


def aux_losses_fn(model, batch, train, seed=2):
  def losses(p):
    return model.apply({"params": p}, batch, jax.random.PRNGKey(seed),
                       train=train, rngs={"dropout": jax.random.PRNGKey(7)},
                       method="aux_losses")
  return losses


@pytest.mark.parametrize("softmax_impl", ["full", "fused"])
def test_shared_pass_equals_separate_passes_without_dropout(movielens,
                                                            softmax_impl):
  """One shared encoder pass gives every task the loss and the gradient
  (each row of the [A, params] Jacobian, what params-mode strategies read)
  of its own pass, up to float rounding; mim (masked input) keeps its own."""
  ds, _, _ = movielens
  names = ALL_TASKS[:2] + ("mim",) + ALL_TASKS[2:]
  sep, params, batch = build_shared(ds, names, False,
                                    softmax_impl=softmax_impl)
  one, params_one, _ = build_shared(ds, names, True,
                                    softmax_impl=softmax_impl)
  assert jax.tree_util.tree_structure(params) == \
      jax.tree_util.tree_structure(params_one)
  for train in (False, True):  # train=True: dropout rates are 0
    a = aux_losses_fn(sep, batch, train)
    b = aux_losses_fn(one, batch, train)
    np.testing.assert_allclose(b(params), a(params), rtol=1e-6, atol=1e-7)
    ja, jb = jax.jacrev(a)(params), jax.jacrev(b)(params)
    for x, y in zip(jax.tree_util.tree_leaves(ja),
                    jax.tree_util.tree_leaves(jb)):
      np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
    enc = jb["shared"]["feature_encoder"]
    assert any(float(jnp.abs(g[i]).max()) > 0
               for g in jax.tree_util.tree_leaves(enc) for i in range(4))


def _encoder_passes(model, params, batch):
  """Encoder passes in one training step's aux losses: the `random_bits`
  draws of the encoder's input dropout (one [B, L, hidden] draw a pass)."""
  width = model.encoder.hidden_dim
  shape = tuple(np.shape(batch["hist_items"])) + (width,)
  count = 0

  def visit(jx):
    nonlocal count
    jx = getattr(jx, "jaxpr", jx)
    for eqn in jx.eqns:
      if eqn.primitive.name == "random_bits" and tuple(
          eqn.outvars[0].aval.shape) == shape:
        count += 1
      for v in eqn.params.values():
        for sub in (v if isinstance(v, (tuple, list)) else (v,)):
          if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
            visit(sub)
  visit(jax.make_jaxpr(aux_losses_fn(model, batch, True))(params))
  return count


def test_shared_pass_with_dropout_shares_the_first_pass_masks(movielens):
  """With dropout, the sharing tasks read the first sharing task's pass:
  next_all's loss is the one of its own pass (it draws first, as before),
  rating_all's is the one it gets when IT encodes first; 4 separate passes
  become 1 (the per-layer residual dropouts draw 2 more [B, L, hidden]
  arrays a layer, so count those too)."""
  ds, _, _ = movielens
  pair = ("next_all", "rating_all")
  one, params, batch = build_shared(ds, pair, True, dropout=0.3)
  sep, _, _ = build_shared(ds, pair, False, dropout=0.3)
  rev, _, _ = build_shared(ds, pair[::-1], False, dropout=0.3)
  shared = np.asarray(aux_losses_fn(one, batch, True)(params))
  alone = np.asarray(aux_losses_fn(sep, batch, True)(params))
  first = np.asarray(aux_losses_fn(rev, batch, True)(params))
  np.testing.assert_allclose(shared[0], alone[0], rtol=1e-6)
  np.testing.assert_allclose(shared[1], first[0], rtol=1e-6)
  assert abs(shared[1] - alone[1]) > 1e-6  # its own masks differed
  four_one, p4, b4 = build_shared(ds, ALL_TASKS, True, dropout=0.3)
  four_sep, _, _ = build_shared(ds, ALL_TASKS, False, dropout=0.3)
  per_pass = _encoder_passes(sep, params, batch) // 2
  assert per_pass >= 1
  assert _encoder_passes(four_one, p4, b4) == per_pass
  assert _encoder_passes(four_sep, p4, b4) == 4 * per_pass


def test_shared_pass_must_be_a_bool(movielens):
  ds, _, _ = movielens
  aux = aux_cfg("next_all", "rating_all")
  aux["next_all"] = {**aux["next_all"], "shared_pass": "false"}
  with pytest.raises(ValueError, match="shared_pass must be a bool"):
    auxiliary.build_aux_tasks(aux, ds)
  aux["next_all"]["shared_pass"] = True
  assert all(t.shared_pass for t in auxiliary.build_aux_tasks(aux, ds))
  aux["tasks"] = ("rating_all", "mim")  # no next_all: nothing to share
  assert not any(getattr(t, "shared_pass", False)
                 for t in auxiliary.build_aux_tasks(aux, ds))

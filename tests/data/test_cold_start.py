"""The MovieLens cold-start split (``data.cold_start_items``): items held out
of training entirely, on tiny official-format files (the real ML-100K too
when $MTREC_DATA_DIR is set), and `ml100k-text-coldstart`'s grid."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mtrec_jax import config as config_lib
from mtrec_jax.data import movielens as ml

from test_movielens import write_100k  # tiny 100K-format files

NUM_ITEMS, NUM_USERS = 30, 12


@pytest.fixture
def ratings():
  """Random ratings with many timestamp ties; every user has >= 8."""
  rng = np.random.default_rng(7)
  out = []
  for user in range(1, NUM_USERS + 1):
    n = int(rng.integers(8, 20))
    for item, t in zip(rng.choice(NUM_ITEMS, n, replace=False) + 1,
                       rng.integers(0, 6, n)):
      out.append((user, int(item), int(rng.integers(1, 6)), int(t)))
  return out


@pytest.fixture
def folder(tmp_path, ratings) -> Path:
  items = {i: (f"Movie {i} (1990)", "", (0, int(i % 2), int(i % 3 == 0)))
           for i in range(1, NUM_ITEMS + 1)}
  users = {u: (25, "M", "writer", "12345") for u in range(1, NUM_USERS + 1)}
  return write_100k(tmp_path / "ml-100k", ratings, items, users)


def build(folder: Path, **kwargs):
  raw = ml.read_movielens(folder, "100k", strict_counts=False)
  return ml.movielens_dataset(raw, **{"max_len": 4, **kwargs})


def sequences(ratings) -> dict[int, list[tuple[int, int]]]:
  """user -> [(item, stars)] in split order: (timestamp, item id)."""
  out = {}
  for user in sorted({r[0] for r in ratings}):
    rows = sorted((t, i, r) for u, i, r, t in ratings if u == user)
    out[user] = [(i, r) for _, i, r in rows]
  return out


def rows_of(columns, user):
  keep = columns["user"] == user
  return {k: v[keep] for k, v in columns.items()}


def test_held_out_items_never_reach_training_or_validation(folder, ratings):
  ds = build(folder, cold_start_items=0.4, train_examples="prefixes")
  info = ds.info["cold_start"]
  held = set(info["items"])
  assert held and info["fraction"] == 0.4 and info["seed"] == 0
  for split in ("train", "val"):
    columns = ds.splits[split]
    for key in ("hist_items", "target_item", "seq_targets", "cand_item",
                "exclude"):
      if key in columns:  # train has no 'exclude'
        assert not held & set(columns[key].ravel().tolist()), (split, key)
  # Popularity (the baseline, and `cold_items`) counts none of them.
  popularity = np.asarray(ds.info["item_popularity"])
  assert not popularity[sorted(held)].any()
  # The 'unseen' sampler's training items (val 'exclude') hold none either.
  from mtrec_jax.tasks.auxiliary import training_items
  seen = training_items(ds, "hist_items", NUM_ITEMS + 1)
  assert not seen[:, sorted(held)].any()

  # Against the rule written out by hand: drop every held-out interaction
  # but the user's last, then the leave-one-out split.
  removed = 0
  for user, seq in sequences(ratings).items():
    kept = [(i, r) for i, r in seq[:-1] if i not in held] + [seq[-1]]
    removed += len(seq) - len(kept)
    items = [i for i, _ in kept]
    tr, v, te = (rows_of(ds.splits[s], user) for s in ("train", "val",
                                                      "test"))
    assert tr["target_item"].tolist() == items[1:-2]
    assert v["target_item"].tolist() == [items[-2]]
    assert te["target_item"].tolist() == [seq[-1][0]]  # unchanged target
    past = items[:-1][-4:]
    assert te["hist_items"][0].tolist() == [0] * (4 - len(past)) + past
    assert te["hist_ratings"][0, -len(past):].tolist() == [
        float(r) for _, r in kept[:-1][-4:]]
    assert te["hist_len"].tolist() == [len(past)]
    # Test exclusions: the full past, held-out items included.
    full = [i for i, _ in seq[:-1]]
    assert [i for i in te["exclude"][0].tolist() if i] == full
  assert info["removed_interactions"] == removed > 0
  assert info["dropped_users"] == 0


def test_test_rows_with_held_out_targets_exist_and_keep_history(folder):
  ds = build(folder, cold_start_items=0.5)
  held = np.asarray(ds.info["cold_start"]["items"])
  test = ds.splits["test"]
  rows = np.isin(test["target_item"], held)
  assert rows.sum() == ds.info["cold_start"]["test_rows"] > 0
  assert (test["hist_len"][rows] > 0).all()
  assert not np.isin(test["hist_items"][rows], held).any()
  # Every user keeps a test row: the split drops no one here.
  assert ds.num_examples("test") == NUM_USERS
  plain = build(folder)
  np.testing.assert_array_equal(test["target_item"],
                                plain.splits["test"]["target_item"])
  np.testing.assert_array_equal(test["exclude"], plain.splits["test"]["exclude"])


def test_sequences_rows_hold_no_held_out_item(folder):
  ds = build(folder, cold_start_items=0.4, train_examples="sequences")
  held = ds.info["cold_start"]["items"]
  train = ds.splits["train"]
  assert ds.num_examples("train") == NUM_USERS  # one row per user
  for key in ("hist_items", "seq_targets", "target_item"):
    assert not np.isin(train[key], held).any(), key


def test_choice_is_fixed_and_sized_by_the_fraction(folder):
  plain = build(folder)
  targets = plain.splits["test"]["target_item"]
  candidates = np.unique(targets)
  for fraction in (0.1, 0.4, 0.9):
    ds = build(folder, cold_start_items=fraction)
    held = ds.info["cold_start"]["items"]
    assert held == sorted(held) and set(held) <= set(candidates.tolist())
    assert len(held) == max(1, round(fraction * candidates.size))
    np.random.seed(123)  # NumPy's global state plays no part
    assert held == ml.cold_start_choice(targets, fraction).tolist()
  assert ml.cold_start_choice(targets, 0.0).size == 0


def test_same_choice_for_every_run_seed(tmp_path, folder):
  """Through the config and the registered builder (the prepared copy):
  the run seed does not move the held-out items."""
  import mtrec_jax.data  # noqa: F401  (registers the datasets)
  from mtrec_jax.train import loop
  cfg = config_lib.base_config()
  cfg.data = config_lib.ConfigDict(
      {"name": "movielens", "data_dir": str(folder), "max_len": 4,
       "strict_counts": False, "tfds_dir": str(tmp_path / "tfds"),
       "cold_start_items": 0.4})
  held = []
  for seed in (0, 1, 2):
    cfg.seed = seed
    loop.clear_dataset_cache()
    ds = loop.load_dataset(cfg)
    held.append(ds.info["cold_start"]["items"])
  loop.clear_dataset_cache()
  assert held[0] == held[1] == held[2]
  assert held[0] == build(folder, cold_start_items=0.4).info[
      "cold_start"]["items"]


def _same(a, b):
  assert a.features == b.features and a.tasks == b.tasks
  assert json.dumps(a.info, sort_keys=True) == json.dumps(b.info,
                                                          sort_keys=True)
  for split in a.splits:
    assert a.splits[split].keys() == b.splits[split].keys()
    for key, x in a.splits[split].items():
      y = b.splits[split][key]
      assert x.dtype == y.dtype and x.shape == y.shape, (split, key)
      assert x.tobytes() == y.tobytes(), (split, key)


def test_off_by_default_is_byte_identical(folder):
  plain = build(folder)
  assert "cold_start" not in plain.info
  for off in (0, 0.0):
    _same(build(folder, cold_start_items=off), plain)


def test_off_keeps_the_prepared_copy_key(monkeypatch, folder):
  """0 passes the builder the same arguments as before the key existed, so
  existing prepared copies are reused; > 0 gets its own copy."""
  from mtrec_jax.data import array_record, builders
  seen = []
  monkeypatch.setattr(builders, "_prepare",
                      lambda cls, source, prefix, kwargs, tfds_dir:
                      seen.append(array_record.config_name(prefix, kwargs)))
  base = dict(seed=0, data_dir=str(folder), strict_counts=False)
  builders.movielens_data(**base)
  builders.movielens_data(**base, cold_start_items=0.0)
  builders.movielens_data(**base, cold_start_items=0.2)
  builders.movielens_data(**base, cold_start_items=0.3)
  assert seen[0] == seen[1] and len({seen[1], seen[2], seen[3]}) == 3


def test_off_keeps_every_run_hash():
  """Only the cold-start grid has the key; without it, its runs are
  `ml100k-text`'s runs (the key is the only difference)."""
  from mtrec_jax.experiment import get_experiment
  from experiments import ml100k_text
  text = get_experiment("ml100k-text").runs()
  cold = get_experiment("ml100k-text-coldstart").runs()
  assert all("cold_start_items" not in r.config.data for r in text)
  for name in ("ml100k-mtl", "ml100k-sasrec"):
    assert all("cold_start_items" not in r.config.data
               for r in get_experiment(name).runs())
  by_name = {r.name: r.config for r in text}
  for run in cold:
    assert run.config.data.cold_start_items == \
        ml100k_text.COLD_START_FRACTION
    ident = config_lib.identity(run.config)
    del ident["data"]["cold_start_items"]
    assert ident == config_lib.identity(by_name[run.name])
    assert config_lib.config_hash(run.config) != config_lib.config_hash(
        by_name[run.name])


@pytest.mark.parametrize("bad", [-0.1, 1, 1.0, 1.5, float("nan"), "0.2",
                                 True, None])
def test_bad_values_name_the_key_and_range(folder, bad):
  match = r"data\.cold_start_items must be a fraction in \[0, 1\)"
  with pytest.raises(ValueError, match=match):
    build(folder, cold_start_items=bad)
  from mtrec_jax.data import builders
  with pytest.raises(ValueError, match=match):  # before reading any file
    builders.movielens_data(data_dir="/nonexistent", cold_start_items=bad)


def test_coldstart_grid_and_slice():
  from mtrec_jax.experiment import get_experiment
  from experiments import ml100k_text
  exp = get_experiment("ml100k-text-coldstart")
  assert exp.seeds == (0, 1, 2)
  assert {"ids", "frozen"} <= set(exp.axis("item").labels())
  assert exp.report is ml100k_text.coldstart_report
  targets = np.array([3, 1, 4, 1, 5])
  ds = SimpleNamespace(
      tasks=[SimpleNamespace(name="next_item", label="target_item")],
      info={"cold_start": {"items": [1, 5]}},
      split=lambda name: {"target_item": targets})
  assert ml100k_text.held_out_rows(ds).tolist() == [False, True, False, True,
                                                    True]
  ds.info = {}
  assert not ml100k_text.held_out_rows(ds).any()
  with pytest.raises(ValueError, match="data.cold_start_items > 0"):
    ml100k_text.coldstart_report({}, ds)


def test_real_movielens_100k_cold_start():
  root = os.environ.get(ml.DATA_DIR_ENV)
  if not root:
    pytest.skip(f"${ml.DATA_DIR_ENV} is unset")
  raw = ml.read_movielens(Path(root) / "ml-100k", "100k")
  from experiments.ml100k_text import COLD_START_FRACTION
  ds = ml.movielens_dataset(raw, train_examples="sequences",
                            cold_start_items=COLD_START_FRACTION)
  info = ds.info["cold_start"]
  held = np.asarray(info["items"])
  for split in ("train", "val"):
    for key in ("hist_items", "seq_targets", "target_item", "exclude"):
      if key in ds.splits[split]:
        assert not np.isin(ds.splits[split][key], held).any(), (split, key)
  test = ds.splits["test"]
  rows = np.isin(test["target_item"], held)
  assert rows.sum() == info["test_rows"] > 0
  assert info["dropped_users"] == 0 and ds.num_examples("test") == 943
  assert sum(ds.info["item_popularity"]) + info["removed_interactions"] == (
      100_000 - 2 * 943)

"""Datasets through TFDS + ArrayRecord: exact round trips, keys, damage."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

import mtrec_jax.data  # noqa: F401  (registers the datasets)
from mtrec_jax.data import array_record, census, movielens
from mtrec_jax.data import stored_synthetic
from mtrec_jax.data.stored_synthetic import load_synthetic
from mtrec_jax.registry import DATASETS

from test_census import make_rows, write  # tiny official-format files
from test_movielens import write_100k


def assert_same(a, b):
  assert a.name == b.name and a.features == b.features and a.tasks == b.tasks
  assert a.info == b.info
  assert set(a.splits) == set(b.splits)
  for split in b.splits:
    assert set(a.splits[split]) == set(b.splits[split]), split
    for key, want in b.splits[split].items():
      got = a.splits[split][key]
      assert got.dtype == want.dtype and got.shape == want.shape, key
      np.testing.assert_array_equal(got, want, err_msg=f"{split}/{key}")


@pytest.mark.parametrize("name,kwargs", [
    ("mmoe_synthetic", dict(n_train=2500, n_val=40, n_test=30)),
    ("gradnorm_toy", dict(num_tasks=3, n_train=50, n_val=10, n_test=10)),
])
def test_synthetic_round_trip_is_exact(tmp_path, name, kwargs):
  stored = load_synthetic(name, storage="array_record", tfds_dir=tmp_path,
                          seed=3, **kwargs)
  assert_same(stored, DATASETS.get(name)(seed=3, **kwargs))
  # Train rows span several records (row blocks), put back in order.
  [info] = tmp_path.rglob("dataset_info.json")
  blocks = tfds.builder_from_directory(info.parent).as_data_source()["train"]
  assert len(blocks) == -(-kwargs["n_train"] // array_record.BLOCK_ROWS)
  again = load_synthetic(name, storage="array_record", tfds_dir=tmp_path,
                         seed=3, **kwargs)
  assert_same(again, stored)


def test_storage_name_is_checked(tmp_path):
  with pytest.raises(ValueError, match="memory, array_record"):
    load_synthetic("mmoe_synthetic", storage="disk", seed=0)


def test_storable_is_a_registration_flag():
  assert DATASETS.names(storable=True) == ["gradnorm_toy", "mmoe_synthetic",
                                           "uncertainty_toy"]
  assert DATASETS.info("mmoe_synthetic") == {"storable": True}
  assert "storable" not in DATASETS.info("movielens")
  assert callable(DATASETS.info("movielens")["source"])  # data identity
  assert stored_synthetic.GENERATORS == tuple(DATASETS.names(storable=True))
  with pytest.raises(ValueError, match="not storable.*gradnorm_toy"):
    load_synthetic("movielens", storage="array_record", seed=0)


def test_load_reads_storable_and_other_datasets_alike(tmp_path):
  kwargs = dict(num_tasks=2, n_train=30, n_val=10, n_test=10)
  assert_same(stored_synthetic.load("gradnorm_toy", storage="array_record",
                                    tfds_dir=tmp_path, seed=1, **kwargs),
              DATASETS.get("gradnorm_toy")(seed=1, **kwargs))
  assert_same(stored_synthetic.load("gradnorm_toy", seed=1, **kwargs),
              DATASETS.get("gradnorm_toy")(seed=1, **kwargs))


def test_the_train_loop_loads_through_the_same_call(tmp_path, monkeypatch):
  """`train.loop.load_dataset` has no dataset-specific branch: `data.storage`
  reaches `stored_synthetic.load`, so 'array_record' reads a prepared copy
  (written under MTREC_TFDS_DIR) equal to the in-memory generator's."""
  from mtrec_jax import config as config_lib
  from mtrec_jax.train import loop
  monkeypatch.setenv("MTREC_TFDS_DIR", str(tmp_path))
  datasets = {}
  for storage in ("memory", "array_record"):
    cfg = config_lib.base_config()
    cfg.seed = 1
    cfg.data = config_lib.ConfigDict(
        {"name": "gradnorm_toy", "storage": storage, "num_tasks": 2,
         "n_train": 30, "n_val": 10, "n_test": 10})
    loop.clear_dataset_cache()
    datasets[storage] = loop.load_dataset(cfg)
  loop.clear_dataset_cache()
  assert any(tmp_path.iterdir())  # the prepared copy was written and read
  assert_same(datasets["array_record"], datasets["memory"])


def test_movielens_builder_round_trip_and_source_key(tmp_path):
  source = write_100k(tmp_path / "ml-100k")
  kwargs = dict(data_dir=str(source), max_len=3, strict_counts=False,
                tfds_dir=str(tmp_path / "tfds"))
  stored = DATASETS.get("movielens")(seed=0, **kwargs)
  direct = movielens.movielens_dataset(
      movielens.read_movielens(source, "100k", strict_counts=False),
      max_len=3)
  assert_same(stored, direct)
  assert "exclude" in stored.splits["test"]
  assert "exclude" not in stored.splits["train"]  # split-specific column
  # Editing a source file prepares a new copy instead of reusing the old one.
  with open(source / "u.data", "a") as f:
    f.write("2\t7\t3\t1300\n")
  changed = DATASETS.get("movielens")(seed=0, **kwargs)
  assert changed.info["num_ratings"] == direct.info["num_ratings"] + 1
  assert len(list((tmp_path / "tfds" / "mtrec_movielens").iterdir())) == 2


def test_census_builder_round_trip(tmp_path):
  source = tmp_path / "census-income"
  source.mkdir()
  write(source / "census-income.test.gz", make_rows(300))
  for pair in census.TASK_PAIRS:
    stored = DATASETS.get("census_income")(
        seed=0, data_dir=str(source), task_pair=pair,
        tfds_dir=str(tmp_path / "tfds"))
    assert_same(stored, census.load_census_income(source, task_pair=pair))


def test_damaged_copy_fails_loudly(tmp_path):
  kwargs = dict(n_train=20, n_val=5, n_test=5)
  load_synthetic("mmoe_synthetic", storage="array_record", tfds_dir=tmp_path,
                 seed=0, **kwargs)
  [meta_file] = tmp_path.rglob("metadata.json")
  meta = json.loads(meta_file.read_text())
  meta["mtrec_split_columns"]["train"]["x"]["rows"] = 21
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="damaged or stale.*delete"):
    load_synthetic("mmoe_synthetic", storage="array_record",
                   tfds_dir=tmp_path, seed=0, **kwargs)


def test_missing_source_names_the_fix(tmp_path, monkeypatch):
  monkeypatch.delenv("MTREC_DATA_DIR", raising=False)
  with pytest.raises(FileNotFoundError, match="MTREC_DATA_DIR"):
    DATASETS.get("census_income")(tfds_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    DATASETS.get("movielens")(data_dir=str(tmp_path / "nope"),
                              tfds_dir=str(tmp_path))


def _real_data_dir() -> Path | None:
  root = os.environ.get("MTREC_DATA_DIR")
  return Path(root) if root else None


@pytest.mark.skipif(_real_data_dir() is None,
                    reason="set MTREC_DATA_DIR to run on the real files")
def test_real_datasets_through_the_store(tmp_path):
  """Fails (not skips) when MTREC_DATA_DIR is set but the data is missing."""
  ml = DATASETS.get("movielens")(seed=0, tfds_dir=str(tmp_path))
  assert ml.info["num_ratings"] == 100_000
  assert ml.info["num_users"] == 943 and ml.info["num_items"] == 1682
  assert {s: ml.num_examples(s) for s in ("val", "test")} == {"val": 943,
                                                             "test": 943}
  ci = DATASETS.get("census_income")(seed=0, tfds_dir=str(tmp_path))
  n = sum(ci.num_examples(s) for s in ("train", "val", "test"))
  assert n == 99_762
  assert ci.num_examples("train") == int(0.6 * n)


def test_empty_split_is_refused_with_the_fix(tmp_path):
  with pytest.raises(ValueError, match="'test' is empty.*in memory"):
    load_synthetic("mmoe_synthetic", storage="array_record", tfds_dir=tmp_path,
                   seed=0, n_train=10, n_val=2, n_test=0)

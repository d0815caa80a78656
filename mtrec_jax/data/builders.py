"""The real datasets as TFDS builders, registered under their dataset names.

    data.name = 'census_income'   UCI Census-Income (KDD), `census.py`
    data.name = 'movielens'       MovieLens 100K / 1M, `movielens.py`

The source files are never downloaded: they are TFDS "manual" files, found
in `data.data_dir` or under $MTREC_DATA_DIR (`census-income/`, `ml-100k/` or
`ml-100k.zip`).  The first run parses them and writes an ArrayRecord copy
under `data.tfds_dir` ($MTREC_TFDS_DIR, default ~/.cache/mtrec_jax/tfds);
later runs read that copy.  The copy is keyed by the parse arguments and by
the content hash of the source files (`identity.source_hash`, cached by
inode, size, mtime and ctime), so editing a source file or an argument
prepares a new copy instead of reusing a stale one, even when the edit kept
the file's name, size and modification time (``cp -p``, ``rsync -a``).  Each
dataset's registration flag ``source`` finds its files, so a run's data
identity (`identity.identity`) is part of its result and of its identity in
the results store.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mtrec_jax.data import array_record, census, identity, movielens
from mtrec_jax.data.dataset import Dataset
from mtrec_jax.registry import DATASETS, UnknownNameError, unknown_name_message

DATA_DIR_ENV = "MTREC_DATA_DIR"


def resolve_source(data_dir: str | None, default_child: str,
                   dataset: str) -> Path:
  """`data_dir`, else $MTREC_DATA_DIR/<default_child>; must exist."""
  if data_dir:
    path = Path(data_dir).expanduser()
  else:
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
      raise FileNotFoundError(
          f"dataset {dataset!r}: no source folder; set ${DATA_DIR_ENV} to the "
          f"folder holding {default_child}/ or set data.data_dir")
    path = Path(root).expanduser() / default_child
  if not path.exists():
    raise FileNotFoundError(
        f"dataset {dataset!r}: source {str(path)!r} does not exist; point "
        f"data.data_dir (or ${DATA_DIR_ENV}) at the folder with the files")
  return path


def _prepare(builder_cls, source: Path, prefix: str, kwargs: dict[str, Any],
             tfds_dir: str | None) -> Dataset:
  config = array_record.kwargs_config(
      prefix, {**kwargs, "source": str(source.resolve()),
               "content": identity.source_hash(source)["hash"]})
  return array_record.prepare_and_read(builder_cls, manual_dir=source,
                                       data_dir=tfds_dir, config=config)


# ----------------------------------------------------------------------------
# UCI Census-Income (KDD).


class MtrecCensusIncome(array_record.ColumnarBuilder):
  """UCI Census-Income (KDD), two binary tasks (the MMoE paper's benchmark)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Train-fitted vocabularies and standardisation."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Place census-income.test(.gz) (and optionally census-income.data(.gz))"
      f" from {census.URL} in the manual folder.")

  def columns(self):
    pair = self.builder_config.kwargs["task_pair"]
    labels = census.TASK_PAIRS[pair]
    # Label sources (income, marital stat, and education when it is a
    # label), numerics and the weight are never categorical features.
    not_categorical = set(labels) | set(census.NUMERIC_COLUMNS) | {
        census.WEIGHT_COLUMN, "income", "marital_stat"}
    cols = {c: (np.int32, 0) for c in census.COLUMN_IDS
            if c not in not_categorical}
    cols.update({t: (np.float32, 0) for t in labels})
    cols.update({"numeric": (np.float32, 1),
                 census.WEIGHT_COLUMN: (np.float32, 0)})
    return cols

  def parse(self, manual_dir: Path | None) -> Dataset:
    kwargs = self.builder_config.kwargs
    return census.load_census_income(manual_dir, task_pair=kwargs["task_pair"],
                                     embed_dim=kwargs["embed_dim"])


def _census_source(kwargs: dict[str, Any]) -> Path:
  return resolve_source(kwargs.get("data_dir"), "census-income",
                        "census_income")


@DATASETS.register("census_income", source=_census_source)
def census_income(*, seed: int = 0, data_dir: str = "",
                  task_pair: str = "income_marital", embed_dim: int = 4,
                  tfds_dir: str = "") -> Dataset:
  """Census-Income with the documented split (see `census.py`); the split
  is fixed, so `seed` only seeds training."""
  del seed
  source = resolve_source(data_dir, "census-income", "census_income")
  if task_pair not in census.TASK_PAIRS:  # fail before preparing anything
    raise UnknownNameError("data.task_pair: " + unknown_name_message(
        "census task pair", task_pair, census.TASK_PAIRS))
  return _prepare(MtrecCensusIncome, source, "census_income",
                  {"task_pair": task_pair, "embed_dim": int(embed_dim)},
                  tfds_dir or None)


# ----------------------------------------------------------------------------
# MovieLens.


class MtrecMovielens(array_record.ColumnarBuilder):
  """MovieLens 100K / 1M, leave-last-out sequential examples."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Next-item, rating, like and genre labels.",
                   "1.1.0": "seq_targets; train_examples='sequences'."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Place ml-100k/ (extracted) or ml-100k.zip (or the 1M release) from "
      f"{movielens.DOWNLOAD_URL} in the manual folder.")
  COLUMNS = {
      **{c: (np.int32, 0) for c in ("user", "gender", "age", "occupation",
                                    "zip", "hist_len", "target_item",
                                    "cand_item")},
      "hist_items": (np.int32, 1), "hist_ratings": (np.float32, 1),
      "seq_targets": (np.int32, 1),
      "rating": (np.float32, 0), "like": (np.float32, 0),
      "target_genres": (np.float32, 1), "exclude": (np.int32, 1),
  }

  def parse(self, manual_dir: Path | None) -> Dataset:
    kwargs = dict(self.builder_config.kwargs)
    raw = movielens.read_movielens(manual_dir, kwargs["variant"],
                                   strict_counts=kwargs["strict_counts"])
    return movielens.movielens_dataset(
        raw, max_len=kwargs["max_len"],
        min_interactions=kwargs["min_interactions"],
        embed_dim=kwargs["embed_dim"],
        train_examples=kwargs["train_examples"],
        cold_start_items=kwargs.get("cold_start_items", 0.0))


def _movielens_source(kwargs: dict[str, Any]) -> Path:
  variant = movielens.normalize_variant(kwargs.get("variant", "100k"))
  return resolve_source(kwargs.get("data_dir"), f"ml-{variant}", "movielens")


@DATASETS.register("movielens", source=_movielens_source)
def movielens_data(*, seed: int = 0, data_dir: str = "", variant: str = "100k",
                   max_len: int = 50, min_interactions: int = 3,
                   embed_dim: int = 16, strict_counts: bool = True,
                   train_examples: str = "prefixes",
                   cold_start_items: float = 0.0,
                   tfds_dir: str = "") -> Dataset:
  """MovieLens with the leave-last-out split (see `movielens.py`); the split
  is fixed, so `seed` only seeds training.  `strict_counts=False` accepts
  files smaller than the official release (a sample, or test files).
  `train_examples`: 'prefixes' (every history position a target) or
  'sequences' (one row per user, for all-positions training).
  `cold_start_items`: the fraction of test-target items held out of
  training (`movielens.COLD_START_RULE`); 0 = off.  It joins the prepared
  copy's key only when > 0, so the copies (and runs) without it keep
  theirs."""
  del seed
  variant = movielens.normalize_variant(variant)
  if train_examples not in movielens.TRAIN_EXAMPLES:  # fail before parsing
    raise UnknownNameError("data.train_examples: " + unknown_name_message(
        "train_examples", train_examples, movielens.TRAIN_EXAMPLES))
  cold = movielens.check_cold_start_items(cold_start_items)
  source = resolve_source(data_dir, f"ml-{variant}", "movielens")
  kwargs = {"variant": variant, "max_len": int(max_len),
            "min_interactions": int(min_interactions),
            "embed_dim": int(embed_dim),
            "strict_counts": bool(strict_counts),
            "train_examples": train_examples}
  if cold > 0:
    kwargs["cold_start_items"] = cold
  return _prepare(MtrecMovielens, source, f"movielens_{variant}", kwargs,
                  tfds_dir or None)

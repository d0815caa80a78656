"""The synthetic benchmarks through the ArrayRecord store (`data.storage`).

The synthetic generators are fast enough to run in memory, which is the
default.  With `data.storage = 'array_record'` a run instead reads them back
from a prepared TFDS copy, exactly as the real datasets are read, so the
synthetic benchmarks exercise the same pipeline (and a test checks that both
paths give identical arrays).

Which datasets can be stored this way is a flag of their registration,
``@DATASETS.register(name, storable=True)``, not a list kept here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mtrec_jax.data import array_record
from mtrec_jax.data.dataset import Dataset
from mtrec_jax.registry import DATASETS

STORAGES = ("memory", "array_record")

# Label columns are named y<i> by every synthetic generator.
MAX_LABEL_COLUMNS = 64


class MtrecSynthetic(array_record.ColumnarBuilder):
  """A synthetic benchmark of mtrec_jax, generated from its config kwargs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Row blocks of the in-memory generators."}
  COLUMNS = {"x": (np.float32, 1),
             **{f"y{i}": (np.float32, 1) for i in range(MAX_LABEL_COLUMNS)}}

  def parse(self, manual_dir: Path | None) -> Dataset:
    kwargs = dict(self.builder_config.kwargs)
    return DATASETS.get(kwargs.pop("dataset"))(**kwargs)


def __getattr__(name: str):
  if name == "GENERATORS":  # the storable datasets, from their registration
    return tuple(DATASETS.names(storable=True))
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(name: str, *, storage: str = "memory", **kwargs: Any) -> Dataset:
  """Any registered dataset by name: a storable one (a generator) in memory
  or from its prepared copy, as `storage` says; any other reads its own
  files (real datasets always go through their prepared copy), so
  `storage` does not apply to it."""
  if DATASETS.info(name).get("storable"):
    return load_synthetic(name, storage=storage, **kwargs)
  return DATASETS.get(name)(**kwargs)


def load_synthetic(name: str, *, storage: str, tfds_dir=None,
                   **kwargs: Any) -> Dataset:
  """Runs generator `name` in memory or reads its prepared ArrayRecord copy."""
  if not DATASETS.info(name).get("storable"):
    raise ValueError(f"dataset {name!r} is not storable; the storable ones "
                     f"are {', '.join(DATASETS.names(storable=True))} "
                     f"(registered with storable=True)")
  if storage not in STORAGES:
    raise ValueError(f"data.storage must be one of {', '.join(STORAGES)}, got "
                     f"{storage!r}")
  if storage == "memory":
    return DATASETS.get(name)(**kwargs)
  config = array_record.kwargs_config(name, {"dataset": name, **kwargs})
  return array_record.prepare_and_read(MtrecSynthetic, manual_dir=None,
                                       data_dir=tfds_dir, config=config)

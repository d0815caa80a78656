"""TFDS builders that store a parsed `Dataset` as ArrayRecord, and read it back.

Real datasets are parsed once (GroupLens / UCI files -> a `Dataset` of column
arrays), written by a TFDS `GeneratorBasedBuilder` as versioned ArrayRecord
files with their features, tasks and facts in the TFDS metadata, and read by
later runs without parsing again (no TensorFlow needed: TFDS's NumPy path).

Storage layout: one ArrayRecord record holds a *block* of `BLOCK_ROWS`
consecutive rows, column by column.  Row-per-record storage decodes each row
in Python, which made loading Census-Income slow; blocks make loading a split
a few dozen decodes (the load time: `benchmarks/results/input_pipeline.md`,
column "load s"), and shuffling happens later, over rows in memory
(`mtrec_jax.data.pipeline`).  Every column is declared with a leading row
dimension and free trailing dimensions of a fixed rank, so per-split widths
(e.g. the history-exclusion list of an evaluation split) need no fixed
schema; a column of lower rank is stored with trailing unit dims.  The exact
row shape and dtype of every column of every split is kept in the metadata and
checked on load, so a damaged or stale copy fails loudly.

A subclass sets `VERSION` (bump it when the parsed output changes, so stale
copies are rebuilt), `COLUMNS` (column -> (dtype, per-row rank)) or
`columns()`, and implements `parse(manual_dir)`; see `builders.py`.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from mtrec_jax.data.dataset import Dataset
from mtrec_jax.specs import FeatureSpec
from mtrec_jax.tasks.spec import TaskSpec

BLOCK_ROWS = 1024
DEFAULT_TFDS_DIR = "~/.cache/mtrec_jax/tfds"


def tfds_dir(path: str | os.PathLike | None = None) -> Path:
  """Where prepared datasets live: `path`, $MTREC_TFDS_DIR, or the default."""
  chosen = path or os.environ.get("MTREC_TFDS_DIR") or DEFAULT_TFDS_DIR
  return Path(chosen).expanduser()


class ColumnarBuilder(tfds.core.GeneratorBasedBuilder):
  """Writes the splits of `parse(manual_dir)` in row blocks (see module doc)."""

  COLUMNS: ClassVar[dict[str, tuple[Any, int]]] = {}

  def columns(self) -> dict[str, tuple[Any, int]]:
    """Column -> (dtype, per-row rank); override when it depends on config."""
    return self.COLUMNS

  @abc.abstractmethod
  def parse(self, manual_dir: Path | None) -> Dataset:
    """The parsed dataset; `manual_dir` is None without manual files."""

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"block": tfds.features.Scalar(dtype=np.int64)}
    for column, (dtype, rank) in self.columns().items():
      features[column] = tfds.features.Tensor(
          shape=(None,) * (1 + rank), dtype=dtype,
          encoding=tfds.features.Encoding.BYTES)
    return tfds.core.DatasetInfo(
        builder=self, description=(type(self).__doc__ or "").strip(),
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    manual = (Path(dl_manager.manual_dir) if self.MANUAL_DOWNLOAD_INSTRUCTIONS
              else None)
    dataset = self.parse(manual)
    for split, columns in dataset.splits.items():
      if dataset_rows(columns) == 0:
        raise ValueError(f"{self.name}: split {split!r} is empty; the "
                         f"ArrayRecord store holds non-empty splits only "
                         f"(keep this dataset in memory, or give it rows)")
      unknown = set(columns) - set(self.columns())
      if unknown:
        raise ValueError(f"{self.name}: split {split!r} has columns not "
                         f"declared in columns(): {sorted(unknown)}")
    self.info.metadata.update(_specs_to_metadata(dataset))
    return {split: self._generate_examples(columns)
            for split, columns in dataset.splits.items()}

  def _generate_examples(self, columns):
    declared = self.columns()
    stored = {}
    for column, array in columns.items():
      dtype, rank = declared[column]
      if array.ndim - 1 > rank or np.dtype(array.dtype) != np.dtype(dtype):
        raise ValueError(
            f"{self.name}: column {column!r} is {array.dtype} with row shape "
            f"{array.shape[1:]}, but columns() declares {np.dtype(dtype)} of "
            f"rank {rank}; fix the parser or the declaration")
      stored[column] = array.reshape(array.shape + (1,) * (rank + 1 -
                                                            array.ndim))
    n = dataset_rows(columns)
    for block, start in enumerate(range(0, n, BLOCK_ROWS)):
      example = {"block": block}
      for column, (dtype, rank) in declared.items():
        if column in stored:
          example[column] = stored[column][start:start + BLOCK_ROWS]
        else:  # absent in this split: a 1-element placeholder, never read
          # (TFDS cannot serialise a zero-size tensor).
          example[column] = np.zeros((1,) * (1 + rank), dtype=dtype)
      yield block, example


def dataset_rows(columns) -> int:
  return len(next(iter(columns.values())))


def _specs_to_metadata(dataset: Dataset) -> dict[str, Any]:
  return {
      "mtrec_name": dataset.name,
      "mtrec_features": [dataclasses.asdict(f) for f in dataset.features],
      "mtrec_tasks": [dataclasses.asdict(t) for t in dataset.tasks],
      "mtrec_split_columns": {
          split: {name: {"rows": int(a.shape[0]), "shape": list(a.shape[1:]),
                         "dtype": str(a.dtype)} for name, a in columns.items()}
          for split, columns in dataset.splits.items()},
      # Round-trip through JSON now so a non-JSON value fails before writing.
      "mtrec_info": json.loads(json.dumps(dataset.info)),
  }


def _restore_spec(cls, fields: dict[str, Any]):
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  return cls(**fields)


def _column(builder, split: str, name: str, blocks: list[np.ndarray],
            expected: dict[str, Any]) -> np.ndarray:
  """Concatenates a column's row blocks and checks them against the metadata."""
  array = np.concatenate(blocks, axis=0)
  shape = (expected["rows"], *expected["shape"])
  if array.size != int(np.prod(shape)) or str(array.dtype) != expected["dtype"]:
    raise ValueError(
        f"prepared dataset {builder.name!r} in {builder.data_dir}: split "
        f"{split!r} column {name!r} holds {array.dtype} {list(array.shape)}, "
        f"metadata says {expected['dtype']} {list(shape)}; the copy is damaged "
        f"or stale: delete {builder.data_dir} and run again to rebuild it")
  return array.reshape(shape)


def read_prepared(builder: ColumnarBuilder) -> Dataset:
  """The `Dataset` a prepared builder stored (rows in their parsed order)."""
  meta = builder.info.metadata
  split_columns = meta["mtrec_split_columns"]
  sources = builder.as_data_source()
  splits = {}
  for split, names in split_columns.items():
    source = sources[split]
    records = sorted((source[i] for i in range(len(source))),
                     key=lambda r: int(r["block"]))
    splits[split] = {name: _column(builder, split, name,
                                   [r[name] for r in records], expected)
                     for name, expected in names.items()}
  return Dataset(
      name=meta["mtrec_name"], splits=splits,
      features=tuple(_restore_spec(FeatureSpec, f)
                     for f in meta["mtrec_features"]),
      tasks=tuple(_restore_spec(TaskSpec, t) for t in meta["mtrec_tasks"]),
      info=dict(meta["mtrec_info"]))


@contextlib.contextmanager
def _quiet_absl():
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


@contextlib.contextmanager
def _prepare_lock(builder: ColumnarBuilder):
  """An exclusive lock (flock) on a file beside the copy's version folder,
  held while one process prepares it: array-job shards that start together
  prepare a dataset once, the others wait and read it."""
  folder = Path(builder.data_dir).parent
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / f".{Path(builder.data_dir).name}.lock", "a") as f:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def prepare_and_read(builder_cls: type[ColumnarBuilder], *, manual_dir,
                     data_dir=None, config: tfds.core.BuilderConfig | None = None
                     ) -> Dataset:
  """Parses and writes the dataset on first use, then reads the stored copy.

  Safe when several processes use a dataset for the first time at once: the
  first prepares it under `_prepare_lock` (TFDS writes into a temporary
  folder and renames it), the others wait, see it prepared and read it.  A
  process that lost the rename anyway (no working lock, e.g. on some
  network file systems) reads the winner's copy instead of failing.
  """
  def make():
    with _quiet_absl():  # TFDS warns about every custom config and new folder
      return builder_cls(data_dir=str(tfds_dir(data_dir)), config=config,
                         file_format="array_record")

  builder = make()
  if builder.is_prepared():
    return read_prepared(builder)
  with _prepare_lock(builder):
    builder = make()  # again, under the lock: another process may have won
    if not builder.is_prepared():
      # TFDS's per-split tqdm bars and banner would interleave with the
      # run's own output: one line of ours instead.
      tfds.disable_progress_bar()
      print(f"preparing {builder.name}/{builder.builder_config.name} (first "
            f"use) in {builder.data_dir}", file=sys.stderr)
      try:
        with _quiet_absl(), contextlib.redirect_stdout(io.StringIO()):
          builder.download_and_prepare(
              download_config=tfds.download.DownloadConfig(
                  manual_dir=None if manual_dir is None else
                  str(Path(manual_dir).expanduser())))
      except FileExistsError:
        builder = make()
        if not builder.is_prepared():
          raise
  return read_prepared(builder)


@dataclasses.dataclass(eq=False)
class KwargsConfig(tfds.core.BuilderConfig):
  """A builder config carrying the keyword arguments of the parse.

  Its name is derived from the arguments (`config_name`), so each distinct
  configuration gets its own prepared copy.
  """
  kwargs: dict = dataclasses.field(default_factory=dict)


def config_name(prefix: str, kwargs: dict[str, Any]) -> str:
  """A readable, stable name: prefix plus a hash of the sorted arguments."""
  blob = json.dumps(kwargs, sort_keys=True, default=str).encode()
  return f"{prefix}-{hashlib.sha256(blob).hexdigest()[:12]}"


def kwargs_config(prefix: str, kwargs: dict[str, Any],
                  description: str = "") -> KwargsConfig:
  return KwargsConfig(name=config_name(prefix, kwargs), kwargs=dict(kwargs),
                      description=description or json.dumps(kwargs,
                                                            sort_keys=True))

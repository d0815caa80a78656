"""The in-memory dataset every builder returns.

A `Dataset` is the contract between data and the rest of the framework: named
splits of column arrays, the feature declarations the model is built from, the
tasks (labels, heads, metrics), and `info`, a JSON-friendly dict of facts an
experiment may need (e.g. the true noise variances of a synthetic set).  It is
checked on construction, so a builder bug surfaces here, naming the split and
column, instead of as a shape error inside a jitted step.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mtrec_jax.registry import (UnknownNameError, closest,
                                unknown_name_message)
from mtrec_jax.specs import FeatureSpec, validate_features
from mtrec_jax.tasks.spec import TaskSpec

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Dataset:
  """Splits of column arrays plus the features and tasks that read them.

  Attributes:
    name: the dataset name (its registry name for built-in ones).
    splits: split name ('train', 'val', 'test') -> column name -> array; all
      columns of one split have the same first dimension.
    features: the model inputs; every feature name is a column of every split.
    tasks: the prediction tasks; every label (and mask) is a column of every
      split.
    info: facts for experiments and reports (JSON-friendly values).
  """
  name: str
  splits: dict[str, dict[str, np.ndarray]]
  features: tuple[FeatureSpec, ...]
  tasks: tuple[TaskSpec, ...]
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.features = tuple(self.features)
    self.tasks = tuple(self.tasks)
    self.validate()

  def validate(self) -> None:
    """Raises ValueError (TypeError for non-spec entries) naming the split and
    column of the first problem."""
    where = f"dataset {self.name!r}"
    if not self.splits:
      raise ValueError(f"{where} has no splits")
    validate_features(self.features)
    for task in self.tasks:
      if not isinstance(task, TaskSpec):
        raise TypeError(f"{where}: tasks must be TaskSpec instances, got "
                        f"{task!r}")
    if not self.tasks:
      raise ValueError(f"{where} declares no tasks")
    names = [t.name for t in self.tasks]
    if len(set(names)) != len(names):
      raise ValueError(f"{where}: task names must be unique, got {names}")
    for split, columns in self.splits.items():
      self._validate_split(f"{where} split {split!r}", columns)

  def _validate_split(self, where: str, columns: dict[str, np.ndarray]) -> None:
    if not columns:
      raise ValueError(f"{where} has no columns")
    lengths = {}
    for key, array in columns.items():
      if not isinstance(array, np.ndarray) or array.ndim == 0:
        raise ValueError(f"{where}: column {key!r} must be a NumPy array with "
                         f"a first (example) dimension, got "
                         f"{type(array).__name__} {np.shape(array)}")
      lengths[key] = array.shape[0]
    if len(set(lengths.values())) > 1:
      raise ValueError(f"{where}: columns differ in length: {lengths}")

    def require(key: str, role: str, shape: tuple[int, ...],
                alt: tuple[int, ...] | None = None) -> None:
      if key not in columns:
        close = closest(key, columns)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"{where}: missing {role} column {key!r}.{hint} "
                         f"Columns: {', '.join(sorted(columns))}.")
      got = columns[key].shape[1:]
      if got != shape and got != alt:
        want = f"[N{''.join(f', {d}' for d in shape)}]"
        raise ValueError(f"{where}: {role} column {key!r} needs shape {want}, "
                         f"got {list(columns[key].shape)}")

    for f in self.features:
      if f.kind == "numeric":
        require(f.name, "feature", (f.dim,), () if f.dim == 1 else None)
      elif f.kind == "categorical":
        require(f.name, "feature", ())
      else:
        require(f.name, "feature", (f.max_len,))
    for t in self.tasks:
      require(t.label, f"label (task {t.name!r})", t.label_shape)
      if t.mask:
        require(t.mask, f"mask (task {t.name!r})", ())

  def num_examples(self, split: str) -> int:
    """Number of examples in `split`."""
    columns = self.split(split)
    return next(iter(columns.values())).shape[0]

  def split(self, split: str) -> dict[str, np.ndarray]:
    """The columns of `split` (errors name the available splits)."""
    if split not in self.splits:
      raise UnknownNameError(
          f"dataset {self.name!r}: " +
          unknown_name_message("split", split, self.splits))
    return self.splits[split]

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.tasks)

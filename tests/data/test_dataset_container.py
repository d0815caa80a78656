"""Dataset validation: clear errors that name the split and column."""
from __future__ import annotations

import numpy as np
import pytest

from mtrec_jax.data.dataset import Dataset
from mtrec_jax.registry import UnknownNameError
from mtrec_jax.specs import FeatureSpec
from mtrec_jax.tasks.spec import TaskSpec

FEATURES = (FeatureSpec("x", "numeric", dim=3),
            FeatureSpec("user", "categorical", vocab_size=10),
            FeatureSpec("hist", "sequence", vocab_size=10, max_len=4))
TASKS = (TaskSpec("ctr", "click", "binary", mask="has_click"),
         TaskSpec("genre", "g", "multilabel", num_classes=2))


def columns(n=5):
  return {"x": np.zeros((n, 3), np.float32), "user": np.ones(n, np.int32),
          "hist": np.zeros((n, 4), np.int32), "click": np.ones(n, np.float32),
          "has_click": np.ones(n, np.float32),
          "g": np.zeros((n, 2), np.float32)}


def make(**overrides):
  kwargs = dict(name="toy", splits={"train": columns(5), "test": columns(2)},
                features=FEATURES, tasks=TASKS)
  kwargs.update(overrides)
  return Dataset(**kwargs)


def test_valid_dataset():
  ds = make(features=list(FEATURES))
  assert ds.features == FEATURES  # lists become tuples
  assert ds.num_examples("train") == 5 and ds.num_examples("test") == 2
  assert ds.task_names == ("ctr", "genre")
  assert ds.info == {}
  with pytest.raises(UnknownNameError, match="'test'"):
    ds.num_examples("tset")


def test_numeric_dim_one_accepts_flat_column():
  Dataset("toy", {"train": {"a": np.zeros(4), "y": np.zeros(4)}},
          (FeatureSpec("a", "numeric"),), (TaskSpec("t", "y", "regression"),))


def test_columns_of_different_lengths():
  cols = columns(5)
  cols["click"] = np.ones(4, np.float32)
  with pytest.raises(ValueError, match=r"split 'train'.*differ in length"):
    make(splits={"train": cols})


def test_missing_columns_name_close_matches():
  cols = columns()
  cols["clicks"] = cols.pop("click")
  with pytest.raises(ValueError, match=r"missing label .*'click'.*'clicks'"):
    make(splits={"train": cols})
  cols = columns()
  del cols["user"]
  with pytest.raises(ValueError, match="missing feature column 'user'"):
    make(splits={"train": cols})
  cols = columns()
  del cols["has_click"]
  with pytest.raises(ValueError, match="mask"):
    make(splits={"train": cols})


@pytest.mark.parametrize("key,bad", [("x", (5, 4)), ("hist", (5, 3)),
                                     ("user", (5, 2)), ("g", (5,)),
                                     ("click", (5, 1))])
def test_wrong_column_shapes(key, bad):
  cols = columns()
  cols[key] = np.zeros(bad, np.float32)
  with pytest.raises(ValueError, match=f"'{key}' needs shape"):
    make(splits={"train": cols})


def test_other_structural_errors():
  with pytest.raises(ValueError, match="no splits"):
    make(splits={})
  with pytest.raises(ValueError, match="no tasks"):
    make(tasks=())
  with pytest.raises(ValueError, match="unique"):
    make(tasks=(TASKS[0], TASKS[0]))
  with pytest.raises(ValueError, match="NumPy array"):
    make(splits={"train": {**columns(), "x": [[0.0] * 3] * 5}})
  with pytest.raises(TypeError, match="TaskSpec"):
    make(tasks=({"name": "ctr"},))

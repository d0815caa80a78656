"""Saved parameters and `init_from`: what is copied, and the errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax import config as config_lib
from mtrec_jax.train import checkpoints, loop


def test_merge_copies_matching_paths_and_keeps_the_rest():
  fresh = {"shared": {"emb": jnp.zeros((3, 2)), "enc": jnp.zeros(4)},
           "towers": {"new_task": jnp.zeros(2)}}
  loaded = {"shared": {"emb": np.ones((3, 2)), "enc": np.arange(4.0)},
            "towers": {"old_task": np.ones(2)}}
  merged, copied = checkpoints.merge_params(fresh, loaded, scope=("",))
  assert sorted(copied) == ["shared/emb", "shared/enc"]
  _, only_emb = checkpoints.merge_params(fresh, loaded, scope=("shared/emb",))
  assert only_emb == ["shared/emb"]
  np.testing.assert_array_equal(merged["shared"]["enc"], np.arange(4.0))
  np.testing.assert_array_equal(merged["towers"]["new_task"], 0.0)
  with pytest.raises(ValueError, match="'shared/emb' has shape \\[3, 5\\]"):
    checkpoints.merge_params(fresh, {"shared": {"emb": np.ones((3, 5))}},
                             scope=("",))
  with pytest.raises(ValueError, match="no parameter"):
    checkpoints.merge_params(fresh, {"other": np.ones(1)}, scope=("",))


def _config(**overrides):
  c = config_lib.base_config()
  c.data.update(n_train=256, n_val=64, n_test=64)
  base = {"model.name": "mmoe", "train.num_steps": 4, "train.eval_every": 4,
          "train.batch_size": 64}
  return config_lib.apply_overrides(c, {**base, **overrides})


def test_a_run_saves_params_and_another_starts_from_them(tmp_path):
  first = loop.train_and_evaluate(_config(), tmp_path / "pre", progress=False)
  saved = checkpoints.load_params(first["params_dir"])
  # Same tasks, everything copied, no training: the saved model's metrics.
  same = _config(**{"init_from": str(tmp_path / "pre"), "init_scope": ("",),
                    "train.num_steps": 0})
  result = loop.train_and_evaluate(same, tmp_path / "same", progress=False)
  assert result["init_from"]["copied"] == result["init_from"]["total"]
  assert result["metrics"]["test/task2/mse"] == pytest.approx(
      first["metrics"]["test/task2/mse"], rel=1e-6)
  # One task only: its gates have another shape, so copy the experts alone.
  experts = "shared/connection/level_0/shared_experts"
  fine = _config(**{"tasks": ("task2",), "init_from": str(tmp_path / "pre"),
                    "init_scope": (experts,)})
  c = loop.Components(fine)
  merged, copied = checkpoints.merge_params(loop.init_state(c).params, saved,
                                            (experts,))
  assert copied and all(p.startswith(experts) for p in copied)
  for path in copied:
    keys = path.split("/")
    a, b = merged, saved
    for key in keys:
      a, b = a[key], b[key]
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="has shape"):
    loop.train_and_evaluate(_config(**{
        "tasks": ("task2",), "init_from": str(tmp_path / "pre"),
        "init_scope": ("shared",)}), None, progress=False)


def test_missing_checkpoint_fails_before_training(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    loop.Components(_config(init_from=str(tmp_path / "nope")))

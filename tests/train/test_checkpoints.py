"""Saved parameters and `init_from`: what is copied, and the errors; the
resumable checkpoints: what is kept, damaged ones, resuming a stopped run."""
from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax import config as config_lib
from mtrec_jax.train import checkpoints, loop
from mtrec_jax.train import state as state_lib


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


# Resumable checkpoints (RunCheckpoints): what is kept, damage, other runs.

def _state(step: int):
  return state_lib.TrainState(
      step=jnp.asarray(step, jnp.int32),
      params={"w": jnp.full((3, 2), float(step))}, opt_state=(),
      strategy_state={"weights": jnp.ones(2)}, rng=jax.random.PRNGKey(step),
      diverged_step=jnp.asarray(-1, jnp.int32))


def _manager(run_dir, keep=2, mode="min", seed=0):
  return checkpoints.RunCheckpoints(run_dir, keep=keep, mode=mode,
                                    identity={"config_hash": "h", "seed": seed})


def _save_steps(run_dir, values, **kw):
  with _manager(run_dir, **kw) as m:
    for step, value in enumerate(values, start=1):
      m.save(step, _state(step), _state(step).params, {"log": [step]}, value)


@pytest.mark.parametrize("mode, kept", [("min", [2, 4, 5]), ("max", [4, 5])])
def test_keeps_the_last_n_and_the_best(tmp_path, mode, kept):
  # Values at steps 1..5; step 3 was not evaluated (a timed save).
  _save_steps(tmp_path, [3.0, 1.0, None, 5.0, 4.0], keep=2, mode=mode)
  assert checkpoints.saved_steps(tmp_path) == kept


def test_restore_gives_back_what_was_saved(tmp_path):
  _save_steps(tmp_path, [1.0, 2.0], keep=3)
  with _manager(tmp_path) as m:
    got = m.restore_latest(_state(0), _state(0).params)
  assert got.step == 2 and got.meta["log"] == [2] and got.meta["seed"] == 0
  assert isinstance(got.state, state_lib.TrainState)
  for a, b in zip(jax.tree_util.tree_leaves(got.state),
                  jax.tree_util.tree_leaves(_state(2))):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got.best_params["w"], 2.0)


def _truncate_files(folder):
  for f in folder.rglob("*"):
    if f.is_file():
      os.truncate(f, f.stat().st_size // 2)


@pytest.mark.parametrize("damage", ["truncated", "item missing"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(
    tmp_path, damage):
  _save_steps(tmp_path, [1.0, 2.0, 3.0], keep=3)
  latest = checkpoints.checkpoints_dir(tmp_path) / "3"
  if damage == "truncated":
    _truncate_files(latest / "state")
  else:
    shutil.rmtree(latest / "best")
  with _manager(tmp_path) as m, pytest.warns(
      checkpoints.CheckpointWarning,
      match="checkpoints/3 is damaged .*using the one before \\(step 2\\)"):
    got = m.restore_latest(_state(0), _state(0).params)
  assert got.step == 2
  assert checkpoints.saved_steps(tmp_path) == [1, 2]  # the damaged one gone


def test_nothing_usable_starts_fresh(tmp_path):
  _save_steps(tmp_path, [1.0], keep=2)
  _truncate_files(checkpoints.checkpoints_dir(tmp_path) / "1" / "meta")
  with _manager(tmp_path) as m, pytest.warns(
      checkpoints.CheckpointWarning, match="starting from step 0"):
    assert m.restore_latest(_state(0), _state(0).params) is None
  with _manager(tmp_path / "empty") as m:
    assert m.restore_latest(_state(0), _state(0).params) is None


def test_another_runs_checkpoints_are_not_resumed(tmp_path):
  _save_steps(tmp_path, [1.0, 2.0], keep=2, seed=1)
  with _manager(tmp_path, seed=0) as m, pytest.warns(
      checkpoints.CheckpointWarning, match="not this run's"):
    assert m.restore_latest(_state(0), _state(0).params) is None
  assert checkpoints.saved_steps(tmp_path) == []


def _timeless(result):
  return {k: v for k, v in result.items()
          if k not in ("wall_time_s", "compile_time_s")}


def test_resume_after_an_early_stop(tmp_path):
  """A run stopped early (patience) resumed from before the stop stops at
  the same step; resumed from the stop, it trains no further. Both give the
  uninterrupted result and its metrics.jsonl, each evaluation once."""
  # A learning rate of 0 never improves: patience 2 stops it at step 30.
  cfg = _config(**{"optimizer.learning_rate": 0.0, "train.patience": 2,
                   "train.num_steps": 60, "train.eval_every": 10,
                   "train.keep_checkpoints": 5,
                   "model.name": "shared_bottom", "model.bottom_hidden": (8,),
                   "model.tower_hidden": (4,)})
  first = loop.train_and_evaluate(cfg, tmp_path, progress=False)
  assert first["steps"] == 30
  assert checkpoints.saved_steps(tmp_path) == [10, 20, 30]
  evals = (tmp_path / "metrics.jsonl").read_text()
  # As if killed after step 30's evaluation was logged, before its save.
  shutil.rmtree(checkpoints.checkpoints_dir(tmp_path) / "30")
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 30, "val/lo')  # and mid-way through a line
  for resumed_at in (20, 30):
    logs = []
    again = loop.train_and_evaluate(cfg, tmp_path, progress=False,
                                    resume=True, log=logs.append)
    assert logs == [f"resuming from the checkpoint of step {resumed_at}"]
    assert _timeless(again) == _timeless(first)
    assert (tmp_path / "metrics.jsonl").read_text() == evals
  # Without resume, a run starts over and says it deletes the checkpoints.
  logs = []
  loop.train_and_evaluate(_config(**{"train.num_steps": 0}), tmp_path,
                          progress=False, log=logs.append)
  assert logs == ["deleting the checkpoints of an earlier attempt (steps 10, "
                  "20, 30); resuming would continue from them (mtrec run "
                  "--resume)"]
  assert checkpoints.saved_steps(tmp_path) == []


def test_checkpoint_settings_are_checked_and_not_hashed():
  with pytest.raises(ValueError, match="keep_checkpoints 0 turns"):
    loop.Components(_config(**{"train.keep_checkpoints": -1}))
  assert config_lib.config_hash(_config()) == config_lib.config_hash(
      _config(**{"train.checkpoint_every": 7, "train.keep_checkpoints": 0,
                 "train.checkpoint_minutes": 1.5}))

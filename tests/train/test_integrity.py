"""Checkpoint and params integrity (issue 16, defect 3): a byte flipped in
any file of a checkpoint or params/ is detected by its checksums, a damaged
checkpoint gives way to the one before, and a run whose selected parameters
are damaged anyway (no checksums to catch it) does not end done with NaN
metrics."""
from __future__ import annotations

import random
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax import config as config_lib
from mtrec_jax.train import checkpoints
from mtrec_jax.train import loop
from mtrec_jax.train import state as state_lib


def _state(step: int):
  return state_lib.TrainState(
      step=jnp.asarray(step, jnp.int32),
      params={"w": jnp.full((3, 2), float(step))}, opt_state=(),
      strategy_state={"weights": jnp.ones(2)}, rng=jax.random.PRNGKey(step),
      diverged_step=jnp.asarray(-1, jnp.int32))


def _manager(run_dir):
  return checkpoints.RunCheckpoints(run_dir, keep=2, mode="min",
                                    identity={"config_hash": "h", "seed": 0})


def _flip(path, rng: random.Random) -> None:
  """One byte of `path`, at a seeded offset, XOR 0xFF: same size."""
  data = bytearray(path.read_bytes())
  i = rng.randrange(len(data))
  data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def test_a_byte_flip_in_any_checkpoint_file_is_detected(tmp_path):
  src = tmp_path / "src"
  with _manager(src) as m:
    for step in (1, 2):
      m.save(step, _state(step), _state(step).params, {"s": step},
             float(-step))
  folder = checkpoints.checkpoints_dir(src) / "2"
  files = sorted(p.relative_to(folder) for p in folder.rglob("*")
                 if p.is_file())
  # Every file Orbax wrote, its commit files and the manifest itself.
  assert checkpoints.MANIFEST in {str(f) for f in files}
  assert {"_CHECKPOINT_METADATA", "commit_success.txt"} <= {
      str(f) for f in files}
  assert len(files) > 20 and checkpoints.verify_manifest(folder)
  rng = random.Random(16)
  for name in files:
    run = tmp_path / "flip"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(src, run)
    _flip(run / "checkpoints" / "2" / name, rng)
    with pytest.raises(checkpoints.ChecksumError):
      checkpoints.verify_manifest(run / "checkpoints" / "2")
  # On restore, each item's damage falls back to the checkpoint before.
  for item in ("state", "best", "meta"):
    run = tmp_path / item
    shutil.copytree(src, run)
    target = max((p for p in (run / "checkpoints" / "2" / item).rglob("*")
                  if p.is_file()), key=lambda p: p.stat().st_size)
    _flip(target, rng)
    with _manager(run) as m, pytest.warns(checkpoints.CheckpointWarning,
                                          match="does not match"):
      got = m.restore_latest(_state(0), _state(0).params)
    assert got.step == 1 and got.meta["s"] == 1
    np.testing.assert_array_equal(got.best_params["w"], np.full((3, 2), 1.))


def test_unverified_checkpoint_is_read_with_a_warning(tmp_path):
  """Checkpoints written before the checksums existed still resume."""
  with _manager(tmp_path) as m:
    m.save(1, _state(1), _state(1).params, {"s": 1}, 0.0)
  (checkpoints.checkpoints_dir(tmp_path) / "1" / checkpoints.MANIFEST
   ).unlink()
  with _manager(tmp_path) as m, pytest.warns(checkpoints.CheckpointWarning,
                                             match="no checksums"):
    assert m.restore_latest(_state(0), _state(0).params).step == 1


def test_damaged_params_fail_init_from_naming_the_folder(tmp_path):
  params = {"shared": {"w": np.arange(6.0).reshape(2, 3)}}
  folder = checkpoints.save_params(tmp_path / "run", params)
  assert checkpoints.verify_manifest(folder)
  np.testing.assert_array_equal(
      checkpoints.load_params(tmp_path / "run")["shared"]["w"],
      params["shared"]["w"])
  biggest = max((p for p in folder.rglob("*") if p.is_file()
                 and p.name != checkpoints.MANIFEST),
                key=lambda p: p.stat().st_size)
  _flip(biggest, random.Random(3))
  with pytest.raises(checkpoints.ChecksumError,
                     match=f"parameters in .*{folder.name}.* are damaged"):
    checkpoints.load_params(tmp_path / "run")


def _config(**overrides):
  c = config_lib.base_config()
  c.data.update(n_train=256, n_val=64, n_test=64)
  base = {"model.name": "shared_bottom",
          "model.bottom_hidden": (8,), "model.tower_hidden": (4,),
          "train.num_steps": 8, "train.eval_every": 4, "train.log_every": 4,
          "train.batch_size": 32}
  return config_lib.apply_overrides(c, {**base, **overrides})


def test_nan_selected_params_are_failed_not_done(tmp_path):
  """Defect 3: a `best` item damaged beyond what Orbax notices, in a
  checkpoint without checksums, gave status done with every metric NaN."""
  cfg = _config()
  first = loop.train_and_evaluate(cfg, tmp_path, progress=False)
  assert first["status"] == "done"
  # Rewrite the last checkpoint with NaN selected parameters, unverified.
  identity = {"config_hash": config_lib.config_hash(cfg), "seed": 0}
  c = loop.Components(cfg)
  like = loop.init_state(c)
  store = checkpoints.RunCheckpoints(tmp_path, keep=2, mode="min",
                                     identity=identity)
  with store:
    got = store.restore_latest(like, like.params)
    assert got.step == 8
    nan = jax.tree_util.tree_map(lambda x: jnp.full_like(x, jnp.nan),
                                 got.best_params)
    store.clear()
    store.save(8, got.state, nan, {k: v for k, v in got.meta.items()
                                   if k not in ("version", "step",
                                                *identity)})
  (checkpoints.checkpoints_dir(tmp_path) / "8" / checkpoints.MANIFEST
   ).unlink()
  with pytest.warns(checkpoints.CheckpointWarning, match="no checksums"):
    again = loop.train_and_evaluate(cfg, tmp_path, progress=False,
                                    resume=True, components=c)
  assert again["status"] == "failed"
  assert "non-finite final metrics" in again["error"]
  assert "params_dir" not in again  # nothing for init_from to read


def test_init_from_finds_the_run_folder_of_a_grid_point(tmp_path):
  """Run folders are <run name>@<config hash> (defect 1), so a fine-tuning
  config naming WORKDIR/<experiment>/<run name> (as ml100k-finetune does)
  reads that grid point's one run; two configs there are an error naming
  both; a folder of the older layout is read as it is."""
  params = {"w": np.ones(2)}
  exp = tmp_path / "runs" / "pretrain"
  checkpoints.save_params(exp / "seed=0@aaaa", params)
  assert checkpoints.params_dir(exp / "seed=0") == exp / "seed=0@aaaa" / (
      "params")
  checkpoints.save_params(exp / "seed=0@bbbb", params)
  with pytest.raises(FileNotFoundError, match="seed=0@aaaa, seed=0@bbbb"):
    checkpoints.params_dir(exp / "seed=0")
  assert checkpoints.params_dir(exp / "seed=0@bbbb") == exp / (
      "seed=0@bbbb") / "params"
  checkpoints.save_params(exp / "seed=1", params)  # the old layout
  assert checkpoints.params_dir(exp / "seed=1") == exp / "seed=1" / "params"
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    checkpoints.params_dir(exp / "seed=2")


def test_serve_finds_the_run_folder_of_a_grid_point(tmp_path):
  """`mtrec recommend runs/<experiment>/<run name>` (README) still finds
  the run now that its folder is <run name>@<config hash>."""
  from mtrec_jax.serve import load
  folder = tmp_path / "exp" / "seed=0@abcd"
  checkpoints.save_params(folder, {"w": np.ones(2)})
  (folder / "config.json").write_text("{}")
  assert load.find_run_dir(tmp_path / "exp" / "seed=0") == folder.resolve()
